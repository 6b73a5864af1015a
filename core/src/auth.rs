//! HMAC-SHA256 challenge-response and signatures.
//!
//! - AUTH tag: `HMAC-SHA256(key = token, "RELA-AUTH-v1" || server_nonce)`.
//! - ANNOUNCE tag: `HMAC-SHA256(key = token, "RELA-ANNOUNCE-v1" || announce_body)`, where the
//!   body is the ANNOUNCE payload before the tag (it contains the client's nonce).
//!
//! The domain-separation prefixes keep one kind of tag from being replayed as the other.
//! Verification is constant-time (`hmac`'s `verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{MAC_LEN, NONCE_LEN};

type HmacSha256 = Hmac<Sha256>;

/// Prefix of the AUTH tag's message.
pub const AUTH_CONTEXT: &[u8] = b"RELA-AUTH-v1";
/// Prefix of the ANNOUNCE tag's message.
pub const ANNOUNCE_CONTEXT: &[u8] = b"RELA-ANNOUNCE-v1";

/// A shared token, pre-keyed for HMAC-SHA256. Cloning is cheap and allocation-free; the token
/// bytes themselves are not kept.
#[derive(Clone)]
pub struct AuthKey(HmacSha256);

impl core::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl AuthKey {
    /// Keys HMAC-SHA256 with `token` (any length; HMAC hashes keys longer than 64 bytes).
    pub fn new(token: &[u8]) -> Self {
        // HMAC accepts keys of every length, so `new_from_slice` cannot fail here.
        match HmacSha256::new_from_slice(token) {
            Ok(mac) => Self(mac),
            Err(_) => unreachable!("HMAC takes keys of any length"),
        }
    }

    fn tag(&self, context: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(context);
        for p in parts {
            mac.update(p);
        }
        mac
    }

    /// The AUTH tag for a server nonce.
    pub fn auth_tag(&self, nonce: &[u8; NONCE_LEN]) -> [u8; MAC_LEN] {
        self.tag(AUTH_CONTEXT, &[nonce]).finalize().into_bytes().into()
    }

    /// Checks an AUTH tag in constant time.
    pub fn verify_auth(&self, nonce: &[u8; NONCE_LEN], tag: &[u8; MAC_LEN]) -> bool {
        self.tag(AUTH_CONTEXT, &[nonce]).verify_slice(tag).is_ok()
    }

    /// The ANNOUNCE tag over `body`.
    pub fn announce_tag(&self, body: &[u8]) -> [u8; MAC_LEN] {
        self.tag(ANNOUNCE_CONTEXT, &[body]).finalize().into_bytes().into()
    }

    /// Checks an ANNOUNCE tag in constant time.
    pub fn verify_announce(&self, body: &[u8], tag: &[u8; MAC_LEN]) -> bool {
        self.tag(ANNOUNCE_CONTEXT, &[body]).verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2() {
        // RFC 4231 test case 2, through the same keyed-clone path the tags use.
        let key = AuthKey::new(b"Jefe");
        let mac = key.tag(b"what do ya want ", &[b"for nothing?"]).finalize().into_bytes();
        let expected = [
            0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7,
            0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43,
        ];
        assert_eq!(mac.as_slice(), &expected);
    }

    #[test]
    fn auth_roundtrip_and_rejects() {
        let key = AuthKey::new(b"secret");
        let nonce = [7u8; NONCE_LEN];
        let tag = key.auth_tag(&nonce);
        assert!(key.verify_auth(&nonce, &tag));
        assert!(!AuthKey::new(b"secreT").verify_auth(&nonce, &tag));
        assert!(!key.verify_auth(&[8u8; NONCE_LEN], &tag));
        // An AUTH tag is not a valid ANNOUNCE tag over the same bytes.
        assert!(!key.verify_announce(&nonce, &tag));
    }
}
