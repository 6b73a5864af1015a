// GGUF weight blocks read from raw bytes, shared by the Q_LINEAR and Q_GATHER kernels, which
// declare the binding `wq: array<u32>` (the weights' bytes, little-endian) and come first.
// The arithmetic is rela_kernels::quant's (llama.cpp's dequantize_row_*), in the same order.
// Types are ggml ids: 0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, 12 Q4_K, 14 Q6_K.

fn q_byte(at: u32) -> u32 {
    return (wq[at >> 2u] >> ((at & 3u) * 8u)) & 0xFFu;
}

// An IEEE half's bits as f32, exactly (bit operations, so subnormal halves are never flushed).
fn half_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1Fu;
    let m = h & 0x3FFu;
    if (e == 0u) {
        let v = f32(m) * 5.9604645e-8;
        return select(v, -v, sign != 0u);
    }
    if (e == 31u) {
        return bitcast<f32>(sign | 0x7F800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

fn q_half(at: u32) -> f32 {
    return half_to_f32(q_byte(at) | (q_byte(at + 1u) << 8u));
}

fn q_i8(at: u32) -> f32 {
    let b = i32(q_byte(at));
    return f32(select(b, b - 256, b >= 128));
}

fn q_block_elems(ty: u32) -> u32 {
    switch ty {
        case 0u, 1u: { return 1u; }
        case 12u, 14u: { return 256u; }
        default: { return 32u; }
    }
}

fn q_block_bytes(ty: u32) -> u32 {
    switch ty {
        case 0u: { return 4u; }
        case 1u: { return 2u; }
        case 2u: { return 18u; }
        case 3u: { return 20u; }
        case 8u: { return 34u; }
        case 12u: { return 144u; }
        default: { return 210u; }
    }
}

// Bytes of a row of k weights.
fn q_row_bytes(ty: u32, k: u32) -> u32 {
    return (k / q_block_elems(ty)) * q_block_bytes(ty);
}

// Q4_K's 6-bit scale (x) and min (y) of sub-block j from the 12 bytes at `at`.
fn q_scale_min_k4(at: u32, j: u32) -> vec2<u32> {
    if (j < 4u) {
        return vec2<u32>(q_byte(at + j) & 63u, q_byte(at + j + 4u) & 63u);
    }
    let hi = q_byte(at + j + 4u);
    return vec2<u32>((hi & 15u) | ((q_byte(at + j - 4u) >> 6u) << 4u), (hi >> 4u) | ((q_byte(at + j) >> 6u) << 4u));
}

// Weights 32 c .. 32 c + 31 of the row of k weights starting at byte `row` (zero past k).
fn q_chunk(ty: u32, row: u32, c: u32, k: u32) -> array<f32, 32> {
    var w: array<f32, 32>;
    switch ty {
        case 0u: {
            for (var t = 0u; t < 32u; t = t + 1u) {
                let e = 32u * c + t;
                if (e < k) {
                    w[t] = bitcast<f32>(wq[(row >> 2u) + e]);
                }
            }
        }
        case 1u: {
            for (var t = 0u; t < 32u; t = t + 1u) {
                let e = 32u * c + t;
                if (e < k) {
                    w[t] = q_half(row + 2u * e);
                }
            }
        }
        case 2u: {
            let b = row + 18u * c;
            let d = q_half(b);
            for (var i = 0u; i < 16u; i = i + 1u) {
                let q = q_byte(b + 2u + i);
                w[i] = d * f32(i32(q & 15u) - 8);
                w[i + 16u] = d * f32(i32(q >> 4u) - 8);
            }
        }
        case 3u: {
            let b = row + 20u * c;
            let d = q_half(b);
            let m = q_half(b + 2u);
            for (var i = 0u; i < 16u; i = i + 1u) {
                let q = q_byte(b + 4u + i);
                w[i] = d * f32(q & 15u) + m;
                w[i + 16u] = d * f32(q >> 4u) + m;
            }
        }
        case 8u: {
            let b = row + 34u * c;
            let d = q_half(b);
            for (var t = 0u; t < 32u; t = t + 1u) {
                w[t] = q_i8(b + 2u + t) * d;
            }
        }
        case 12u: {
            let b = row + 144u * (c / 8u);
            let j = c % 8u;
            let sm = q_scale_min_k4(b + 4u, j);
            let d1 = q_half(b) * f32(sm.x);
            let dm1 = q_half(b + 2u) * f32(sm.y);
            let qs = b + 16u + 32u * (j / 2u);
            let shift = 4u * (j % 2u);
            for (var l = 0u; l < 32u; l = l + 1u) {
                w[l] = d1 * f32((q_byte(qs + l) >> shift) & 15u) - dm1;
            }
        }
        default: {
            // Q6_K: chunk c % 8 is quarter kk of half h of its block.
            let b = row + 210u * (c / 8u);
            let s = c % 8u;
            let h = s / 4u;
            let kk = s % 4u;
            let d = q_half(b + 208u);
            for (var l = 0u; l < 32u; l = l + 1u) {
                let low = (q_byte(b + 64u * h + l + 32u * (kk % 2u)) >> (4u * (kk / 2u))) & 15u;
                let high = (q_byte(b + 128u + 32u * h + l) >> (2u * kk)) & 3u;
                let q = i32(low | (high << 4u)) - 32;
                let sc = q_i8(b + 192u + 8u * h + l / 16u + 2u * kk);
                w[l] = (d * sc) * f32(q);
            }
        }
    }
    return w;
}
