//! The native methods of `org.vramrelay.RelaClient`, one per Java `native` declaration.
//!
//! Handles cross as `long`: the client is a `rela-ffi` client handle, buffers and models the
//! node's 32-bit ids (a value outside `0..2^32` is an invalid argument).

use std::ops::ControlFlow;

use jni::JNIEnv;
use jni::objects::{JByteArray, JByteBuffer, JClass, JObject, JObjectArray, JString, JValue};
use jni::sys::{jboolean, jbyteArray, jint, jlong, jobjectArray, jstring};
use rela_client::{GenerateEvent, GenerateRequest, Handle};
use rela_core::wire::generate::{Prompt, Sampling};
use rela_ffi::{
    ConnectSettings, Failure, RELA_TLS_CA, RELA_TLS_FIRST_USE, RELA_TLS_OFF, RELA_TLS_PINNED, TlsChoice,
    with_client,
};

use crate::throw::{jni_failure, run};

/// A client handle from Java.
fn client(h: jlong) -> u64 {
    // Handles are small positive numbers; a negative `long` names no client.
    u64::try_from(h).unwrap_or(0)
}

/// A node id (buffer or model) from Java.
fn id(v: jlong, what: &str) -> Result<u32, Failure> {
    u32::try_from(v).map_err(|_| Failure::invalid(format!("{what} {v} is not a handle the node gave out")))
}

/// A non-negative `int` from Java as a length.
fn len(v: jint, what: &str) -> Result<usize, Failure> {
    usize::try_from(v).map_err(|_| Failure::invalid(format!("{what} {v} is negative")))
}

/// An offset from Java.
fn offset(v: jlong) -> Result<u64, Failure> {
    u64::try_from(v).map_err(|_| Failure::invalid(format!("offset {v} is negative")))
}

fn text(env: &mut JNIEnv<'_>, s: &JString<'_>, what: &str) -> Result<String, Failure> {
    if s.is_null() {
        return Err(Failure::invalid(format!("{what} is null")));
    }
    Ok(env.get_string(s).map_err(|e| jni_failure(what, &e))?.into())
}

/// The `len` bytes of a direct buffer from `position`.
///
/// # Safety
/// The Java side keeps `buf` reachable (it is a local reference for the whole native call);
/// nothing else in this call touches its memory.
unsafe fn direct<'a>(
    env: &mut JNIEnv<'_>,
    buf: &JByteBuffer<'_>,
    position: jint,
    length: jint,
) -> Result<&'a mut [u8], Failure> {
    if buf.is_null() {
        return Err(Failure::invalid("the ByteBuffer is null"));
    }
    let (position, length) = (len(position, "position")?, len(length, "length")?);
    let address = env
        .get_direct_buffer_address(buf)
        .map_err(|_| Failure::invalid("the ByteBuffer is not direct (use ByteBuffer.allocateDirect)"))?;
    let capacity = env.get_direct_buffer_capacity(buf).map_err(|e| jni_failure("ByteBuffer capacity", &e))?;
    if position.checked_add(length).is_none_or(|end| end > capacity) {
        return Err(Failure::invalid(format!(
            "{length} bytes from {position} overrun the ByteBuffer's {capacity}"
        )));
    }
    if length == 0 {
        return Ok(&mut []);
    }
    // SAFETY: the JVM gives the address of `capacity` bytes that stay put while `buf` is
    // reachable (the caller's contract); `position + length <= capacity` was checked.
    Ok(unsafe { std::slice::from_raw_parts_mut(address.add(position), length) })
}

