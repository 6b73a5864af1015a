// Embedding rows from a quantized table: out[r, :] = dequant(row ids[r] of the table), zeros
// for ids[r] >= vocab. wq holds vocab rows of dim weights in GGUF blocks (p.batch = ggml type
// id); p.n = dim, p.m = rows, p.k = vocab. One invocation per 32-weight chunk of an output row
// (256-wide groups, grid_1d over rows * ceil(dim / 32)). quant.wgsl follows.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, aux: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> wq: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    let chunks = (p.n + 31u) / 32u;
    if (i >= p.m * chunks) {
        return;
    }
    let r = i / chunks;
    let ch = i - r * chunks;
    let id = ids[r];
    var w: array<f32, 32>;
    if (id < p.k) {
        w = q_chunk(p.batch, id * q_row_bytes(p.batch, p.n), ch, p.n);
    }
    for (var t = 0u; t < 32u; t = t + 1u) {
        let c = 32u * ch + t;
        if (c < p.n) {
            out[r * p.n + c] = w[t];
        }
    }
}
