//! The no_std dequantizers (`rela_kernels::quant`) against the `gguf` Python package, bit for bit,
//! on the generated blocks of rela-llm's fixture (hosts/llm/tests/fixtures/quant_fixtures.json,
//! made by make_quant_fixtures.py there): random quant bits, f16 scales of either sign including
//! zero and a subnormal, F16 values with subnormals and infinities.

use rela_core::backend::WeightType;
use rela_kernels::quant;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// The fixture's type names (ggml's) of the formats `WeightType` covers.
fn weight_type(name: &str) -> Option<WeightType> {
    Some(match name {
        "F32" => WeightType::F32,
        "F16" => WeightType::F16,
        "Q4_0" => WeightType::Q4_0,
        "Q4_1" => WeightType::Q4_1,
        "Q8_0" => WeightType::Q8_0,
        "Q4_K" => WeightType::Q4K,
        "Q6_K" => WeightType::Q6K,
        _ => return None,
    })
}

#[test]
fn dequantize_matches_gguf_python_bit_for_bit() {
    let text = include_str!("../../../hosts/llm/tests/fixtures/quant_fixtures.json");
    let doc: serde_json::Value = serde_json::from_str(text).expect("fixture JSON");
    let mut covered = Vec::new();
    for c in doc["cases"].as_array().expect("cases") {
        let name = c["type"].as_str().expect("type");
        let Some(wtype) = weight_type(name) else { continue };
        let blocks = unhex(c["blocks_hex"].as_str().expect("blocks"));
        let want: Vec<u32> = c["values_f32_bits"]
            .as_array()
            .expect("values")
            .iter()
            .map(|v| v.as_u64().expect("bits") as u32)
            .collect();
        assert_eq!(blocks.len() as u64, wtype.row_bytes(want.len() as u32).expect("whole blocks"), "{name}");
        let mut got = vec![f32::NAN; want.len()];
        quant::dequantize_row(wtype, &blocks, &mut got);
        for (i, (g, &w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w,
                "{name} ({}) element {i}: got {g:e}, gguf gives {:e}",
                c["source"],
                f32::from_bits(w)
            );
        }
        covered.push(wtype);
    }
    for wtype in WeightType::ALL {
        assert!(covered.contains(&wtype), "the fixture has no {wtype:?} case");
    }
}
