// Embedding gather: out[r * dim + c] = table[ids[r] * dim + c], or 0 when ids[r] >= vocab.
// p.n = dim, p.m = rows, p.k = vocab. One invocation per output element (rows * dim < 2^32).
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> table: array<f32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= p.m * p.n) {
        return;
    }
    let r = i / p.n;
    let c = i - r * p.n;
    let id = ids[r];
    var v = 0.0;
    if (id < p.k) {
        v = table[id * p.n + c];
    }
    out[i] = v;
}
