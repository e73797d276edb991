//! What a Redis failure means to a caller, decided once for every Redis-backed module (the
//! store, the limiter, cron, dashboard sessions, events): a timeout is [`StoreError::Timeout`];
//! Redis being away or unable to serve right now (a lost connection, a cluster that is down or
//! moving slots, a server still loading its data, a replica that refuses writes, no memory
//! left) is [`StoreError::Unavailable`], worth retrying; an operation Redis refuses as we wrote
//! it (a failing script, a wrong type, keys in different slots) is [`StoreError::Internal`],
//! which a retry does not cure. Each becomes its `ApiError` in `ApiError::from(StoreError)`.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use super::StoreError;

/// Server error codes that redis-rs does not name, and that mean a fault of ours.
const WRONG_TYPE: &str = "WRONGTYPE";

impl From<RedisError> for StoreError {
    fn from(err: RedisError) -> Self {
        if err.is_timeout() {
            return StoreError::Timeout;
        }
        if is_our_fault(&err) {
            StoreError::Internal(err.to_string())
        } else {
            StoreError::Unavailable(err.to_string())
        }
    }
}

/// True when Redis answered, but refused the operation itself: sending it again fails again.
/// Everything else (and any kind a later redis-rs adds) counts as Redis being unavailable, so
/// the caller is told to retry rather than that the gateway is broken.
fn is_our_fault(err: &RedisError) -> bool {
    match err.kind() {
        // A script error, or a command the server does not accept ("ERR ...").
        ErrorKind::Server(ServerErrorKind::ResponseError)
        // A transaction refused because one of its commands was.
        | ErrorKind::Server(ServerErrorKind::ExecAbort)
        // `Script` reloads a missing script itself; one still missing after that is ours.
        | ErrorKind::Server(ServerErrorKind::NoScript)
        // A multi-key command whose keys lack a shared hash tag.
        | ErrorKind::Server(ServerErrorKind::CrossSlot)
        | ErrorKind::Server(ServerErrorKind::NotBusy)
        | ErrorKind::Server(ServerErrorKind::NoSub)
        // A reply that does not convert into the type we asked for.
        | ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType => true,
        ErrorKind::Extension => err.code() == Some(WRONG_TYPE),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use redis::ParsingError;

    use super::*;

    /// The error redis-rs makes from a server's error reply, such as `-READONLY ...`.
    fn server_reply(reply: &str) -> RedisError {
        let value = redis::parse_redis_value(format!("-{reply}\r\n").as_bytes())
            .expect("a RESP error reply parses");
        value
            .extract_error()
            .expect_err("an error reply is an error")
    }

    fn io_error(kind: io::ErrorKind) -> RedisError {
        RedisError::from(io::Error::from(kind))
    }

    fn is_unavailable(err: &StoreError) -> bool {
        matches!(err, StoreError::Unavailable(_))
    }

    fn is_internal(err: &StoreError) -> bool {
        matches!(err, StoreError::Internal(_))
    }

    #[test]
    fn a_timeout_is_a_timeout() {
        // What a connection's response timeout produces.
        assert!(matches!(
            StoreError::from(io_error(io::ErrorKind::TimedOut)),
            StoreError::Timeout
        ));
    }

    #[test]
    fn a_lost_connection_is_unavailable() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
        ] {
            let err = StoreError::from(io_error(kind));
            assert!(is_unavailable(&err), "{kind:?}: {err:?}");
        }
    }

    #[test]
    fn a_server_that_cannot_serve_now_is_unavailable() {
        for reply in [
            "CLUSTERDOWN The cluster is down",
            "LOADING Redis is loading the dataset in memory",
            "READONLY You can't write against a read only replica.",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "MOVED 3999 127.0.0.1:6381",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "BUSY Redis is busy running a script.",
        ] {
            let err = StoreError::from(server_reply(reply));
            assert!(is_unavailable(&err), "{reply}: {err:?}");
        }
    }

    #[test]
    fn script_and_type_errors_are_internal() {
        for reply in [
            "ERR Error running script (call to f_0123): @user_script:3: attempt to compare nil with number",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "NOSCRIPT No matching script. Please use EVAL.",
            "CROSSSLOT Keys in request don't hash to the same slot",
            "EXECABORT Transaction discarded because of previous errors.",
        ] {
            let err = StoreError::from(server_reply(reply));
            assert!(is_internal(&err), "{reply}: {err:?}");
        }
        let conversion = RedisError::from(ParsingError::from(
            "Response type not string compatible.".to_owned(),
        ));
        assert!(is_internal(&StoreError::from(conversion)));
        let unexpected = RedisError::from((ErrorKind::UnexpectedReturnType, "expected an array"));
        assert!(is_internal(&StoreError::from(unexpected)));
    }

    #[test]
    fn the_message_keeps_what_redis_said_for_the_log() {
        let err = StoreError::from(server_reply(
            "READONLY You can't write against a read only replica.",
        ));
        assert!(err.to_string().contains("read only replica"), "{err}");
    }
}