/// `RelaClient.nativeConnect(String host, int port, byte[] token, int connectMs,
/// int handshakeMs, int requestMs, int tlsMode, String tlsArg)`: the new client's handle.
/// `tlsMode` is a `RELA_TLS_*` mode; `tlsArg` the fingerprint (pinned), the CA file (CA) or the
/// known-nodes file (first use; null for the default), else ignored.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeConnect<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    host: JString<'l>,
    port: jint,
    token: JByteArray<'l>,
    connect_ms: jint,
    handshake_ms: jint,
    request_ms: jint,
    tls_mode: jint,
    tls_arg: JString<'l>,
) -> jlong {
    run(&mut env, 0, |env| {
        let host = text(env, &host, "host")?;
        let port =
            u16::try_from(port).map_err(|_| Failure::invalid(format!("port {port} is not in 0..=65535")))?;
        let token = if token.is_null() {
            None
        } else {
            Some(env.convert_byte_array(&token).map_err(|e| jni_failure("token", &e))?)
        };
        let ms = |v: jint| u32::try_from(v).unwrap_or(0);
        let arg = if tls_arg.is_null() { None } else { Some(text(env, &tls_arg, "tlsArg")?) };
        let needs = |what: &str| {
            arg.clone()
                .ok_or_else(|| Failure::invalid(format!("this TLS mode needs {what} (tlsArg is null)")))
        };
        let tls = match u32::try_from(tls_mode).unwrap_or(u32::MAX) {
            RELA_TLS_OFF => TlsChoice::Off,
            RELA_TLS_PINNED => TlsChoice::Pinned(needs("the fingerprint")?),
            RELA_TLS_CA => TlsChoice::Ca(needs("the CA file")?),
            RELA_TLS_FIRST_USE => TlsChoice::FirstUse(arg.clone()),
            _ => return Err(Failure::invalid(format!("TLS mode {tls_mode} is not one of RelaClient.Tls's"))),
        };
        let settings = ConnectSettings {
            connect_timeout_ms: ms(connect_ms),
            handshake_timeout_ms: ms(handshake_ms),
            request_timeout_ms: ms(request_ms),
            tls,
        };
        let h = rela_ffi::connect(&host, port, token.as_deref(), &settings)?;
        // Client handles count up from 1; they fit a `long`.
        Ok(jlong::try_from(h).unwrap_or(jlong::MAX))
    })
}

/// `RelaClient.nativePing(long client)`: the round-trip time in microseconds.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativePing<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
) -> jlong {
    run(&mut env, 0, |_| {
        let rtt = with_client(client(h), |c| Ok(c.ping()?))?;
        Ok(jlong::try_from(rtt.as_micros()).unwrap_or(jlong::MAX))
    })
}

/// `RelaClient.nativeAlloc(long client, long size)`: the buffer's handle.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeAlloc<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    size: jlong,
) -> jlong {
    run(&mut env, 0, |_| {
        let size = u64::try_from(size).map_err(|_| Failure::invalid(format!("size {size} is negative")))?;
        Ok(jlong::from(with_client(client(h), |c| Ok(c.alloc(size)?))?.raw()))
    })
}

/// `RelaClient.nativeFree(long client, long buffer)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeFree<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    buffer: jlong,
) {
    run(&mut env, (), |_| {
        let b = Handle::from_raw(id(buffer, "buffer")?, 0);
        with_client(client(h), |c| Ok(c.free(b)?))
    });
}

/// `RelaClient.nativeWrite(long client, long buffer, long offset, byte[] data)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeWrite<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    buffer: jlong,
    at: jlong,
    data: JByteArray<'l>,
) {
    run(&mut env, (), |env| {
        let (b, at) = (Handle::from_raw(id(buffer, "buffer")?, 0), offset(at)?);
        if data.is_null() {
            return Err(Failure::invalid("data is null"));
        }
        let bytes = env.convert_byte_array(&data).map_err(|e| jni_failure("data", &e))?;
        with_client(client(h), |c| Ok(c.write(b, at, &bytes)?))
    });
}

/// `RelaClient.nativeWriteDirect(long client, long buffer, long offset, ByteBuffer data,
/// int position, int length)`: straight from the direct buffer's memory, no copy.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeWriteDirect<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    buffer: jlong,
    at: jlong,
    data: JByteBuffer<'l>,
    position: jint,
    length: jint,
) {
    run(&mut env, (), |env| {
        let (b, at) = (Handle::from_raw(id(buffer, "buffer")?, 0), offset(at)?);
        // SAFETY: `data` is a local reference held for this whole call.
        let bytes = unsafe { direct(env, &data, position, length)? };
        with_client(client(h), |c| Ok(c.write(b, at, bytes)?))
    });
}

/// `RelaClient.nativeRead(long client, long buffer, long offset, int length)`: a new array.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeRead<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    buffer: jlong,
    at: jlong,
    length: jint,
) -> jbyteArray {
    run(&mut env, std::ptr::null_mut(), |env| {
        let (b, at, length) =
            (Handle::from_raw(id(buffer, "buffer")?, 0), offset(at)?, len(length, "length")?);
        let mut bytes = vec![0u8; length];
        with_client(client(h), |c| Ok(c.read_into(b, at, &mut bytes)?))?;
        Ok(env.byte_array_from_slice(&bytes).map_err(|e| jni_failure("result array", &e))?.into_raw())
    })
}

/// `RelaClient.nativeReadDirect(long client, long buffer, long offset, ByteBuffer dst,
/// int position, int length)`: straight into the direct buffer's memory, no copy.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeReadDirect<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    buffer: jlong,
    at: jlong,
    dst: JByteBuffer<'l>,
    position: jint,
    length: jint,
) {
    run(&mut env, (), |env| {
        let (b, at) = (Handle::from_raw(id(buffer, "buffer")?, 0), offset(at)?);
        // SAFETY: `dst` is a local reference held for this whole call.
        let out = unsafe { direct(env, &dst, position, length)? };
        with_client(client(h), |c| Ok(c.read_into(b, at, out)?))
    });
}

