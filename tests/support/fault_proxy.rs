//! A TCP proxy on loopback whose faults are switched while traffic flows through it: added
//! latency per direction, a stall (bytes held, connections kept open), a reset of every open
//! connection (RST to both sides), and refusing new connections (accepted, then reset at once).
//!
//! It runs on the test's Tokio runtime. Bytes are forwarded in order; latency delays each chunk
//! from the moment it was read, so a delayed connection keeps its throughput.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The faults in force; `Faults::default()` is a clean pass-through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added to every chunk going from the client to the target.
    pub to_target: Duration,
    /// Added to every chunk going from the target back to the client.
    pub to_client: Duration,
    /// New connections are accepted and reset at once.
    pub refuse: bool,
}

/// Counts of what the proxy did, for the figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyStats {
    pub accepted: u64,
    pub refused: u64,
    pub reset: u64,
    pub target_unreachable: u64,
}

struct Shared {
    target: SocketAddr,
    faults: Mutex<Faults>,
    stalled: watch::Sender<bool>,
    /// Bumped by `reset_all`; a connection older than the current value is reset.
    generation: watch::Sender<u64>,
    accepted: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    target_unreachable: AtomicU64,
}

/// A running proxy in front of one target address. Dropping it stops accepting; open
/// connections end when their peers close them.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy on loopback");
        let port = listener.local_addr().expect("fault proxy address").port();
        let shared = Arc::new(Shared {
            target,
            faults: Mutex::new(Faults::default()),
            stalled: watch::channel(false).0,
            generation: watch::channel(0).0,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            reset: AtomicU64::new(0),
            target_unreachable: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Self {
            port,
            shared,
            accept,
        }
    }

    /// `host:port` of the proxy, for a client's configuration.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn faults(&self) -> Faults {
        *self.shared.faults.lock().unwrap()
    }

    /// Added latency per direction, for chunks read from now on.
    pub fn set_latency(&self, to_target: Duration, to_client: Duration) {
        let mut faults = self.shared.faults.lock().unwrap();
        faults.to_target = to_target;
        faults.to_client = to_client;
    }

    /// While on, nothing is forwarded in either direction; connections stay open and what
    /// was held flows on when the stall ends.
    pub fn set_stalled(&self, stalled: bool) {
        self.shared.stalled.send_replace(stalled);
    }

    /// While on, new connections are reset as soon as they are accepted.
    pub fn set_refusing(&self, refuse: bool) {
        self.shared.faults.lock().unwrap().refuse = refuse;
    }

    /// Resets every connection open now (RST to the client and to the target).
    pub fn reset_all(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Back to a clean pass-through (open connections are kept).
    pub fn heal(&self) {
        *self.shared.faults.lock().unwrap() = Faults::default();
        self.set_stalled(false);
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            reset: self.shared.reset.load(Ordering::Relaxed),
            target_unreachable: self.shared.target_unreachable.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if shared.faults.lock().unwrap().refuse {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(client, shared.clone()));
    }
}

/// How a relayed connection ended.
enum Ended {
    /// Both directions reached end of stream.
    Closed,
    /// A side failed, or `reset_all` was called: both sides get an RST.
    Reset,
}

async fn connection(mut client: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let mut server = match TcpStream::connect(shared.target).await {
        Ok(server) => server,
        Err(_) => {
            // What a client of the dead target would see: a reset.
            shared.target_unreachable.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let mut generation = shared.generation.subscribe();
    let born = *generation.borrow_and_update();
    let ended = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pipe(client_read, server_write, &shared, Direction::ToTarget);
        let down = pipe(server_read, client_write, &shared, Direction::ToClient);
        tokio::select! {
            relayed = async { tokio::try_join!(up, down) } => match relayed {
                Ok(_) => Ended::Closed,
                Err(_) => Ended::Reset,
            },
            _ = generation.wait_for(|g| *g != born) => Ended::Reset,
        }
    };
    if let Ended::Reset = ended {
        shared.reset.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

#[derive(Clone, Copy)]
enum Direction {
    ToTarget,
    ToClient,
}

/// Copies `from` to `to`, each chunk no sooner than its latency after it was read and never
/// while stalled. Ends with a half close when `from` ends; fails when either side fails.
async fn pipe(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    shared: &Shared,
    direction: Direction,
) -> std::io::Result<()> {
    let (chunks, mut pending) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            let faults = *shared.faults.lock().unwrap();
            let delay = match direction {
                Direction::ToTarget => faults.to_target,
                Direction::ToClient => faults.to_client,
            };
            if chunks
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let write = async move {
        let mut stalled = shared.stalled.subscribe();
        while let Some((due, bytes)) = pending.recv().await {
            tokio::time::sleep_until(due).await;
            let _ = stalled.wait_for(|stalled| !*stalled).await;
            to.write_all(&bytes).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}
