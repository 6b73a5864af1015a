//! The client's decoder, `Response::parse`, with arbitrary kind and flags.
//!
//! Input: `kind: u8`, `flags: u8`, then the payload. Whatever decodes must re-encode, through
//! the message types' own encoders, to exactly the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rela_core::config::{MAX_ERROR_REASON, MAX_PING_PAYLOAD};
use rela_core::wire::generate::TokenMsg;
use rela_core::wire::model_list::ModelKind;
use rela_core::wire::msg::{Message, Response, valid_model_name};
use rela_core::wire::{Flags, Kind};

fn reemit<'a, M: Message<'a>>(m: &M, payload: &[u8]) {
    let mut buf = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut buf).expect("a decoded response re-encodes into buffer_len bytes");
    assert_eq!(n, m.buffer_len());
    assert_eq!(&buf[..n], payload, "re-encoding differs from the decoded payload");
}

fuzz_target!(|data: &[u8]| {
    let [kind, flags, payload @ ..] = data else { return };
    let (kind, flags) = (Kind(*kind), Flags(*flags));
    let resp = match Response::parse(kind, flags, payload) {
        Ok(r) => r,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(flags.is_response(), "decoded a response without the response flag");
    match resp {
        Response::Welcome(w) => {
            assert_eq!(kind, Kind::HELLO);
            reemit(&w, payload);
        }
        Response::Pong(p) => {
            assert_eq!(kind, Kind::PING);
            assert_eq!(p, payload);
            assert!(p.len() <= MAX_PING_PAYLOAD);
        }
        Response::DeviceInfo(d) => {
            assert_eq!(kind, Kind::DEVICE_INFO);
            reemit(&d, payload);
        }
        Response::Stats(s) => {
            assert_eq!(kind, Kind::STATS);
            reemit(&s, payload);
        }
        Response::Allocated(a) => {
            assert_eq!(kind, Kind::ALLOC);
            reemit(&a, payload);
        }
        Response::Data(d) => {
            assert_eq!(kind, Kind::READ);
            assert_eq!(d, payload);
        }
        Response::Ack(k) => {
            assert_eq!(k, kind);
            assert!(payload.is_empty());
            assert!(matches!(
                k,
                Kind::AUTH
                    | Kind::FREE
                    | Kind::WRITE
                    | Kind::COPY
                    | Kind::FILL
                    | Kind::DISPATCH
                    | Kind::MODEL_UNLOAD
                    | Kind::MODEL_UPLOAD
                    | Kind::MODEL_CHUNK
                    | Kind::CANCEL
                    | Kind::BYE
            ));
        }
        Response::ModelLoaded(m) => {
            assert!(matches!(kind, Kind::MODEL_LOAD | Kind::MODEL_COMMIT));
            reemit(&m, payload);
        }
        Response::Progress(p) => {
            assert_eq!(kind, Kind::PROGRESS);
            reemit(&p, payload);
        }
        Response::Token(t) => {
            assert_eq!(kind, Kind::TOKEN);
            assert!(t.flags & !TokenMsg::PROMPT == 0);
            assert_eq!(t.ids().count(), t.count());
            reemit(&t, payload);
        }
        Response::Generated(g) => {
            assert_eq!(kind, Kind::GENERATE);
            reemit(&g, payload);
        }
        Response::ModelListed(m) => {
            assert_eq!(kind, Kind::MODEL_LIST);
            // A name exactly when a kind, and one MODEL_LOAD would take.
            assert_eq!(m.kind == ModelKind::NONE, m.name.is_empty());
            assert!(m.name.is_empty() || valid_model_name(m.name));
            reemit(&m, payload);
        }
        Response::Embeddings(e) => {
            assert_eq!(kind, Kind::INFER);
            assert_eq!(e.data.len(), e.count as usize * e.dim as usize * 4);
            reemit(&e, payload);
        }
        Response::Error(e) => {
            assert_eq!(kind, Kind::ERROR);
            assert!(e.reason.len() <= MAX_ERROR_REASON);
            reemit(&e, payload);
        }
        Response::Unknown(k, p) => {
            assert_eq!(k, kind);
            assert_eq!(p, payload);
            let handled = [
                Kind::HELLO,
                Kind::PING,
                Kind::DEVICE_INFO,
                Kind::STATS,
                Kind::ALLOC,
                Kind::READ,
                Kind::AUTH,
                Kind::FREE,
                Kind::WRITE,
                Kind::COPY,
                Kind::FILL,
                Kind::DISPATCH,
                Kind::BYE,
                Kind::ERROR,
                Kind::MODEL_LOAD,
                Kind::MODEL_UNLOAD,
                Kind::INFER,
                Kind::PROGRESS,
                Kind::MODEL_UPLOAD,
                Kind::MODEL_CHUNK,
                Kind::MODEL_COMMIT,
                Kind::GENERATE,
                Kind::TOKEN,
                Kind::CANCEL,
                Kind::MODEL_LIST,
            ];
            assert!(!handled.contains(&k), "{k:?} decoded as Unknown");
        }
        other => panic!("unexpected response variant {other:?}"),
    }
});
