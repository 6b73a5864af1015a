//! Closing every client empties the table of open clients, whatever state each one was in,
//! and the node holds nothing afterwards. (Its own test binary: the table is per process.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{TestNode, connected, last_message};
use rela_ffi::*;

#[test]
fn closed_clients_leave_nothing_open() {
    let mut node = TestNode::start(None);
    assert_eq!(open_clients(), 0);
    let clients: Vec<_> = (0..3).map(|_| connected(node.port, None)).collect();
    assert_eq!(open_clients(), 3);
    for &c in &clients {
        let mut b = 0;
        // SAFETY: `b` is writable.
        assert_eq!(unsafe { rela_alloc(c, 1 << 16, &mut b) }, RELA_OK, "{}", last_message());
    }
    // One closed normally: the node frees its buffer with the session.
    assert_eq!(rela_close(clients[0]), RELA_OK);
    assert_eq!(open_clients(), 2);
    // The others after the node went away: the close fails to say goodbye, but frees.
    node.stop();
    for &c in &clients[1..] {
        let _ = rela_close(c);
    }
    assert_eq!(open_clients(), 0);
}
