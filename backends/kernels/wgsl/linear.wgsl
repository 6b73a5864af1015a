// Linear layer, shared part: out[i, j] = sum_t x[i, t] * w[j, t] + bias[j]; x is m x k, w is
// n x k (p.m, p.k, p.n). Either linear_f32.wgsl or linear_vec4.wgsl comes first: it declares
// `p`, `x`, `w` and `load_x(row, s)` / `load_w(col, s)`, which return elements 4s .. 4s + 3 of
// a row of x or w (zero past k).
//
// Each workgroup of LINEAR_LANES invocations computes LINEAR_ROWS rows by
// LINEAR_LANES * LINEAR_COLS columns of out (folded grid over ceil(m / 8) * ceil(n / 128)
// blocks, column blocks fastest). All its invocations share the 8 rows, so their x loads are
// the same address (uniform); invocation `lid` owns columns j0 + 8 c for c = 0 .. 15, held as
// eight 4 x 4 accumulator matrices. Each step over k takes four elements: a 4 x 4 block of x
// (transposed) times a 4 x 4 block of w per accumulator, so an output sums four-element dot
// products in order of t, then adds the bias. No workgroup memory, no barriers: on CPU Vulkan
// implementations (lavapipe) this beats staged tiles at every m, and at a few rows per call it
// does no work for rows past m beyond the last partial block.
const LINEAR_ROWS: u32 = 8u;
const LINEAR_LANES: u32 = 8u;
const LINEAR_COLS: u32 = 16u;

@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// Stores a[c][r] + bias to out[i + r, j + LINEAR_LANES * c] for the rows and columns in range.
fn put(a: mat4x4<f32>, i: u32, j: u32) {
    for (var c = 0u; c < 4u; c = c + 1u) {
        let col = j + LINEAR_LANES * c;
        if (col < p.n) {
            let b = bias[col];
            for (var r = 0u; r < 4u; r = r + 1u) {
                if (i + r < p.m) {
                    out[(i + r) * p.n + col] = a[c][r] + b;
                }
            }
        }
    }
}

@compute @workgroup_size(8)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let span = LINEAR_LANES * LINEAR_COLS;
    let tiles_n = (p.n + span - 1u) / span;
    let g = wid.y * nwg.x + wid.x;
    if (g >= tiles_n * ((p.m + LINEAR_ROWS - 1u) / LINEAR_ROWS)) {
        return;
    }
    let i0 = (g / tiles_n) * LINEAR_ROWS;
    let j0 = (g % tiles_n) * span + lid;
    // Rows and columns past the end load the last one instead; their sums are never stored.
    let last_r = p.m - 1u;
    let last_c = p.n - 1u;
    let r0 = min(i0, last_r);
    let r1 = min(i0 + 1u, last_r);
    let r2 = min(i0 + 2u, last_r);
    let r3 = min(i0 + 3u, last_r);
    let r4 = min(i0 + 4u, last_r);
    let r5 = min(i0 + 5u, last_r);
    let r6 = min(i0 + 6u, last_r);
    let r7 = min(i0 + 7u, last_r);
    var c: array<u32, 16>;
    for (var q = 0u; q < LINEAR_COLS; q = q + 1u) {
        c[q] = min(j0 + LINEAR_LANES * q, last_c);
    }
    // sRQ[cc][rr]: the sum for row i0 + 4 R + rr and column j0 + LINEAR_LANES * (4 Q + cc).
    var s00 = mat4x4<f32>();
    var s01 = mat4x4<f32>();
    var s02 = mat4x4<f32>();
    var s03 = mat4x4<f32>();
    var s10 = mat4x4<f32>();
    var s11 = mat4x4<f32>();
    var s12 = mat4x4<f32>();
    var s13 = mat4x4<f32>();
    // The bound also depends on arrayLength(&out), which is never 0 (every binding holds at
    // least 4 bytes): lavapipe (Mesa 22.3) specializes shaders on uniform values that bound
    // loops, and a variant that pays off for a short k is then recompiled on every dispatch.
    let steps = select((p.k + 3u) / 4u, 0u, arrayLength(&out) == 0u);
    for (var s = 0u; s < steps; s = s + 1u) {
        // Columns of xa, xb: elements 4 s + e of rows r0..r3, r4..r7; columns of wq: the
        // four elements of one w row. (xa * wq)[cc][rr] is then a four-element dot product.
        let xa = transpose(mat4x4<f32>(load_x(r0, s), load_x(r1, s), load_x(r2, s), load_x(r3, s)));
        let xb = transpose(mat4x4<f32>(load_x(r4, s), load_x(r5, s), load_x(r6, s), load_x(r7, s)));
        var wq = mat4x4<f32>(load_w(c[0], s), load_w(c[1], s), load_w(c[2], s), load_w(c[3], s));
        s00 = s00 + xa * wq;
        s10 = s10 + xb * wq;
        wq = mat4x4<f32>(load_w(c[4], s), load_w(c[5], s), load_w(c[6], s), load_w(c[7], s));
        s01 = s01 + xa * wq;
        s11 = s11 + xb * wq;
        wq = mat4x4<f32>(load_w(c[8], s), load_w(c[9], s), load_w(c[10], s), load_w(c[11], s));
        s02 = s02 + xa * wq;
        s12 = s12 + xb * wq;
        wq = mat4x4<f32>(load_w(c[12], s), load_w(c[13], s), load_w(c[14], s), load_w(c[15], s));
        s03 = s03 + xa * wq;
        s13 = s13 + xb * wq;
    }
    let q = 4u * LINEAR_LANES;
    put(s00, i0, j0);
    put(s01, i0, j0 + q);
    put(s02, i0, j0 + 2u * q);
    put(s03, i0, j0 + 3u * q);
    put(s10, i0 + 4u, j0);
    put(s11, i0 + 4u, j0 + q);
    put(s12, i0 + 4u, j0 + 2u * q);
    put(s13, i0 + 4u, j0 + 3u * q);
}
