// Masked mean over tokens: out[b * dim + c] = sum_s mask[b, s] * x[(b * seq + s) * dim + c]
// / max(sum_s mask[b, s], 1e-9), summing s in order and skipping zero weights.
// p.n = dim, p.m = seq, p.batch = batch. One invocation per output element.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= p.batch * p.n) {
        return;
    }
    let b = i / p.n;
    let c = i - b * p.n;
    var acc = 0.0;
    var weight = 0.0;
    for (var s = 0u; s < p.m; s = s + 1u) {
        let w = mask[b * p.m + s];
        weight = weight + w;
        if (w != 0.0) {
            acc = acc + w * x[(b * p.m + s) * p.n + c];
        }
    }
    out[i] = acc / max(weight, 1e-9);
}
