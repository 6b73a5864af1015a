//! The boundary every exported function goes through: `catch_unwind`, the status code, and
//! the calling thread's last error message.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use rela_client::ClientError;

use crate::status::{RELA_ERR_INVALID_ARGUMENT, RELA_ERR_PANIC, RELA_OK, status_of};

/// A failed call: its status code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The status (never [`RELA_OK`]).
    pub status: i32,
    /// What went wrong, for people.
    pub message: String,
}

impl Failure {
    /// A failure with a local status code.
    pub fn new(status: i32, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// [`RELA_ERR_INVALID_ARGUMENT`] with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(RELA_ERR_INVALID_ARGUMENT, message)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self { status: status_of(&e), message: e.to_string() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (status {})", self.message, self.status)
    }
}

impl std::error::Error for Failure {}

thread_local! {
    /// The last call's status and message on this thread.
    static LAST: RefCell<(i32, CString)> = RefCell::new((RELA_OK, CString::default()));
}

/// Runs `body` as the whole of an exported function: a panic becomes [`RELA_ERR_PANIC`], and
/// the thread's last error is set to the outcome (cleared on success).
pub(crate) fn run(body: impl FnOnce() -> Result<(), Failure>) -> i32 {
    let outcome = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(Failure::new(RELA_ERR_PANIC, format!("internal error (panic): {what}")))
        }
    };
    let (status, message) = match outcome {
        Ok(()) => (RELA_OK, String::new()),
        Err(f) => (f.status, f.message),
    };
    // Messages come from Display impls and never hold NUL; if one did, drop the NULs rather
    // than lose the message.
    let message = CString::new(message.replace('\0', "")).unwrap_or_default();
    LAST.with(|last| *last.borrow_mut() = (status, message));
    status
}

/// The message of the last call made on this thread: empty when it succeeded. The pointer
/// stays valid until the next `rela_*` call on this thread; copy the text to keep it. Never
/// null; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn rela_last_error_message() -> *const c_char {
    // Borrowing the thread-local cannot fail here: no other borrow is live on this thread.
    LAST.with(|last| last.borrow().1.as_ptr())
}

/// The status of the last call made on this thread ([`RELA_OK`] when it succeeded).
#[unsafe(no_mangle)]
pub extern "C" fn rela_last_error_code() -> i32 {
    LAST.with(|last| last.borrow().0)
}

/// `ptr` as a `&T`, or an invalid-argument failure naming `what` when it is null.
///
/// # Safety
/// A non-null `ptr` must point to a valid `T` for the returned lifetime.
pub(crate) unsafe fn non_null<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller's contract.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::invalid(format!("{what} is null")))
}

/// `ptr` as a `&mut T`, or an invalid-argument failure naming `what` when it is null.
///
/// # Safety
/// A non-null `ptr` must point to a valid, writable `T` not aliased for the returned lifetime.
pub(crate) unsafe fn non_null_mut<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: the caller's contract.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::invalid(format!("{what} is null")))
}

/// `len` bytes at `ptr` (which may be null when `len` is 0).
///
/// # Safety
/// A non-null `ptr` must point to `len` readable bytes for the returned lifetime.
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is null")));
    }
    // SAFETY: the caller's contract; `ptr` is non-null.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `len` writable bytes at `ptr` (which may be null when `len` is 0).
///
/// # Safety
/// A non-null `ptr` must point to `len` writable bytes, not aliased, for the returned lifetime.
pub(crate) unsafe fn bytes_mut<'a>(ptr: *mut u8, len: usize, what: &str) -> Result<&'a mut [u8], Failure> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is null")));
    }
    // SAFETY: the caller's contract; `ptr` is non-null.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// The NUL-terminated UTF-8 string at `ptr`.
///
/// # Safety
/// A non-null `ptr` must point to a NUL-terminated string valid for the returned lifetime.
pub(crate) unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is null")));
    }
    // SAFETY: the caller's contract; `ptr` is non-null.
    unsafe { std::ffi::CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn last_message() -> String {
        // SAFETY: the pointer is valid until the next call on this thread.
        unsafe { CStr::from_ptr(rela_last_error_message()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_success_clears_the_message() {
        let status = run(|| panic!("boom {}", 7));
        assert_eq!(status, RELA_ERR_PANIC);
        assert_eq!(rela_last_error_code(), RELA_ERR_PANIC);
        assert_eq!(last_message(), "internal error (panic): boom 7");
        assert_eq!(run(|| Ok(())), RELA_OK);
        assert_eq!(rela_last_error_code(), RELA_OK);
        assert_eq!(last_message(), "");
    }

    #[test]
    fn messages_are_per_thread() {
        run(|| Err(Failure::invalid("here")));
        std::thread::spawn(|| {
            assert_eq!(last_message(), "");
            run(|| Err(Failure::invalid("there")));
            assert_eq!(last_message(), "there");
        })
        .join()
        .unwrap();
        assert_eq!(last_message(), "here");
        assert_eq!(rela_last_error_code(), RELA_ERR_INVALID_ARGUMENT);
    }

    #[test]
    fn null_pointers_are_invalid_arguments() {
        // SAFETY: null pointers are what is tested; they are never dereferenced.
        unsafe {
            assert_eq!(text(std::ptr::null(), "host").unwrap_err().message, "host is null");
            assert!(bytes(std::ptr::null(), 0, "data").unwrap().is_empty());
            assert_eq!(bytes(std::ptr::null(), 3, "data").unwrap_err().status, RELA_ERR_INVALID_ARGUMENT);
        }
    }
}
