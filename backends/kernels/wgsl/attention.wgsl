// Masked scaled dot-product attention. One 8-invocation workgroup per (batch b, head h,
// query i), folded grid over batch * heads * seq groups (query fastest, then head, then batch).
// p.n = head_dim, p.m = seq (<= 512), p.k = heads, p.batch = batch, p.alpha = sqrt(head_dim).
// q, k, v, out are (batch * seq) x (heads * head_dim) row-major; mask is batch * seq.
// 1. Invocations split the keys: s_j = (q_i . k_j) / alpha for keys with mask != 0 (dot in
//    order), kept in workgroup memory.
// 2. After one barrier, every invocation takes the maximum of the scores in order, then sums
//    p_j = exp(s_j - max) over the unmasked keys in order and, where p_j != 0, p_j v_j for its
//    own columns d0 .. d0 + 3 of the head (d0 = 4 lid, 4 lid + 32, ...).
// 3. out = (sum_j p_j v_j) / (sum_j p_j); zeros when every key is masked.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const WG: u32 = 8u;
const LOWEST: f32 = -3.4028235e38;
var<workgroup> scores: array<f32, 512>;

@compute @workgroup_size(8)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // The loop bounds also depend on arrayLength(&out), which is never 0 (every binding holds at
    // least 4 bytes). Bounds from the uniform block alone let a driver specialize the shader on
    // their values: lavapipe (Mesa 22.3) then recompiles it on every dispatch when a head is
    // short (32 columns or fewer), which costs milliseconds per call.
    let opaque = arrayLength(&out) == 0u;
    let seq = select(p.m, 0u, opaque);
    let heads = p.k;
    let hd = select(p.n, 0u, opaque);
    let g = wid.y * nwg.x + wid.x;
    if (g >= p.batch * heads * seq) {
        return;
    }
    let i = g % seq;
    let bh = g / seq;
    let h = bh % heads;
    let b = bh / heads;
    let width = heads * hd;
    let qbase = (b * seq + i) * width + h * hd;

    for (var j = lid; j < seq; j = j + WG) {
        var s = LOWEST;
        if (mask[b * seq + j] != 0.0) {
            let kbase = (b * seq + j) * width + h * hd;
            var dot = 0.0;
            for (var d = 0u; d < hd; d = d + 1u) {
                dot = dot + q[qbase + d] * k[kbase + d];
            }
            s = dot / p.alpha;
        }
        scores[j] = s;
    }
    workgroupBarrier();

    var mx = LOWEST;
    for (var j = 0u; j < seq; j = j + 1u) {
        if (mask[b * seq + j] != 0.0) {
            mx = max(mx, scores[j]);
        }
    }
    // Every invocation runs the same number of column blocks; columns at or past hd read as
    // zero and are not stored.
    let blocks = (hd + 4u * WG - 1u) / (4u * WG);
    for (var block = 0u; block < blocks; block = block + 1u) {
        let d0 = 4u * (WG * block + lid);
        let live = vec4<bool>(d0 < hd, d0 + 1u < hd, d0 + 2u < hd, d0 + 3u < hd);
        var sum = 0.0;
        var acc = vec4<f32>(0.0);
        for (var j = 0u; j < seq; j = j + 1u) {
            if (mask[b * seq + j] != 0.0) {
                let e = exp(scores[j] - mx);
                sum = sum + e;
                if (e != 0.0) {
                    let vb = (b * seq + j) * width + h * hd + d0;
                    let vj = vec4<f32>(v[vb], v[vb + 1u], v[vb + 2u], v[vb + 3u]);
                    acc = acc + e * select(vec4<f32>(0.0), vj, live);
                }
            }
        }
        var o = vec4<f32>(0.0);
        if (sum > 0.0) {
            o = acc / sum;
        }
        if (live.x) {
            out[qbase + d0] = o.x;
        }
        if (live.y) {
            out[qbase + d0 + 1u] = o.y;
        }
        if (live.z) {
            out[qbase + d0 + 2u] = o.z;
        }
        if (live.w) {
            out[qbase + d0 + 3u] = o.w;
        }
    }
}
