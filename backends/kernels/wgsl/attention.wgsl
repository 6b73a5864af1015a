// Masked scaled dot-product attention. One 64-invocation workgroup per (batch b, head h,
// query i), folded grid over batch * heads * seq groups (query fastest, then head, then batch).
// p.n = head_dim, p.m = seq (<= 512), p.k = heads, p.batch = batch, p.alpha = sqrt(head_dim).
// q, k, v, out are (batch * seq) x (heads * head_dim) row-major; mask is batch * seq.
// 1. Invocations split the keys: s_j = (q_i . k_j) / alpha for unmasked keys (dot in order).
// 2. Tree-reduce the max, p_j = exp(s_j - max) (0 for masked keys), tree-reduce the sum.
// 3. Invocations split the head's columns: out = (sum_j p_j v_j, keys in order, p_j = 0
//    skipped) / sum; zeros when every key is masked.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const WG: u32 = 64u;
const LOWEST: f32 = -3.4028235e38;
var<workgroup> scores: array<f32, 512>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let seq = p.m;
    let heads = p.k;
    let hd = p.n;
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

    var local_max = LOWEST;
    for (var j = lid; j < seq; j = j + WG) {
        var s = 0.0;
        if (mask[b * seq + j] != 0.0) {
            let kbase = (b * seq + j) * width + h * hd;
            var dot = 0.0;
            for (var d = 0u; d < hd; d = d + 1u) {
                dot = dot + q[qbase + d] * k[kbase + d];
            }
            s = dot / p.alpha;
            local_max = max(local_max, s);
        }
        scores[j] = s;
    }
    red[lid] = local_max;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w = w >> 1u) {
        if (lid < w) {
            red[lid] = max(red[lid], red[lid + w]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();

    var local_sum = 0.0;
    for (var j = lid; j < seq; j = j + WG) {
        var e = 0.0;
        if (mask[b * seq + j] != 0.0) {
            e = exp(scores[j] - mx);
        }
        scores[j] = e;
        local_sum = local_sum + e;
    }
    red[lid] = local_sum;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w = w >> 1u) {
        if (lid < w) {
            red[lid] = red[lid] + red[lid + w];
        }
        workgroupBarrier();
    }
    let sum = red[0];

    for (var d = lid; d < hd; d = d + WG) {
        var acc = 0.0;
        for (var j = 0u; j < seq; j = j + 1u) {
            let pj = scores[j];
            if (pj != 0.0) {
                acc = acc + pj * v[(b * seq + j) * width + h * hd + d];
            }
        }
        var o = 0.0;
        if (sum > 0.0) {
            o = acc / sum;
        }
        out[qbase + d] = o;
    }
}
