//! The table of open clients behind the opaque [`RelaClient`] handles.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use rela_client::{BlockingClient, RemoteModel};

use crate::boundary::Failure;
use crate::status::RELA_ERR_UNKNOWN_HANDLE;

/// An open connection to a node: an opaque number, never 0, never reused in a process.
pub type RelaClient = u64;

/// One open client and what the table knows about it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) client: BlockingClient,
    /// Models loaded through this client (INFER needs their dimension).
    pub(crate) models: HashMap<u32, RemoteModel>,
}

/// An entry, `None` once a close has taken it while another thread waited for it.
type Shared = Arc<Mutex<Option<Entry>>>;

fn table() -> MutexGuard<'static, HashMap<RelaClient, Shared>> {
    static TABLE: OnceLock<Mutex<HashMap<RelaClient, Shared>>> = OnceLock::new();
    // A panic while the table was locked (caught at the boundary) leaves it consistent: every
    // change to it is a single insert or remove.
    TABLE.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds a connected client to the table and returns its handle.
pub(crate) fn insert(client: BlockingClient) -> RelaClient {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    table().insert(id, Arc::new(Mutex::new(Some(Entry { client, models: HashMap::new() }))));
    id
}

/// Takes a client out of the table (for closing). Calls running on it from other threads
/// finish first: the caller gets the entry once they have let go of it.
pub(crate) fn remove(id: RelaClient) -> Result<Entry, Failure> {
    let shared = table().remove(&id).ok_or_else(|| unknown(id))?;
    // Wait for a call in progress on another thread, then take the entry out.
    let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
    guard.take().ok_or_else(|| unknown(id))
}

/// Runs `f` on the open client `id`, one call at a time per client.
///
/// This is the entry point for bindings written in Rust (`rela-jni`).
pub fn with_client<T>(
    id: RelaClient,
    f: impl FnOnce(&mut BlockingClient) -> Result<T, Failure>,
) -> Result<T, Failure> {
    with_entry(id, |e| f(&mut e.client))
}

/// [`with_client`], with the client's model table.
pub(crate) fn with_entry<T>(
    id: RelaClient,
    f: impl FnOnce(&mut Entry) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let shared = table().get(&id).cloned().ok_or_else(|| unknown(id))?;
    // A panic during an earlier call on this client was caught at the boundary; the client's
    // own state machine marks itself broken on errors, so its calls stay safe to make.
    let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.as_mut().ok_or_else(|| unknown(id))?)
}

/// How many clients are open in this process (for leak checks).
pub fn open_clients() -> usize {
    table().len()
}

fn unknown(id: RelaClient) -> Failure {
    Failure::new(
        RELA_ERR_UNKNOWN_HANDLE,
        format!("no open client with handle {id} (never opened, or closed)"),
    )
}
