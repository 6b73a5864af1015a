//! Errors across the C boundary: a wrong token, a missing token, an unknown handle, a closed
//! node and a timeout each give their status and message; null pointers and bad arguments are
//! refused with a status; nothing panics, and closed clients leave nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{TestNode, connect, connected, last_message};
use rela_ffi::*;

const TOKEN: &[u8] = b"a long and secret test token";

#[test]
fn a_wrong_token_is_auth_failed_and_a_missing_one_is_token_required() {
    let node = TestNode::start(Some(TOKEN));
    let (status, client) = connect(node.port, Some(b"not the token"), None);
    assert_eq!(status, 6, "{}", last_message());
    assert_eq!(client, 0, "no handle on failure");
    assert_eq!(rela_last_error_code(), 6);
    assert_eq!(last_message(), "the node rejected the token");
    // SAFETY: rela_status_name returns a static string.
    assert_eq!(unsafe { std::ffi::CStr::from_ptr(rela_status_name(6)) }.to_str().unwrap(), "AUTH_FAILED");

    // The node throttles this address briefly after a failed AUTH: retry while it says BUSY.
    let mut status = 0;
    for _ in 0..50 {
        status = connect(node.port, None, None).0;
        if status != 17 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(status, RELA_ERR_TOKEN_REQUIRED, "{}", last_message());
    assert_eq!(last_message(), "the node requires a token");

    let mut client = 0;
    for _ in 0..50 {
        let (s, c) = connect(node.port, Some(TOKEN), None);
        (status, client) = (s, c);
        if status != 17 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(status, RELA_OK, "{}", last_message());
    assert_eq!(last_message(), "", "success clears the message");
    assert_eq!(rela_close(client), RELA_OK);
}

#[test]
fn unknown_client_and_buffer_handles() {
    let node = TestNode::start(None);
    let client = connected(node.port, None);

    // A buffer handle the node never gave out: the node's NO_SUCH_BUFFER, and the session
    // goes on.
    assert_eq!(rela_free(client, 0xdead), 10);
    assert!(last_message().starts_with("node error NO_SUCH_BUFFER"), "{}", last_message());
    let mut out = [0u8; 4];
    // SAFETY: `out` holds 4 bytes.
    assert_eq!(unsafe { rela_read(client, 0xdead, 0, out.as_mut_ptr(), 4) }, 10);
    // SAFETY: a null out pointer is allowed.
    assert_eq!(unsafe { rela_ping(client, std::ptr::null_mut()) }, RELA_OK);

    // A model id never loaded through this client.
    assert_eq!(rela_model_unload(client, 3), RELA_ERR_UNKNOWN_HANDLE);
    assert_eq!(last_message(), "no model 3 was loaded through this client");

    // Client handles: never opened, and closed.
    assert_eq!(rela_free(client + 1_000_000, 1), RELA_ERR_UNKNOWN_HANDLE);
    assert!(last_message().contains("no open client with handle"), "{}", last_message());
    assert_eq!(rela_close(client), RELA_OK);
    let mut micros = 0;
    // SAFETY: `micros` is writable.
    assert_eq!(unsafe { rela_ping(client, &mut micros) }, RELA_ERR_UNKNOWN_HANDLE);
    assert_eq!(rela_close(client), RELA_ERR_UNKNOWN_HANDLE, "a second close");
    assert_eq!(rela_close(0), RELA_ERR_UNKNOWN_HANDLE);
}

#[test]
fn a_closed_node_gives_io_errors_then_closed() {
    let mut node = TestNode::start(None);
    let port = node.port;
    let client = connected(port, None);
    node.stop();
    // The node said SHUTTING_DOWN (19) and closed the connection: whichever the client sees
    // first, the call fails with a status and a message.
    let mut micros = 0;
    // SAFETY: `micros` is writable.
    let first = unsafe { rela_ping(client, &mut micros) };
    assert!(first == 19 || first == RELA_ERR_IO, "status {first}: {}", last_message());
    assert!(!last_message().is_empty());
    // The session is over: later calls say so without touching the network.
    // SAFETY: `micros` is writable.
    assert_eq!(unsafe { rela_ping(client, &mut micros) }, RELA_ERR_CLOSED);
    assert_eq!(last_message(), "connection closed");
    // Closing a broken session frees the handle (there is no goodbye to deliver).
    assert_eq!(rela_close(client), RELA_OK, "{}", last_message());
    assert_eq!(rela_close(client), RELA_ERR_UNKNOWN_HANDLE);

    // Nothing listens there any more: connecting is refused.
    let (status, _) = connect(port, None, None);
    assert_eq!(status, RELA_ERR_IO, "{}", last_message());
    assert!(last_message().starts_with("transport error"), "{}", last_message());
}

#[test]
fn a_silent_server_times_out_within_the_deadline() {
    // A listener that never accepts: the kernel completes the TCP handshake, nobody answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let options = RelaConnectOptions { handshake_timeout_ms: 200, ..Default::default() };
    let t = Instant::now();
    let (status, _) = connect(port, None, Some(options));
    assert_eq!(status, RELA_ERR_TIMEOUT, "{}", last_message());
    assert_eq!(
        last_message(),
        "timed out after 200 ms: the node did not complete the handshake (HELLO, WELCOME, AUTH)"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "bounded by the deadline, not a hang");
}

#[test]
fn null_pointers_and_bad_arguments_are_refused() {
    let node = TestNode::start(None);
    let client = connected(node.port, None);
    let mut c = 0;
    // SAFETY: the null pointers are what is tested; the library checks them.
    unsafe {
        assert_eq!(
            rela_connect(std::ptr::null(), 1, std::ptr::null(), 0, std::ptr::null(), &mut c),
            RELA_ERR_INVALID_ARGUMENT
        );
        assert_eq!(last_message(), "host is null");
        let host = c"127.0.0.1";
        assert_eq!(
            rela_connect(
                host.as_ptr(),
                node.port,
                std::ptr::null(),
                0,
                std::ptr::null(),
                std::ptr::null_mut()
            ),
            RELA_ERR_INVALID_ARGUMENT
        );
        assert_eq!(last_message(), "out_client is null");
        assert_eq!(
            rela_connect(host.as_ptr(), node.port, std::ptr::null(), 5, std::ptr::null(), &mut c),
            RELA_ERR_INVALID_ARGUMENT
        );
        assert_eq!(last_message(), "token is null");
        assert_eq!(rela_alloc(client, 64, std::ptr::null_mut()), RELA_ERR_INVALID_ARGUMENT);
        assert_eq!(rela_write(client, 1, 0, std::ptr::null(), 8), RELA_ERR_INVALID_ARGUMENT);
        assert_eq!(last_message(), "data is null");
        assert_eq!(rela_dispatch(client, std::ptr::null()), RELA_ERR_INVALID_ARGUMENT);
        let bad = RelaKernel { kernel: 99, ..Default::default() };
        assert_eq!(rela_dispatch(client, &bad), RELA_ERR_INVALID_ARGUMENT);
        assert_eq!(last_message(), "unknown kernel 99 (1 to 4: ADD, MUL, SCALE, MATMUL)");
        let not_utf8 = [0xffu8, 0xfe, 0];
        assert_eq!(
            rela_connect(not_utf8.as_ptr().cast(), 1, std::ptr::null(), 0, std::ptr::null(), &mut c),
            RELA_ERR_INVALID_ARGUMENT
        );
        assert_eq!(last_message(), "host is not UTF-8");
        assert_eq!(rela_device_info(client, std::ptr::null_mut()), RELA_ERR_INVALID_ARGUMENT);
        assert_eq!(rela_stats(client, std::ptr::null_mut()), RELA_ERR_INVALID_ARGUMENT);
        assert_eq!(
            rela_discover(std::ptr::null(), 1, std::ptr::null(), 0, std::ptr::null_mut()),
            RELA_ERR_INVALID_ARGUMENT
        );
        // Zero-length transfers need no pointer.
        let mut buffer = 0;
        assert_eq!(rela_alloc(client, 64, &mut buffer), RELA_OK);
        assert_eq!(rela_write(client, buffer, 0, std::ptr::null(), 0), RELA_OK, "{}", last_message());
        assert_eq!(rela_read(client, buffer, 0, std::ptr::null_mut(), 0), RELA_OK, "{}", last_message());
        // An out-of-bounds write is the node's OUT_OF_BOUNDS (11), and the session goes on.
        let data = [1u8; 8];
        assert_eq!(rela_write(client, buffer, 60, data.as_ptr(), 8), 11, "{}", last_message());
        assert_eq!(rela_ping(client, std::ptr::null_mut()), RELA_OK);
    }
    assert_eq!(rela_close(client), RELA_OK);
}

#[test]
fn many_threads_share_one_client() {
    let node = TestNode::start(None);
    let client = connected(node.port, None);
    let threads: Vec<_> = (0..4u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut buffer = 0;
                let data = rela_test_support::pattern(u32::from(i), 4096);
                let mut back = vec![0u8; 4096];
                // SAFETY: the pointers are valid for each call.
                unsafe {
                    assert_eq!(rela_alloc(client, 4096, &mut buffer), RELA_OK, "{}", last_message());
                    assert_eq!(rela_write(client, buffer, 0, data.as_ptr(), data.len()), RELA_OK);
                    assert_eq!(rela_read(client, buffer, 0, back.as_mut_ptr(), back.len()), RELA_OK);
                }
                assert_eq!(back, data);
                assert_eq!(rela_free(client, buffer), RELA_OK);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no panic in any thread");
    }
    assert_eq!(rela_close(client), RELA_OK);
    node.wait_idle();
}
