//! MODEL_LOAD, MODEL_UNLOAD and INFER (sentence embeddings).

use std::ffi::c_char;

use rela_client::RemoteModel;

use crate::boundary::{Failure, non_null_mut, run, text};
use crate::clients::{self, RelaClient};
use crate::status::{RELA_ERR_BUFFER_TOO_SMALL, RELA_ERR_UNKNOWN_HANDLE};

/// A model loaded on the node for one client's session.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelaModel {
    /// The model's id in the session.
    pub id: u32,
    /// Floats per embedding.
    pub dim: u32,
    /// Device bytes its weights hold (charged to the session's quota when they are its own).
    pub bytes: u64,
}

impl From<RemoteModel> for RelaModel {
    fn from(m: RemoteModel) -> Self {
        Self { id: m.id, dim: m.dim, bytes: m.bytes }
    }
}

/// Loads a model from the node's repository by name (a node started with `--models`).
///
/// This is the entry point for bindings written in Rust (`rela-jni`).
pub fn model_load(client: RelaClient, name: &str) -> Result<RelaModel, Failure> {
    clients::with_entry(client, |e| {
        let m = e.client.model_load(name, None)?;
        e.models.insert(m.id, m);
        Ok(m.into())
    })
}

/// Unloads a model loaded through this client.
pub fn model_unload(client: RelaClient, model: u32) -> Result<(), Failure> {
    clients::with_entry(client, |e| {
        let m = *e.models.get(&model).ok_or_else(|| unknown_model(model))?;
        e.client.model_unload(m)?;
        e.models.remove(&model);
        Ok(())
    })
}

/// Embeds `texts` with a model loaded through this client: one `dim`-float vector per text.
///
/// This is the entry point for bindings written in Rust (`rela-jni`).
pub fn embed(client: RelaClient, model: u32, texts: &[&str]) -> Result<Vec<Vec<f32>>, Failure> {
    clients::with_entry(client, |e| {
        let m = *e.models.get(&model).ok_or_else(|| unknown_model(model))?;
        Ok(e.client.infer(m, texts)?)
    })
}

fn unknown_model(id: u32) -> Failure {
    Failure::new(RELA_ERR_UNKNOWN_HANDLE, format!("no model {id} was loaded through this client"))
}

/// Loads the repository model `name` and writes what the node reports to `*out_model`.
///
/// # Safety
/// `name` must be a NUL-terminated string; `out_model` must point to a writable `RelaModel`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_model_load(
    client: RelaClient,
    name: *const c_char,
    out_model: *mut RelaModel,
) -> i32 {
    run(|| {
        // SAFETY: the caller's contract.
        let (name, out) = unsafe { (text(name, "name")?, non_null_mut(out_model, "out_model")?) };
        *out = model_load(client, name)?;
        Ok(())
    })
}

/// Unloads a model (by [`RelaModel::id`]); the node frees and zeroes its memory when no
/// session holds it any more.
#[unsafe(no_mangle)]
pub extern "C" fn rela_model_unload(client: RelaClient, model: u32) -> i32 {
    run(|| model_unload(client, model))
}

/// Embeds `count` NUL-terminated UTF-8 texts with `model` and writes `count × dim` floats to
/// `out`, text after text (each vector L2-normalized). `out_len` is the room at `out`, in
/// floats; less than `count × dim` gives [`RELA_ERR_BUFFER_TOO_SMALL`] before anything is
/// sent.
///
/// # Safety
/// `texts` must point to `count` NUL-terminated strings; `out` to `out_len` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_embed(
    client: RelaClient,
    model: u32,
    texts: *const *const c_char,
    count: usize,
    out: *mut f32,
    out_len: usize,
) -> i32 {
    run(|| {
        let ptrs: &[*const c_char] = if count == 0 {
            &[]
        } else if texts.is_null() {
            return Err(Failure::invalid("texts is null"));
        } else {
            // SAFETY: the caller's contract; `texts` is non-null.
            unsafe { std::slice::from_raw_parts(texts, count) }
        };
        let texts = ptrs
            .iter()
            .enumerate()
            // SAFETY: the caller's contract, for each string.
            .map(|(i, p)| unsafe { text(*p, &format!("texts[{i}]")) })
            .collect::<Result<Vec<_>, _>>()?;
        let dim = clients::with_entry(client, |e| {
            e.models.get(&model).map(|m| m.dim as usize).ok_or_else(|| unknown_model(model))
        })?;
        let need = count.checked_mul(dim).filter(|n| *n <= out_len).ok_or_else(|| {
            Failure::new(
                RELA_ERR_BUFFER_TOO_SMALL,
                format!("out holds {out_len} floats; {count} texts × {dim} need more"),
            )
        })?;
        if need > 0 && out.is_null() {
            return Err(Failure::invalid("out is null"));
        }
        let vectors = embed(client, model, &texts)?;
        let out: &mut [f32] = if need == 0 {
            &mut []
        } else {
            // SAFETY: the caller's contract; `out` is non-null and holds `out_len >= need` floats.
            unsafe { std::slice::from_raw_parts_mut(out, need) }
        };
        let mut at = 0;
        for v in &vectors {
            let slot = out.get_mut(at..at + v.len()).ok_or_else(|| {
                Failure::new(
                    crate::status::RELA_ERR_PROTOCOL,
                    "the node answered with more floats than asked for",
                )
            })?;
            slot.copy_from_slice(v);
            at += v.len();
        }
        Ok(())
    })
}
