// Linear layer over quantized weights: out[i, j] = sum_t x[i, t] * W[j, t]; x is m x k f32, wq
// holds n rows of k weights in GGUF blocks (p.batch = ggml type id), out is m x n.
// p.n = n, p.m = m, p.k = k. One 64-invocation workgroup per 4 x 4 output tile (folded grid over
// ceil(m / 4) * ceil(n / 4) tiles, column tiles fastest). Invocations split k into chunks of 32
// weights (chunk lid, lid + 64, ...); each dequantizes a chunk of each of the 4 rows of W once
// (quant.wgsl) and multiplies it with the 4 rows of x; the 16 partial sums are then added in a
// tree in workgroup memory. quant.wgsl follows.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, aux: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wq: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 64u;
const QR: u32 = 4u;
const QC: u32 = 4u;
var<workgroup> red: array<f32, 1024>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tiles_n = (p.n + QC - 1u) / QC;
    let g = wid.y * nwg.x + wid.x;
    if (g >= tiles_n * ((p.m + QR - 1u) / QR)) {
        return;
    }
    let i0 = (g / tiles_n) * QR;
    let j0 = (g % tiles_n) * QC;
    let row_bytes = q_row_bytes(p.batch, p.k);
    let chunks = (p.k + 31u) / 32u;
    var acc: array<f32, 16>;
    for (var ch = lid; ch < chunks; ch = ch + WG) {
        for (var c = 0u; c < QC; c = c + 1u) {
            // Columns past n repeat the last one; their sums are never stored.
            let j = min(j0 + c, p.n - 1u);
            let w = q_chunk(p.batch, j * row_bytes, ch, p.k);
            for (var r = 0u; r < QR; r = r + 1u) {
                let xb = min(i0 + r, p.m - 1u) * p.k + 32u * ch;
                var s = 0.0;
                for (var t = 0u; t < 32u; t = t + 1u) {
                    if (32u * ch + t < p.k) {
                        s = s + x[xb + t] * w[t];
                    }
                }
                acc[r * QC + c] = acc[r * QC + c] + s;
            }
        }
    }
    for (var a = 0u; a < 16u; a = a + 1u) {
        red[a * WG + lid] = acc[a];
    }
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half >> 1u) {
        if (lid < half) {
            for (var a = 0u; a < 16u; a = a + 1u) {
                red[a * WG + lid] = red[a * WG + lid] + red[a * WG + lid + half];
            }
        }
        workgroupBarrier();
    }
    if (lid < 16u) {
        let r = lid / QC;
        let c = lid % QC;
        if (i0 + r < p.m && j0 + c < p.n) {
            out[(i0 + r) * p.n + j0 + c] = red[lid * WG];
        }
    }
}
