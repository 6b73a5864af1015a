//! Dequantization against the `gguf` Python package, bit for bit (fixture made by
//! tests/fixtures/make_quant_fixtures.py), and the fused dot products against dequantize-then-dot.

use rela_llm::GgmlType;
use rela_llm::quant::{self, QuantError};

fn type_named(name: &str) -> GgmlType {
    (0..64)
        .filter_map(GgmlType::from_id)
        .find(|t| format!("{t:?}") == name)
        .unwrap_or_else(|| panic!("fixture names unknown type {name}"))
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

struct Case {
    ty: GgmlType,
    source: String,
    blocks: Vec<u8>,
    values: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let text = include_str!("fixtures/quant_fixtures.json");
    let doc: serde_json::Value = serde_json::from_str(text).expect("fixture JSON");
    doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            ty: type_named(c["type"].as_str().expect("type")),
            source: c["source"].as_str().expect("source").to_owned(),
            blocks: unhex(c["blocks_hex"].as_str().expect("blocks")),
            values: c["values_f32_bits"]
                .as_array()
                .expect("values")
                .iter()
                .map(|v| f32::from_bits(v.as_u64().expect("bits") as u32))
                .collect(),
        })
        .collect()
}

#[test]
fn fixture_covers_every_supported_type() {
    let cases = cases();
    for id in 0..64 {
        let Some(ty) = GgmlType::from_id(id) else { continue };
        if ty.is_supported() {
            assert!(cases.iter().any(|c| c.ty == ty), "no fixture case for {ty:?}");
        }
    }
}

#[test]
fn dequantize_matches_gguf_python_bit_for_bit() {
    for c in cases() {
        let mut out = vec![f32::NAN; c.values.len()];
        quant::dequantize(c.ty, &c.blocks, &mut out).expect("dequantize");
        for (i, (got, want)) in out.iter().zip(&c.values).enumerate() {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{:?} ({}) element {i}: got {got:e}, gguf gives {want:e}",
                c.ty,
                c.source
            );
        }
    }
}

/// A deterministic pseudo-random f32 vector in [-1, 1).
fn vector(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn dot_matches_dequantize_then_dot() {
    for (k, c) in cases().into_iter().enumerate() {
        let x = vector(c.values.len(), k as u64);
        let got = quant::dot(c.ty, &c.blocks, &x).expect("dot");
        let exact: f64 = c.values.iter().zip(&x).map(|(&w, &x)| f64::from(w) * f64::from(x)).sum();
        let scale: f64 = c.values.iter().zip(&x).map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs()).sum();
        if !exact.is_finite() {
            // F16/BF16 random bit patterns include infinities.
            assert!(!got.is_finite() || got.is_nan(), "{:?}: exact {exact}, got {got}", c.ty);
            continue;
        }
        let tol = 1e-5 * scale + 1e-30;
        assert!(
            (f64::from(got) - exact).abs() <= tol,
            "{:?} ({}): dot {got} vs dequantize-then-dot {exact} (tolerance {tol})",
            c.ty,
            c.source
        );
    }
}

#[test]
fn dot_of_a_row_prefix_is_the_dot_of_its_blocks() {
    // Rows of several blocks: splitting the row at a block boundary splits the sum.
    for c in cases() {
        let (be, bb) = c.ty.block();
        let n_blocks = c.blocks.len() / bb;
        if n_blocks < 2 {
            continue;
        }
        let x = vector(c.values.len(), 7);
        let whole = quant::dot(c.ty, &c.blocks, &x).expect("dot");
        let head = quant::dot(c.ty, &c.blocks[..bb], &x[..be]).expect("dot");
        let tail = quant::dot(c.ty, &c.blocks[bb..], &x[be..]).expect("dot");
        if whole.is_finite() {
            let tol = 1e-4 * (head.abs() + tail.abs()) + 1e-6;
            assert!((whole - (head + tail)).abs() <= tol, "{:?}: {whole} vs {head} + {tail}", c.ty);
        }
    }
}

#[test]
fn sizes_and_types_are_checked() {
    let mut out = [0f32; 32];
    assert_eq!(
        quant::dequantize(GgmlType::Q4_0, &[0u8; 17], &mut out),
        Err(QuantError::SizeMismatch { ty: GgmlType::Q4_0, bytes: 17, elements: 32 })
    );
    assert_eq!(
        quant::dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out[..31]),
        Err(QuantError::SizeMismatch { ty: GgmlType::Q4_0, bytes: 18, elements: 31 })
    );
    assert_eq!(quant::dot(GgmlType::Q5_0, &[0u8; 22], &out), Err(QuantError::Unsupported(GgmlType::Q5_0)));
    assert_eq!(quant::dequantize(GgmlType::Q6_K, &[], &mut []), Ok(()));
    assert_eq!(quant::dot(GgmlType::Q6_K, &[], &[]), Ok(0.0));
}
