//! # rela-jni
//!
//! The native side of the JVM API in `hosts/jvm` (package `org.vramrelay`: `RelaClient`,
//! `RelaException`), for Java and Kotlin on desktops and Android. It is a thin layer over
//! `rela-ffi`: the same client table, status codes and messages.
//!
//! The library is `librela_jni.so`, loaded by `System.loadLibrary("rela_jni")`, or from the
//! path in the system property `org.vramrelay.library`. Every failure becomes a
//! `RelaException` with the status as its `code()` (a positive wire code or a negative
//! `RELA_ERR_*`) and the message; a panic becomes one with `RELA_ERR_PANIC`. Nothing unwinds
//! into the JVM.

pub mod calls;
mod throw;
