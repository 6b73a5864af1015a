//! Running a native method: `catch_unwind`, and a `RelaException` for every failure.

use std::panic::{AssertUnwindSafe, catch_unwind};

use jni::JNIEnv;
use jni::objects::JValue;
use rela_ffi::{Failure, RELA_ERR_PANIC};

/// The exception class the Java side declares.
const EXCEPTION: &str = "org/vramrelay/RelaException";

/// Runs `body` and returns its value, or throws a `RelaException` and returns `fallback`
/// (which the JVM ignores once an exception is pending).
pub(crate) fn run<T>(
    env: &mut JNIEnv<'_>,
    fallback: T,
    body: impl FnOnce(&mut JNIEnv<'_>) -> Result<T, Failure>,
) -> T {
    let outcome = catch_unwind(AssertUnwindSafe(|| body(env))).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        Err(Failure::new(RELA_ERR_PANIC, format!("internal error (panic): {what}")))
    });
    match outcome {
        Ok(v) => v,
        Err(f) => {
            throw(env, &f);
            fallback
        }
    }
}

/// Throws `RelaException(code, message)`. When a JNI call failed because an exception is
/// already pending (say, an `OutOfMemoryError`), that one stays.
fn throw(env: &mut JNIEnv<'_>, f: &Failure) {
    if env.exception_check().unwrap_or(true) {
        return;
    }
    let Ok(message) = env.new_string(&f.message) else { return };
    let Ok(e) = env.new_object(
        EXCEPTION,
        "(ILjava/lang/String;)V",
        &[JValue::Int(f.status), JValue::Object(&message)],
    ) else {
        return;
    };
    let _ = env.throw(jni::objects::JThrowable::from(e));
}

/// A failure of the JNI layer itself (a Java string that cannot be read, an array that cannot
/// be made): the status is `RELA_ERR_INTERNAL`.
pub(crate) fn jni_failure(what: &str, e: &jni::errors::Error) -> Failure {
    Failure::new(rela_ffi::RELA_ERR_INTERNAL, format!("{what}: {e}"))
}
