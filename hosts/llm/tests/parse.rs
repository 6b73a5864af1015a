//! The GGUF parser on synthetic files: round trips of every value type, refusals with the right
//! typed error for each kind of damage, and no panic on any truncation or single-byte change.

use rela_llm::gguf::{Array, GgmlType, Gguf, GgufBuilder, GgufError, Value};
use rela_llm::{LlamaConfig, ModelError};

fn all_values() -> GgufBuilder {
    GgufBuilder::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("u8", Value::U8(200))
        .kv("i8", Value::I8(-3))
        .kv("u16", Value::U16(60000))
        .kv("i16", Value::I16(-30000))
        .kv("u32", Value::U32(4_000_000_000))
        .kv("i32", Value::I32(-2_000_000_000))
        .kv("u64", Value::U64(u64::MAX))
        .kv("i64", Value::I64(i64::MIN))
        .kv("f32", Value::F32(1.5))
        .kv("f64", Value::F64(-2.25))
        .kv("bool", Value::Bool(true))
        .kv("string", Value::String("héllo wörld".into()))
        .kv("a.u8", Value::Array(Array::U8(vec![1, 2, 3])))
        .kv("a.i8", Value::Array(Array::I8(vec![-1, 2])))
        .kv("a.u16", Value::Array(Array::U16(vec![1, 65535])))
        .kv("a.i16", Value::Array(Array::I16(vec![-1])))
        .kv("a.u32", Value::Array(Array::U32(vec![7; 5])))
        .kv("a.i32", Value::Array(Array::I32(vec![-7, 3])))
        .kv("a.u64", Value::Array(Array::U64(vec![u64::MAX])))
        .kv("a.i64", Value::Array(Array::I64(vec![i64::MIN, 0])))
        .kv("a.f32", Value::Array(Array::F32(vec![0.5, -0.25])))
        .kv("a.f64", Value::Array(Array::F64(vec![1e300])))
        .kv("a.bool", Value::Array(Array::Bool(vec![true, false])))
        .kv("a.string", Value::Array(Array::String(vec!["a".into(), String::new(), "ü".into()])))
        .kv("a.empty", Value::Array(Array::F32(vec![])))
}

fn with_tensors(b: GgufBuilder) -> GgufBuilder {
    b.tensor("f32", &[3], GgmlType::F32, vec![0; 12])
        .tensor("q8", &[32, 2], GgmlType::Q8_0, vec![1; 68])
        .tensor("q4k", &[256], GgmlType::Q4_K, vec![2; 144])
}

#[test]
fn every_value_type_round_trips() {
    let b = with_tensors(all_values());
    let bytes = b.build();
    let g = Gguf::parse(&bytes).expect("parse");
    assert_eq!(g.version, 3);
    assert_eq!(g.metadata.len(), 26);
    assert_eq!(g.get("u8"), Some(&Value::U8(200)));
    assert_eq!(g.get("i64"), Some(&Value::I64(i64::MIN)));
    assert_eq!(g.get("string").and_then(Value::as_str), Some("héllo wörld"));
    assert_eq!(g.get("f64").and_then(Value::as_f64), Some(-2.25));
    assert_eq!(
        g.get("a.string"),
        Some(&Value::Array(Array::String(vec!["a".into(), String::new(), "ü".into()])))
    );
    assert_eq!(g.get("a.f64"), Some(&Value::Array(Array::F64(vec![1e300]))));
    assert_eq!(g.get("a.empty").and_then(Value::as_array).map(Array::len), Some(0));
    assert_eq!(g.tensors.len(), 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset % 32, 0);
    let q8 = g.tensor("q8").expect("q8");
    assert_eq!((q8.ty, q8.dims.clone(), q8.size, q8.n_elements()), (GgmlType::Q8_0, vec![32, 2], 68, 64));
    assert_eq!(&bytes[q8.offset as usize..][..68], &[1u8; 68][..]);
    let q4k = g.tensor("q4k").expect("q4k");
    assert_eq!(q4k.offset % 32, 0);
    assert_eq!(&bytes[q4k.offset as usize..][..144], &[2u8; 144][..]);
}

