// RMSNorm, one 64-invocation workgroup per row (folded grid, p.m rows of p.n): the mean square
// (a tree sum), s = 1 / sqrt(ms + eps), out = (x * s) * w. p.alpha = eps.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, aux: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
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
        let v = x[base + c];
        s = s + v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half >> 1u) {
        if (lid < half) {
            red[lid] = red[lid] + red[lid + half];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(red[0] / f32(dim) + p.alpha);
    for (var c = lid; c < dim; c = c + WG) {
        out[base + c] = x[base + c] * scale * w[c];
    }
}
