// Row-wise layer norm, one 256-invocation workgroup per row (folded grid, p.m rows of p.n).
// Mean, then the biased variance of (x - mean) (two passes, tree reductions), then
// out = (x - mean) * (1 / sqrt(var + eps)) * gamma + beta. p.alpha = eps.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> red: array<f32, 256>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w = w >> 1u) {
        if (lid < w) {
            red[lid] = red[lid] + red[lid + w];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.m) {
        return;
    }
    let dim = p.n;
    let base = r * dim;
    var s = 0.0;
    for (var c = lid; c < dim; c = c + 256u) {
        s = s + x[base + c];
    }
    let mean = reduce_sum(lid, s) / f32(dim);
    var q = 0.0;
    for (var c = lid; c < dim; c = c + 256u) {
        let d = x[base + c] - mean;
        q = q + d * d;
    }
    let variance = reduce_sum(lid, q) / f32(dim);
    let inv = 1.0 / sqrt(variance + p.alpha);
    for (var c = lid; c < dim; c = c + 256u) {
        out[base + c] = (x[base + c] - mean) * inv * gamma[c] + beta[c];
    }
}
