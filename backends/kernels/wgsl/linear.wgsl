// Linear layer: out[i, j] = sum_t x[i, t] * w[j, t] + bias[j]; x is m x k, w is n x k
// (p.m, p.k, p.n). Each workgroup computes a 64 x 64 output tile (folded grid over
// ceil(m / 64) * ceil(n / 64) tiles, column tiles fastest); each of its 256 invocations owns a
// 4 x 4 block (rows ty + 16 a, columns tx + 16 b). K is walked in 16-wide slices of x and w
// staged, transposed, in workgroup memory. Every output sums t = 0, 1, 2, ... in order, then
// adds the bias, like the Rust reference.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const BT: u32 = 64u;
const BK: u32 = 16u;
// xs[kk * 64 + r]: x[row0 + r, t0 + kk]; ws[kk * 64 + c]: w[col0 + c, t0 + kk].
var<workgroup> xs: array<f32, 1024>;
var<workgroup> ws: array<f32, 1024>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tiles_n = (p.n + BT - 1u) / BT;
    let tiles = tiles_n * ((p.m + BT - 1u) / BT);
    let g = wid.y * nwg.x + wid.x;
    if (g >= tiles) {
        return;
    }
    let row0 = (g / tiles_n) * BT;
    let col0 = (g % tiles_n) * BT;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var t0 = 0u; t0 < p.k; t0 = t0 + BK) {
        // 1024 elements of each slice, four per invocation, consecutive invocations reading
        // consecutive t (the contiguous dimension of both x and w).
        for (var e = lid; e < 1024u; e = e + 256u) {
            let r = e / BK;
            let kk = e % BK;
            let t = t0 + kk;
            var xv = 0.0;
            if (row0 + r < p.m && t < p.k) {
                xv = x[(row0 + r) * p.k + t];
            }
            xs[kk * BT + r] = xv;
            var wv = 0.0;
            if (col0 + r < p.n && t < p.k) {
                wv = w[(col0 + r) * p.k + t];
            }
            ws[kk * BT + r] = wv;
        }
        workgroupBarrier();
        let steps = min(BK, p.k - t0);
        for (var kk = 0u; kk < steps; kk = kk + 1u) {
            let a = vec4<f32>(xs[kk * BT + ty], xs[kk * BT + ty + 16u], xs[kk * BT + ty + 32u], xs[kk * BT + ty + 48u]);
            let b = vec4<f32>(ws[kk * BT + tx], ws[kk * BT + tx + 16u], ws[kk * BT + tx + 32u], ws[kk * BT + tx + 48u]);
            acc0 = acc0 + a.x * b;
            acc1 = acc1 + a.y * b;
            acc2 = acc2 + a.z * b;
            acc3 = acc3 + a.w * b;
        }
        workgroupBarrier();
    }
    var accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i = i + 1u) {
        let r = row0 + ty + 16u * i;
        if (r < p.m) {
            let acc = accs[i];
            for (var j = 0u; j < 4u; j = j + 1u) {
                let c = col0 + tx + 16u * j;
                if (c < p.n) {
                    out[r * p.n + c] = acc[j] + bias[c];
                }
            }
        }
    }
}
