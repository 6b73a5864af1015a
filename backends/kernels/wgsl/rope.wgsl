// RoPE, llama.cpp's normal mode: one invocation per output element (256-wide groups, grid_1d
// over rows * heads * head_dim). p.n = head_dim, p.m = rows, p.k = heads, p.batch = rope_dim,
// p.alpha = log2(base). Pair (2i, 2i+1) of a head of row r turns by
// theta = pos[r] * 2^(-2i / rope_dim * log2(base)); theta is reduced to [-pi, pi] (Cody-Waite:
// 2 pi in three parts, the first short enough that its multiples are exact) before sin and cos,
// which GPUs evaluate accurately only there. Dimensions from rope_dim on are copied.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, aux: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> pos: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.y * nwg.x * 256u + gid.x;
    let hd = p.n;
    let width = p.k * hd;
    if (e >= p.m * width) {
        return;
    }
    let r = e / width;
    let d = (e - r * width) % hd;
    if (d >= p.batch) {
        out[e] = x[e];
        return;
    }
    let i = d / 2u;
    let first = e - (d % 2u);
    let a = x[first];
    let b = x[first + 1u];
    let inv_freq = exp2(-2.0 * f32(i) / f32(p.batch) * p.alpha);
    let theta = f32(pos[r]) * inv_freq;
    let turns = round(theta * 0.15915494);
    let t = ((theta - turns * 6.28125) - turns * 0.0019353072) - turns * 1.0253132e-11;
    let c = cos(t);
    let s = sin(t);
    if (d % 2u == 0u) {
        out[e] = a * c - b * s;
    } else {
        out[e] = a * s + b * c;
    }
}
