// Row-wise argmax, one 64-invocation workgroup per row (folded grid, p.m rows of p.n): each
// invocation keeps the first largest non-NaN element of its columns lid, lid + 64, ..., then a
// tree keeps the larger value, or on equal values the lower index. NaN is never chosen; a row
// of NaN gives 0. out holds u32 indices.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, aux: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG: u32 = 64u;
const NONE: u32 = 0xFFFFFFFFu;
var<workgroup> best_v: array<f32, 64>;
var<workgroup> best_i: array<u32, 64>;

// Whether candidate (v, i) beats (w, j); NONE is no candidate.
fn beats(v: f32, i: u32, w: f32, j: u32) -> bool {
    if (i == NONE) {
        return false;
    }
    if (j == NONE) {
        return true;
    }
    return v > w || (v == w && i < j);
}

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
    let base = r * p.n;
    var bv = 0.0;
    var bi = NONE;
    for (var c = lid; c < p.n; c = c + WG) {
        let v = x[base + c];
        // NaN (exponent all ones, mantissa non-zero) is never chosen.
        let nan = (bitcast<u32>(v) & 0x7FFFFFFFu) > 0x7F800000u;
        if (!nan && beats(v, c, bv, bi)) {
            bv = v;
            bi = c;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half >> 1u) {
        if (lid < half && beats(best_v[lid + half], best_i[lid + half], best_v[lid], best_i[lid])) {
            best_v[lid] = best_v[lid + half];
            best_i[lid] = best_i[lid + half];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[r] = select(best_i[0], 0u, best_i[0] == NONE);
    }
}
