// Causal grouped-query attention over a KV cache. One 64-invocation workgroup per (token t,
// head h) unit, folded grid over tokens * heads units (head fastest). p.n = head_dim (<= 256),
// p.m = tokens, p.k = heads, p.batch = kv_heads, p.aux = pos0, p.alpha = sqrt(head_dim).
// q and out are tokens x (heads * head_dim); k and v hold rows of kv_heads * head_dim from
// position 0. Query t reads KV head h / (heads / kv_heads) at positions 0 ..= pos0 + t.
// Keys go in tiles of 256: the invocations split the tile's scores (dot products in order)
// into workgroup memory; then every invocation takes the tile's maximum, rescales its running
// sum and its accumulators by exp(old max - new max) (online softmax), and adds
// exp(s_j - max) and exp(s_j - max) v_j over the tile's keys in order for its own columns
// lid, lid + 64, lid + 128, lid + 192 of the head. out = accumulator / sum.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, aux: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 64u;
const TILE: u32 = 256u;
const LOWEST: f32 = -3.4028235e38;
var<workgroup> scores: array<f32, 256>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let heads = p.k;
    let g = wid.y * nwg.x + wid.x;
    if (g >= p.m * heads) {
        return;
    }
    let hd = p.n;
    let t = g / heads;
    let h = g % heads;
    let kv_width = p.batch * hd;
    let kv_off = (h / (heads / p.batch)) * hd;
    let qbase = t * heads * hd + h * hd;
    let keys = p.aux + t + 1u;
    var mx = LOWEST;
    var sum = 0.0;
    var acc = vec4<f32>(0.0);
    for (var j0 = 0u; j0 < keys; j0 = j0 + TILE) {
        let len = min(TILE, keys - j0);
        for (var jj = lid; jj < len; jj = jj + WG) {
            let kbase = (j0 + jj) * kv_width + kv_off;
            var dot = 0.0;
            for (var d = 0u; d < hd; d = d + 1u) {
                dot = dot + q[qbase + d] * k[kbase + d];
            }
            scores[jj] = dot / p.alpha;
        }
        workgroupBarrier();
        var tile_max = LOWEST;
        for (var jj = 0u; jj < len; jj = jj + 1u) {
            tile_max = max(tile_max, scores[jj]);
        }
        let new_max = max(mx, tile_max);
        let rescale = exp(mx - new_max);
        sum = sum * rescale;
        acc = acc * rescale;
        mx = new_max;
        for (var jj = 0u; jj < len; jj = jj + 1u) {
            let e = exp(scores[jj] - mx);
            sum = sum + e;
            let vb = (j0 + jj) * kv_width + kv_off;
            // Columns at or past head_dim read as zero and are never stored.
            let v0 = select(0.0, v[vb + lid], lid < hd);
            let v1 = select(0.0, v[vb + lid + 64u], lid + 64u < hd);
            let v2 = select(0.0, v[vb + lid + 128u], lid + 128u < hd);
            let v3 = select(0.0, v[vb + lid + 192u], lid + 192u < hd);
            acc = acc + e * vec4<f32>(v0, v1, v2, v3);
        }
        workgroupBarrier();
    }
    let o = acc / sum;
    if (lid < hd) {
        out[qbase + lid] = o.x;
    }
    if (lid + 64u < hd) {
        out[qbase + lid + 64u] = o.y;
    }
    if (lid + 128u < hd) {
        out[qbase + lid + 128u] = o.z;
    }
    if (lid + 192u < hd) {
        out[qbase + lid + 192u] = o.w;
    }
}