#[test]
fn alignment_is_honoured() {
    let bytes = with_tensors(GgufBuilder::new().kv("general.alignment", Value::U32(64))).build();
    let g = Gguf::parse(&bytes).expect("parse");
    assert_eq!(g.alignment, 64);
    assert!(g.tensors.iter().all(|t| t.offset % 64 == 0));
    for bad in [Value::U32(0), Value::U32(48), Value::U64(64)] {
        let bytes = GgufBuilder::new().kv("general.alignment", bad).build();
        assert_eq!(Gguf::parse(&bytes), Err(GgufError::BadAlignment));
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = with_tensors(all_values()).build();
    for len in 0..bytes.len() {
        // The last tensor's data ends the file: any shorter file leaves something out.
        match Gguf::parse(&bytes[..len]) {
            Err(GgufError::Truncated { .. })
            | Err(GgufError::CountTooLarge { .. })
            | Err(GgufError::TensorOutOfBounds { .. }) => {}
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
}

#[test]
fn single_byte_changes_never_panic() {
    let bytes = with_tensors(all_values()).build();
    let header_end = Gguf::parse(&bytes).expect("parse").data_offset as usize;
    let mut accepted = 0;
    for i in 0..header_end {
        for v in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] = v;
            if Gguf::parse(&b).is_ok() {
                accepted += 1;
            }
        }
    }
    assert!(accepted > 0);
}

fn put_u64_at(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn header_damage_is_named() {
    let good = GgufBuilder::new().kv("k", Value::U32(1)).build();
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(Gguf::parse(&b), Err(GgufError::BadMagic(*b"XGUF")));
    for v in [1u32, 4, 0x0300_0000] {
        let mut b = good.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert_eq!(Gguf::parse(&b), Err(GgufError::UnsupportedVersion(v)));
    }
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(Gguf::parse(&b), Err(GgufError::CountTooLarge { what: "tensor", count: u64::MAX }));
    let mut b = good.clone();
    put_u64_at(&mut b, 16, 1 << 40);
    assert_eq!(Gguf::parse(&b), Err(GgufError::CountTooLarge { what: "metadata", count: 1 << 40 }));
    // The key's length: more than the file holds.
    let mut b = good.clone();
    put_u64_at(&mut b, 24, 1000);
    assert_eq!(Gguf::parse(&b), Err(GgufError::CountTooLarge { what: "metadata key", count: 1000 }));
}

#[test]
fn huge_array_counts_are_refused_before_allocating() {
    for (item, min) in
        [(Array::U8(vec![1]), 1u64), (Array::U64(vec![1]), 8), (Array::String(vec!["x".into()]), 8)]
    {
        let mut b = GgufBuilder::new().kv("a", Value::Array(item)).build();
        // magic, version, counts (24) + key (8 + 1) + type (4) + item type (4) = 41: the count.
        let room = (b.len() - 49) as u64;
        put_u64_at(&mut b, 41, room / min + 1);
        assert_eq!(
            Gguf::parse(&b),
            Err(GgufError::CountTooLarge { what: "array", count: room / min + 1 }),
            "{min}-byte items"
        );
        put_u64_at(&mut b, 41, u64::MAX);
        assert!(matches!(Gguf::parse(&b), Err(GgufError::CountTooLarge { .. })));
    }
}

#[test]
fn value_damage_is_named() {
    let mut b = GgufBuilder::new().kv("k", Value::U32(1)).build();
    b[33..37].copy_from_slice(&13u32.to_le_bytes());
    assert_eq!(Gguf::parse(&b), Err(GgufError::BadValueType { key: "k".into(), ty: 13 }));

    let mut b = GgufBuilder::new().kv("k", Value::Array(Array::U32(vec![0; 4]))).build();
    b[37..41].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(Gguf::parse(&b), Err(GgufError::NestedArray { key: "k".into() }));

    let mut b = GgufBuilder::new().kv("k", Value::String("ab".into())).build();
    let n = b.len();
    b[n - 2] = 0xff;
    assert!(matches!(Gguf::parse(&b), Err(GgufError::InvalidUtf8 { .. })));

    let b = GgufBuilder::new().kv("k", Value::U8(1)).kv("k", Value::U8(2)).build();
    assert_eq!(Gguf::parse(&b), Err(GgufError::DuplicateKey("k".into())));
}

#[test]
fn tensor_damage_is_named() {
    let one = |name: &str, dims: &[u64], ty: GgmlType, n: usize| {
        GgufBuilder::new().tensor(name, dims, ty, vec![0; n]).build()
    };
    assert!(Gguf::parse(&one("t", &[32, 3], GgmlType::Q4_0, 54)).is_ok());
    // Rows that are not whole blocks, zero dimensions, overflowing element counts, five dims.
    for dims in [&[31u64, 2][..], &[32, 0], &[1 << 40, 1 << 40], &[32, 1, 1, 1, 1], &[]] {
        let b = one("t", dims, GgmlType::Q4_0, 0);
        assert!(
            matches!(Gguf::parse(&b), Err(GgufError::BadShape { .. })),
            "{dims:?}: {:?}",
            Gguf::parse(&b)
        );
    }
    // Data past the end of the file.
    let mut b = one("t", &[32, 3], GgmlType::Q4_0, 54);
    b.truncate(b.len() - 1);
    assert_eq!(Gguf::parse(&b), Err(GgufError::TensorOutOfBounds { name: "t".into() }));
    // An unknown type id, a misaligned offset, an offset that overflows.
    let b = one("t", &[32], GgmlType::Q4_0, 18);
    let tail = 24 + 8 + 1 + 4 + 8; // header, name, n_dims, one dim: then type, offset
    let mut bad_type = b.clone();
    bad_type[tail..tail + 4].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(Gguf::parse(&bad_type), Err(GgufError::UnknownTensorType { name: "t".into(), ty: 4 }));
    for off in [1u64, u64::MAX - 7] {
        let mut b = b.clone();
        put_u64_at(&mut b, tail + 4, off);
        assert_eq!(Gguf::parse(&b), Err(GgufError::TensorOutOfBounds { name: "t".into() }));
    }
    let twice = GgufBuilder::new()
        .tensor("t", &[4], GgmlType::F32, vec![0; 16])
        .tensor("t", &[4], GgmlType::F32, vec![0; 16])
        .build();
    assert_eq!(Gguf::parse(&twice), Err(GgufError::DuplicateTensor("t".into())));
}

/// A tiny llama: 2 layers, dim 64, 4 heads (2 KV heads), MLP 96, vocab 10.
fn tiny_llama(arch: &str, q_type: GgmlType) -> GgufBuilder {
    let f32s = |n: usize| vec![0u8; 4 * n];
    let q = |cols: u64, rows: u64, ty: GgmlType| {
        vec![0u8; ty.bytes_for(cols * rows).expect("whole blocks") as usize]
    };
    let mut b = GgufBuilder::new()
        .kv("general.architecture", Value::String(arch.into()))
        .kv(&format!("{arch}.block_count"), Value::U32(2))
        .kv(&format!("{arch}.embedding_length"), Value::U32(64))
        .kv(&format!("{arch}.feed_forward_length"), Value::U32(96))
        .kv(&format!("{arch}.attention.head_count"), Value::U32(4))
        .kv(&format!("{arch}.attention.head_count_kv"), Value::U32(2))
        .kv(&format!("{arch}.context_length"), Value::U32(128))
        .kv(&format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
        .kv(&format!("{arch}.rope.freq_base"), Value::F32(500000.0))
        .tensor("token_embd.weight", &[64, 10], GgmlType::F16, vec![0; 64 * 10 * 2])
        .tensor("output_norm.weight", &[64], GgmlType::F32, f32s(64));
    for i in 0..2 {
        for (name, cols, rows, ty) in [
            ("attn_q", 64, 64, q_type),
            ("attn_k", 64, 32, q_type),
            ("attn_v", 64, 32, GgmlType::Q8_0),
            ("attn_output", 64, 64, q_type),
            ("ffn_gate", 64, 96, q_type),
            ("ffn_up", 64, 96, GgmlType::Q4_1),
            ("ffn_down", 96, 64, GgmlType::Q8_0),
        ] {
            b = b.tensor(&format!("blk.{i}.{name}.weight"), &[cols, rows], ty, q(cols, rows, ty));
        }
        b = b.tensor(&format!("blk.{i}.attn_norm.weight"), &[64], GgmlType::F32, f32s(64)).tensor(
            &format!("blk.{i}.ffn_norm.weight"),
            &[64],
            GgmlType::F32,
            f32s(64),
        );
    }
    b
}

#[test]
fn llama_config_from_metadata() {
    let g = Gguf::parse(&tiny_llama("llama", GgmlType::Q4_0).build()).expect("parse");
    let c = LlamaConfig::from_gguf(&g).expect("config");
    assert_eq!(
        c,
        LlamaConfig {
            n_layers: 2,
            dim: 64,
            ffn_dim: 96,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            rope_dim: 16,
            rope_freq_base: 500000.0,
            rms_norm_eps: 1e-5,
            context_length: 128,
            vocab_size: 10,
            tied_embeddings: true,
        }
    );
}

#[test]
fn unsupported_architectures_and_types_are_refused_by_name() {
    for arch in ["qwen2", "gemma", "phi3"] {
        let g = Gguf::parse(&tiny_llama(arch, GgmlType::Q4_0).build()).expect("parse");
        assert_eq!(LlamaConfig::from_gguf(&g), Err(ModelError::UnsupportedArchitecture(arch.into())));
    }
    // Q5_0 parses (the table knows its size) but has no dequantization here.
    let g = Gguf::parse(&tiny_llama("llama", GgmlType::Q5_0).build()).expect("parse");
    let err = LlamaConfig::from_gguf(&g).expect_err("Q5_0");
    assert_eq!(
        err,
        ModelError::UnsupportedTensorType { name: "blk.0.attn_q.weight".into(), ty: GgmlType::Q5_0 }
    );
    assert!(err.to_string().contains("Q5_0"), "{err}");
}

#[test]
fn missing_and_misshapen_tensors_are_refused() {
    let bytes =
        tiny_llama("llama", GgmlType::Q8_0).kv("llama.attention.head_count_kv", Value::U32(4)).build();
    // Duplicate key first: head_count_kv appears twice.
    assert!(matches!(Gguf::parse(&bytes), Err(GgufError::DuplicateKey(_))));
    let b = GgufBuilder::new().kv("general.architecture", Value::String("llama".into()));
    let g = Gguf::parse(&b.build()).expect("parse");
    assert_eq!(LlamaConfig::from_gguf(&g), Err(ModelError::MissingKey("llama.block_count".into())));

    // K with the wrong number of rows: 4 KV heads claimed, 2 given.
    let mut b = tiny_llama("llama", GgmlType::Q8_0).build();
    let g = Gguf::parse(&b).expect("parse");
    let _ = &mut b;
    let mut g2 = g.clone();
    g2.metadata.insert("llama.attention.head_count_kv".into(), Value::U32(4));
    match LlamaConfig::from_gguf(&g2) {
        Err(ModelError::BadTensorShape { name, dims, expected }) => {
            assert_eq!(name, "blk.0.attn_k.weight");
            assert_eq!((dims, expected), (vec![64, 32], vec![64, 64]));
        }
        other => panic!("{other:?}"),
    }
    let mut g3 = g.clone();
    g3.tensors.retain(|t| t.name != "blk.1.ffn_down.weight");
    assert_eq!(LlamaConfig::from_gguf(&g3), Err(ModelError::MissingTensor("blk.1.ffn_down.weight".into())));
    let mut g4 = g.clone();
    g4.metadata.insert("llama.attention.head_count".into(), Value::I32(-4));
    assert!(matches!(LlamaConfig::from_gguf(&g4), Err(ModelError::BadValue { .. })));

    // A layer count the tensor table cannot hold is refused before any per-layer work (a
    // billion layers once built a list of nine billion expected shapes).
    let mut g5 = g.clone();
    g5.metadata.insert("llama.block_count".into(), Value::U64(1 << 30));
    match LlamaConfig::from_gguf(&g5) {
        Err(ModelError::BadValue { key, .. }) => assert_eq!(key, "llama.block_count"),
        other => panic!("{other:?}"),
    }
    let mut g6 = g.clone();
    g6.metadata.insert("llama.block_count".into(), Value::U32(3));
    assert!(matches!(LlamaConfig::from_gguf(&g6), Err(ModelError::BadValue { .. })));
    // Heads × head size past the address space is a typed error, not an overflow.
    let mut g7 = g;
    g7.metadata.insert("llama.attention.head_count".into(), Value::U64(1 << 40));
    g7.metadata.insert("llama.attention.head_count_kv".into(), Value::U64(1 << 40));
    g7.metadata.insert("llama.attention.key_length".into(), Value::U64(1 << 40));
    assert!(matches!(LlamaConfig::from_gguf(&g7), Err(ModelError::BadValue { .. })));
}
