//! How an edge tells a core who its client is, and proves it may.
//!
//! The brute-force guard counts failed authentications per client address, so the address must
//! be one nobody can choose. An edge knows its client's address (its peer, or what its trusted
//! proxies report) and forwards it as [`CLIENT_IP`] metadata; a core believes that metadata only
//! beside [`EDGE_PROOF`], a value derived from the internal token that both hold (or from a
//! caller that proved itself with a client certificate under mutual TLS). Any other gRPC caller
//! is known by its socket address, whatever it claims.
//!
//! The proof is a hash of the token, not the token: a proof read off the wire lets its reader
//! name client addresses, never administer keys.

use sha2::{Digest, Sha256};

/// gRPC metadata carrying the address of the edge's client.
pub const CLIENT_IP: &str = "x-openclaw-client-ip";
/// gRPC metadata carrying [`edge_proof`] of the internal token.
pub const EDGE_PROOF: &str = "x-openclaw-edge-proof";

/// The value an edge holding `internal_token` sends as [`EDGE_PROOF`]: 64 hex digits.
pub fn edge_proof(internal_token: &str) -> String {
    let mut hasher = Sha256::new();
    // Domain-separated, so the proof is no other hash the gateway computes of the token.
    hasher.update(b"openclaw edge forwarding proof v1\n");
    hasher.update(internal_token.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in hasher.finalize() {
        use std::fmt::Write as _;
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proof_depends_on_the_token_and_is_not_the_token() {
        let proof = edge_proof("ocit_secret");
        assert_eq!(proof.len(), 64);
        assert!(!proof.contains("ocit_secret"));
        assert_eq!(proof, edge_proof("ocit_secret"));
        assert_ne!(proof, edge_proof("ocit_secret2"));
    }
}
