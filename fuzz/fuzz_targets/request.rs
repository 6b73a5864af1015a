//! `Request::parse` for every kind byte (the first input byte; the rest is the payload).
//! What parses must re-emit to exactly the same bytes (every request encoding is canonical),
//! and the re-emitted bytes must parse again to the same encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rela_core::wire::Kind;
use rela_core::wire::msg::Request;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else { return };
    let kind = Kind(kind);
    let req = match Request::parse(kind, payload) {
        Ok(req) => req,
        Err(e) => {
            let _ = e.to_string();
            assert!(Kind::KNOWN.contains(&kind), "unknown kind {kind:?} failed instead of decoding as Unknown");
            return;
        }
    };
    assert_eq!(req.kind(), kind, "decoded request reports another kind");
    let mut buf = vec![0u8; payload.len()];
    let n = req.emit(&mut buf).expect("a decoded request re-encodes into its own length");
    match req {
        Request::Unknown(k) => {
            assert_eq!(k, kind);
            assert_eq!(n, 0);
            return;
        }
        _ => assert_eq!(&buf[..n], payload, "{req:?} re-encodes to different bytes"),
    }
    let again = Request::parse(kind, &buf[..n]).expect("re-encoded request parses");
    let mut buf2 = vec![0u8; n];
    let n2 = again.emit(&mut buf2).expect("re-parsed request re-encodes");
    assert_eq!(buf2[..n2], buf[..n], "second round trip differs");
    if n > 0 {
        assert!(req.emit(&mut buf[..n - 1]).is_err(), "{req:?} encoded into a buffer one byte short");
    }
});
