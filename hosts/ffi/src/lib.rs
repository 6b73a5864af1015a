//! # rela-ffi
//!
//! A C ABI over [`rela_client::BlockingClient`], built as a static library (`librela_ffi.a`), a
//! shared library (`librela_ffi.so`) and an rlib (for `rela-jni`). The header is
//! `include/rela.h`, generated from this crate by cbindgen and checked by `tests/header.rs`.
//!
//! ## Conventions
//!
//! - **Status codes.** Every function that can fail returns an `int32_t`: [`RELA_OK`] (0), a
//!   positive ERROR code sent by the node (`docs/PROTOCOL.md`; a wrong token is
//!   `AUTH_FAILED` = 6), or a negative local code `RELA_ERR_*` ([`status`]).
//! - **Error messages.** [`rela_last_error_message`] returns the message of the last call on
//!   the calling thread (an empty string when it succeeded); [`rela_last_error_code`] its
//!   status.
//! - **Opaque handles.** A connection is a [`RelaClient`], a number that names an entry in a
//!   table of open clients: a stale or made-up value gives [`RELA_ERR_UNKNOWN_HANDLE`], never
//!   undefined behaviour. Buffers are the node's own handles ([`RelaBuffer`]); a wrong one is
//!   answered by the node with `NO_SUCH_BUFFER` (10). A client may be used from several
//!   threads; its calls run one at a time.
//! - **No panic crosses the boundary.** Every function body runs under `catch_unwind`; a panic
//!   becomes [`RELA_ERR_PANIC`] with its message.
//! - **Memory.** Data goes in and out through caller-owned buffers. The one object this
//!   library allocates for the caller, a [`RelaNodeList`] from [`rela_discover`], is freed
//!   with [`rela_node_list_free`]; a client with [`rela_close`].
//!
//! Text generation streams through a callback: [`rela_generate`] calls it with each piece of
//! text and its token ids, and a non-zero return cancels.

mod boundary;
mod buffers;
mod clients;
mod connect;
mod discover;
mod generate;
mod info;
mod models;
pub mod status;
mod text;

pub use boundary::{Failure, rela_last_error_code, rela_last_error_message};
pub use buffers::{
    RELA_KERNEL_ADD, RELA_KERNEL_MATMUL, RELA_KERNEL_MUL, RELA_KERNEL_SCALE, RelaBuffer, RelaKernel,
    rela_alloc, rela_copy, rela_dispatch, rela_fill, rela_free, rela_read, rela_write,
};
pub use clients::{RelaClient, open_clients, with_client};
pub use connect::{
    ConnectSettings, RELA_TLS_CA, RELA_TLS_FIRST_USE, RELA_TLS_OFF, RELA_TLS_PINNED, RelaConnectOptions,
    TlsChoice, close, connect, rela_close, rela_connect, rela_ping,
};
pub use discover::{
    RELA_NODE_ID_LEN, RELA_NODE_TEXT_LEN, RelaNode, RelaNodeList, rela_discover, rela_node_list_free,
    rela_node_list_get, rela_node_list_len,
};
pub use generate::{
    RELA_FINISH_CANCELLED, RELA_FINISH_EOS, RELA_FINISH_LENGTH, RELA_FINISH_STOP, RelaGenerateOptions,
    RelaGenerateResult, RelaTokenCallback, rela_generate,
};
pub use info::{
    RELA_DEVICE_NAME_LEN, RELA_VENDOR_NAME_LEN, RelaDeviceInfo, RelaStats, rela_device_info, rela_stats,
};
pub use models::{
    RelaModel, embed, model_load, model_unload, rela_embed, rela_model_load, rela_model_unload,
};
pub use status::*;
