//! Whose request is this: the client address the edge forwards to the core, where the
//! brute-force guard counts failed authentications by it.
//!
//! The address is the TCP peer's, unless the peer is a configured trusted proxy
//! (`OPENCLAW_TRUSTED_PROXIES`): then `X-Forwarded-For` is walked from the right, past every
//! trusted proxy, and the first address not among them is the client (nginx's
//! `real_ip_recursive`, envoy's `xff_num_trusted_hops`). Entries left of that one were written
//! by the client and are never believed, so no header a client sends can choose its address.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderValue, header::HeaderName};
use ipnet::IpNet;

const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Marks a request that reached this edge on its own TLS listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReachedOverTls;

/// How this edge learns and vouches for its clients' addresses.
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    /// Peers whose `X-Forwarded-For` is believed (load balancers, ingress controllers).
    pub trusted_proxies: Vec<IpNet>,
    /// [`openclaw_runtime::forwarding::edge_proof`] of the internal token, sent beside the
    /// client address so the core believes it; without it the core counts every client of
    /// this edge as the edge's own address.
    pub proof: Option<HeaderValue>,
}

impl Forwarding {
    /// Parses `OPENCLAW_TRUSTED_PROXIES` entries: CIDR blocks (`10.0.0.0/8`) or single addresses.
    pub fn parse_trusted(entries: &[String]) -> anyhow::Result<Vec<IpNet>> {
        entries
            .iter()
            .map(|entry| entry.trim())
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "OPENCLAW_TRUSTED_PROXIES: '{entry}' is neither an IP address nor a CIDR \
                             block; list the load balancers in front of the edge as e.g. \
                             10.0.0.0/8,192.0.2.10"
                        )
                    })
            })
            .collect()
    }

    /// The proof header value for `internal_token`.
    pub fn proof_for(internal_token: &str) -> Option<HeaderValue> {
        let mut value =
            HeaderValue::from_str(&openclaw_runtime::forwarding::edge_proof(internal_token))
                .ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Whether `peer` is a trusted proxy, whose `X-Forwarded-*` headers are believed.
    pub(crate) fn is_trusted_proxy(&self, peer: Option<SocketAddr>) -> bool {
        peer.is_some_and(|peer| self.trusts(peer.ip()))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, or, from a trusted proxy, the rightmost
    /// `X-Forwarded-For` entry that is not a trusted proxy.
    pub fn client(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let mut client = canonical(peer?.ip());
        if !self.trusts(client) {
            return Some(client);
        }
        // Every X-Forwarded-For line, in order, as one list; then from the nearest hop outward.
        let entries: Vec<&str> = headers
            .get_all(&FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        for entry in entries.into_iter().rev() {
            // Unreadable: the hop that wrote it is not to be believed; the last good one stands.
            let Some(ip) = parse_entry(entry.trim()) else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        Some(client)
    }
}

/// An `X-Forwarded-For` entry: an address, or an address with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`), as proxies write them.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(canonical)
}

/// IPv4 clients of a dual-stack listener arrive as `::ffff:a.b.c.d`: named as IPv4, they match
/// IPv4 blocks and count as one address however they connected.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarding(trusted: &[&str]) -> Forwarding {
        let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
        Forwarding {
            trusted_proxies: Forwarding::parse_trusted(&trusted).unwrap(),
            proof: None,
        }
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in xff {
            map.append(FORWARDED_FOR, line.parse().unwrap());
        }
        map
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let f = forwarding(&[]);
        let h = headers(&["203.0.113.9"]);
        assert_eq!(f.client(peer("198.51.100.4"), &h), ip("198.51.100.4"));
        let f = forwarding(&["10.0.0.0/8"]);
        assert_eq!(f.client(peer("198.51.100.4"), &h), ip("198.51.100.4"));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_is_the_client() {
        let f = forwarding(&["10.0.0.0/8", "192.0.2.10"]);
        // The client wrote the first entry itself: it is never believed.
        let h = headers(&["1.2.3.4, 203.0.113.9, 10.1.1.1"]);
        assert_eq!(f.client(peer("10.0.0.2"), &h), ip("203.0.113.9"));
        // Several header lines are one list.
        let h = headers(&["1.2.3.4", "203.0.113.9:5555", "192.0.2.10"]);
        assert_eq!(f.client(peer("10.0.0.2"), &h), ip("203.0.113.9"));
        // Nothing forwarded: the proxy itself.
        assert_eq!(f.client(peer("10.0.0.2"), &headers(&[])), ip("10.0.0.2"));
        // Garbage beyond the trusted hops: the last trusted hop stands.
        let h = headers(&["not-an-ip, 10.1.1.1"]);
        assert_eq!(f.client(peer("10.0.0.2"), &h), ip("10.1.1.1"));
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_blocks() {
        let f = forwarding(&["127.0.0.1/32"]);
        let h = headers(&["203.0.113.9"]);
        assert_eq!(f.client(peer("::ffff:127.0.0.1"), &h), ip("203.0.113.9"));
        assert_eq!(
            forwarding(&[]).client(peer("::ffff:192.0.2.1"), &h),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn bad_trusted_proxy_entries_are_refused_by_name() {
        let error = Forwarding::parse_trusted(&["10.0.0.0/8".into(), "proxy.local".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("'proxy.local'"), "{error}");
        assert!(error.contains("OPENCLAW_TRUSTED_PROXIES"), "{error}");
    }
}