/// `RelaClient.nativeLoadModel(long client, String name)`: the model's id.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeLoadModel<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    name: JString<'l>,
) -> jlong {
    run(&mut env, 0, |env| {
        let name = text(env, &name, "name")?;
        Ok(jlong::from(rela_ffi::model_load(client(h), &name)?.id))
    })
}

/// `RelaClient.nativeUnloadModel(long client, long model)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeUnloadModel<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    model: jlong,
) {
    run(&mut env, (), |_| rela_ffi::model_unload(client(h), id(model, "model")?));
}

/// `RelaClient.nativeEmbed(long client, long model, String[] texts)`: one `float[]` per text.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeEmbed<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    model: jlong,
    texts: JObjectArray<'l>,
) -> jobjectArray {
    run(&mut env, std::ptr::null_mut(), |env| {
        let model = id(model, "model")?;
        if texts.is_null() {
            return Err(Failure::invalid("texts is null"));
        }
        let n = env.get_array_length(&texts).map_err(|e| jni_failure("texts", &e))?;
        let mut owned = Vec::with_capacity(len(n, "count")?);
        for i in 0..n {
            let s =
                JString::from(env.get_object_array_element(&texts, i).map_err(|e| jni_failure("texts", &e))?);
            owned.push(text(env, &s, &format!("texts[{i}]"))?);
        }
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        let vectors = rela_ffi::embed(client(h), model, &refs)?;
        let out =
            env.new_object_array(n, "[F", JObject::null()).map_err(|e| jni_failure("result array", &e))?;
        for (i, v) in (0..).zip(&vectors) {
            let size =
                jint::try_from(v.len()).map_err(|_| Failure::invalid("an embedding too long for Java"))?;
            let row = env.new_float_array(size).map_err(|e| jni_failure("result array", &e))?;
            env.set_float_array_region(&row, 0, v).map_err(|e| jni_failure("result array", &e))?;
            env.set_object_array_element(&out, i, &row).map_err(|e| jni_failure("result array", &e))?;
            env.delete_local_ref(row).map_err(|e| jni_failure("result array", &e))?;
        }
        Ok(out.into_raw())
    })
}

/// `RelaClient.nativeClose(long client)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeClose<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
) {
    run(&mut env, (), |_| rela_ffi::close(client(h)));
}

/// `RelaClient.nativeGenerate(long client, long model, String prompt, int maxTokens,
/// boolean chat, Consumer<String> onText)`: the generated text. `onText` (may be null) gets
/// each piece as it arrives; an exception it throws cancels the generation and propagates.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_vramrelay_RelaClient_nativeGenerate<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    model: jlong,
    prompt: JString<'l>,
    max_tokens: jint,
    chat: jboolean,
    on_text: JObject<'l>,
) -> jstring {
    run(&mut env, std::ptr::null_mut(), |env| {
        let model = id(model, "model")?;
        let prompt = text(env, &prompt, "prompt")?;
        let max_tokens = u32::try_from(max_tokens)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Failure::invalid(format!("maxTokens {max_tokens} is not positive")))?;
        let messages = [("user", prompt.as_str())];
        let req = GenerateRequest {
            model,
            prompt: if chat != 0 { Prompt::Messages(&messages) } else { Prompt::Text(&prompt) },
            max_tokens,
            sampling: Sampling::GREEDY,
            stops: &[],
        };
        let mut callback_failed = false;
        let outcome = with_client(client(h), |c| {
            Ok(c.generate(&req, |event| {
                let GenerateEvent::Token { text, .. } = event else { return ControlFlow::Continue(()) };
                if on_text.is_null() || callback_failed {
                    return ControlFlow::Continue(());
                }
                let delivered = env.new_string(text).and_then(|s| {
                    let r =
                        env.call_method(&on_text, "accept", "(Ljava/lang/Object;)V", &[JValue::Object(&s)]);
                    let _ = env.delete_local_ref(s);
                    r
                });
                if delivered.is_err() {
                    // The callback threw (the exception stays pending): stop the generation.
                    callback_failed = true;
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })?)
        })?;
        if callback_failed {
            return Err(Failure::new(rela_ffi::RELA_ERR_INTERNAL, "the onText callback threw"));
        }
        Ok(env.new_string(&outcome.text).map_err(|e| jni_failure("result string", &e))?.into_raw())
    })
}
