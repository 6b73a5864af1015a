// Row-wise layer norm, one 8-invocation workgroup per row (folded grid, p.m rows of p.n).
// Mean, then the biased variance of (x - mean) (two passes; each invocation sums the columns
// lid, lid + 8, ... in order, then every invocation adds the 8 partial sums in order), then
// out = (x - mean) * (1 / sqrt(var + eps)) * gamma + beta. p.alpha = eps. Few invocations
// and two barriers per pass keep it cheap on CPU Vulkan implementations (lavapipe).
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 8u;
var<workgroup> red: array<f32, 8>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < WG; i = i + 1u) {
        total = total + red[i];
    }
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(8)
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
    for (var c = lid; c < dim; c = c + WG) {
        s = s + x[base + c];
    }
    let mean = reduce_sum(lid, s) / f32(dim);
    var q = 0.0;
    for (var c = lid; c < dim; c = c + WG) {
        let d = x[base + c] - mean;
        q = q + d * d;
    }
    let variance = reduce_sum(lid, q) / f32(dim);
    let inv = 1.0 / sqrt(variance + p.alpha);
    for (var c = lid; c < dim; c = c + WG) {
        out[base + c] = (x[base + c] - mean) * inv * gamma[c] + beta[c];
    }
}
