// Row-major f32 matmul: out (M x N) = a (M x K) * b (K x N).
// 16x16 output tile per workgroup; K is walked in 16-wide tiles staged in workgroup memory.
// Accumulation order is k = 0, 1, 2, ... like the host reference.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const T: u32 = 16u;
var<workgroup> ta: array<f32, 256>;
var<workgroup> tb: array<f32, 256>;

@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    var acc = 0.0;
    let tiles = (p.k + T - 1u) / T;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let ka = t * T + lid.x;
        let kb = t * T + lid.y;
        var va = 0.0;
        if (row < p.m && ka < p.k) { va = a[row * p.k + ka]; }
        var vb = 0.0;
        if (kb < p.k && col < p.n) { vb = b[kb * p.n + col]; }
        ta[lid.y * T + lid.x] = va;
        tb[lid.y * T + lid.x] = vb;
        workgroupBarrier();
        for (var i = 0u; i < T; i = i + 1u) {
            acc = acc + ta[lid.y * T + i] * tb[i * T + lid.x];
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        out[row * p.n + col] = acc;
    }
}
