//! DISCOVER is padded to a whole datagram, so an ANNOUNCE is never larger than its probe.

use rela_core::auth::AuthKey;
use rela_core::backend::BackendKind;
use rela_core::config::{HEADER_LEN, MAX_DATAGRAM, MAX_DEVICE_NAME};
use rela_core::crc32::SoftCrc32;
use rela_core::discovery::{Announce, Discover, DiscoveryError};
use rela_core::wire::{DecodeError, Flags, Kind, encode_frame};

#[test]
fn discover_is_a_whole_datagram_and_outweighs_any_announce() {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = Discover { nonce: [7; 16] }.emit::<SoftCrc32>(&mut buf).expect("encodes");
    assert_eq!(n, MAX_DATAGRAM);
    assert_eq!(Discover::parse::<SoftCrc32>(&buf[..n]).expect("parses").nonce, [7; 16]);
    // The largest ANNOUNCE: longest device name, signed.
    let name = "n".repeat(MAX_DEVICE_NAME);
    let a = Announce::new([7; 16], [1; 16], 1, BackendKind::HOST, true, u64::MAX, u64::MAX, &name);
    let mut out = [0u8; MAX_DATAGRAM];
    let m = a.emit::<SoftCrc32>(Some(&AuthKey::new(b"k")), &mut out).expect("encodes");
    assert!(m < n, "ANNOUNCE of {m} bytes against a DISCOVER of {n}");
}

#[test]
fn unpadded_or_dirty_discovers_are_refused() {
    let padding = Err(DiscoveryError::Decode(DecodeError::InvalidField("discover.padding")));
    let mut f = [0u8; MAX_DATAGRAM];
    // The version-1 draft's 16-byte probe.
    let short =
        encode_frame::<SoftCrc32>(&mut f, Kind::DISCOVER, Flags::NONE, 0, &[1; 16]).expect("frame").to_vec();
    assert_eq!(Discover::parse::<SoftCrc32>(&short), padding);
    // Non-zero padding.
    let mut payload = [0u8; MAX_DATAGRAM - HEADER_LEN];
    payload[200] = 1;
    let dirty =
        encode_frame::<SoftCrc32>(&mut f, Kind::DISCOVER, Flags::NONE, 0, &payload).expect("frame").to_vec();
    assert_eq!(Discover::parse::<SoftCrc32>(&dirty), padding);
}
