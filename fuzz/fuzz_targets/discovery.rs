//! Discovery datagrams: `Discover::parse`, `Announce::parse` and `Announce::verify` with and
//! without a key.
//!
//! Oracles: a parsed datagram re-encodes to the same bytes (CRC field aside: it is recomputed,
//! and the check is bypassed under `cfg(fuzzing)`) when its extensions are only the ones the
//! encoder writes (the TLS fingerprint); with unknown extensions, which the parser skips, the
//! re-encoding is shorter and agrees up to the device name. `verify` with a key accepts exactly
//! the announcements whose tag equals the HMAC of the datagram's own body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rela_core::auth::AuthKey;
use rela_core::config::{HEADER_LEN, MAC_LEN, MAX_DATAGRAM};
use rela_core::crc32::SoftCrc32;
use rela_core::discovery::{Announce, Discover, DiscoveryError};
use rela_fuzz::DISCOVERY_TOKEN;

/// Same bytes except the CRC field (12..16) and the seq field (6..8): the encoders send seq 0,
/// as the spec says, but the parsers accept any seq (lenient on input).
fn same_but_crc(a: &[u8], b: &[u8]) {
    assert_eq!(a.len(), b.len(), "re-encoded datagram has another length");
    assert_eq!(a[..6], b[..6], "re-encoded header differs");
    assert_eq!(a[6..8], [0, 0], "an encoder sent a nonzero seq");
    assert_eq!(a[8..12], b[8..12], "re-encoded header differs");
    assert_eq!(a[HEADER_LEN..], b[HEADER_LEN..], "re-encoded payload differs");
}

fuzz_target!(|data: &[u8]| {
    let key = AuthKey::new(DISCOVERY_TOKEN);
    let other_key = AuthKey::new(b"another token");

    if let Ok(d) = Discover::parse::<SoftCrc32>(data) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = d.emit::<SoftCrc32>(&mut buf).expect("DISCOVER fits a datagram");
        same_but_crc(&buf[..n], data);
    }

    let a = match Announce::parse::<SoftCrc32>(data) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(data.len() <= MAX_DATAGRAM);
    assert!(a.verify(&a.nonce, None).is_ok(), "unkeyed verify of the matching nonce failed");
    let mut wrong = a.nonce;
    wrong[0] ^= 1;
    assert_eq!(a.verify(&wrong, None), Err(DiscoveryError::NonceMismatch));
    assert_eq!(a.verify(&wrong, Some(&key)), Err(DiscoveryError::NonceMismatch));

    let mut fresh =
        Announce::new(a.nonce, a.node_id, a.port, a.backend, a.auth_required(), a.total, a.free, a.device);
    if let Some(fp) = a.tls_fingerprint {
        fresh = fresh.with_tls_fingerprint(fp);
    }
    // Header, nonce, node id, port, backend, flags, total, free, then the device `str8`.
    let fixed = HEADER_LEN + 52 + 1 + a.device.len();
    let tag_len = if a.mac.is_some() { MAC_LEN } else { 0 };
    let mut buf = [0u8; MAX_DATAGRAM];
    let key_arg = a.mac.map(|_| &key);
    let n = fresh.emit::<SoftCrc32>(key_arg, &mut buf).expect("a parsed announce re-encodes");
    if n == data.len() {
        same_but_crc(&buf[..n - tag_len], &data[..n - tag_len]);
    } else {
        assert!(n < data.len(), "re-encoded announce longer than the datagram (extensions invented)");
        assert_eq!(buf[HEADER_LEN..fixed], data[HEADER_LEN..fixed], "re-encoded fixed fields differ");
    }
    match a.mac {
        None => {
            assert_eq!(a.verify(&a.nonce, Some(&key)), Err(DiscoveryError::Unsigned));
        }
        Some(mac) => {
            let body = &data[HEADER_LEN..data.len() - MAC_LEN];
            let expected = key.announce_tag(body);
            let verdict = a.verify(&a.nonce, Some(&key));
            if mac == expected {
                assert_eq!(verdict, Ok(()), "a correctly signed announce was rejected");
                assert_eq!(a.verify(&a.nonce, Some(&other_key)), Err(DiscoveryError::BadSignature));
            } else {
                assert_eq!(verdict, Err(DiscoveryError::BadSignature), "a forged tag was accepted");
            }
            let signed = Announce::parse::<SoftCrc32>(&buf[..n]).expect("our own signed announce parses");
            assert_eq!(signed.verify(&a.nonce, Some(&key)), Ok(()));
        }
    }
});
