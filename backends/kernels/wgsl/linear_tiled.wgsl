// Linear layer for GPUs: out[i, j] = sum_t x[i, t] * w[j, t] + bias[j]; x is m x k, w is n x k
// (p.m, p.k, p.n).
//
// Each workgroup of 16 x 16 invocations computes a 64 x 64 tile of out (folded grid over
// ceil(m / 64) * ceil(n / 64) tiles, column tiles fastest). k is walked in steps of 16: the
// step's 64 x 16 slices of x and of w are staged in workgroup memory (each invocation loads four
// elements of each, neighbouring invocations neighbouring elements of a row), then invocation
// (tx, ty) adds the products for its 4 x 4 outputs, rows ty + 16 r and columns tx + 16 c, so
// that a row of w in workgroup memory is read by 16 invocations at 16 different banks (rows
// padded to 17 floats). Each output sums its terms in order of t, then adds the bias.
//
// Wide workgroups and workgroup memory are what a discrete or integrated GPU wants; CPU Vulkan
// implementations (lavapipe) run linear.wgsl's 8-invocation blocks faster, and get those.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const TILE: u32 = 64u;
const STEP: u32 = 16u;
const PAD: u32 = 17u;
var<workgroup> xs: array<f32, 1088>; // TILE * PAD
var<workgroup> ws: array<f32, 1088>;

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tiles_n = (p.n + TILE - 1u) / TILE;
    let g = wid.y * nwg.x + wid.x;
    if (g >= tiles_n * ((p.m + TILE - 1u) / TILE)) {
        return;
    }
    let i0 = (g / tiles_n) * TILE;
    let j0 = (g % tiles_n) * TILE;
    let tx = lid3.x;
    let ty = lid3.y;
    var acc: array<array<f32, 4>, 4>;
    for (var r = 0u; r < 4u; r = r + 1u) {
        for (var c = 0u; c < 4u; c = c + 1u) {
            acc[r][c] = 0.0;
        }
    }
    for (var t0 = 0u; t0 < p.k; t0 = t0 + STEP) {
        // Stage x[i0 .. i0 + 64, t0 .. t0 + 16] and w[j0 .. j0 + 64, t0 .. t0 + 16], zero
        // outside the matrices.
        for (var q = 0u; q < 4u; q = q + 1u) {
            let e = lid + 256u * q;
            let row = e / STEP;
            let t = t0 + e % STEP;
            var xv = 0.0;
            if (i0 + row < p.m && t < p.k) {
                xv = x[(i0 + row) * p.k + t];
            }
            xs[row * PAD + e % STEP] = xv;
            var wv = 0.0;
            if (j0 + row < p.n && t < p.k) {
                wv = w[(j0 + row) * p.k + t];
            }
            ws[row * PAD + e % STEP] = wv;
        }
        workgroupBarrier();
        for (var s = 0u; s < STEP; s = s + 1u) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var r = 0u; r < 4u; r = r + 1u) {
                a[r] = xs[(ty + 16u * r) * PAD + s];
                b[r] = ws[(tx + 16u * r) * PAD + s];
            }
            for (var r = 0u; r < 4u; r = r + 1u) {
                for (var c = 0u; c < 4u; c = c + 1u) {
                    acc[r][c] = acc[r][c] + a[r] * b[c];
                }
            }
        }
        workgroupBarrier();
    }
    for (var c = 0u; c < 4u; c = c + 1u) {
        let col = j0 + tx + 16u * c;
        if (col < p.n) {
            let bv = bias[col];
            for (var r = 0u; r < 4u; r = r + 1u) {
                let row = i0 + ty + 16u * r;
                if (row < p.m) {
                    out[row * p.n + col] = acc[r][c] + bv;
                }
            }
        }
    }
}
