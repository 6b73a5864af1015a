// Row-wise L2 normalization, one 256-invocation workgroup per row (folded grid, p.m rows of
// p.n): out = x / max(sqrt(sum x^2), 1e-12), the sum a tree reduction.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> red: array<f32, 256>;

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
        let v = x[base + c];
        s = s + v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w = w >> 1u) {
        if (lid < w) {
            red[lid] = red[lid] + red[lid + w];
        }
        workgroupBarrier();
    }
    let denom = max(sqrt(red[0]), 1e-12);
    for (var c = lid; c < dim; c = c + 256u) {
        out[base + c] = x[base + c] / denom;
    }
}
