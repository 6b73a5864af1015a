// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)), for i < p.n.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, aux: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> gate: array<f32>;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i < p.n) {
        let g = gate[i];
        out[i] = g / (1.0 + exp(-g)) * up[i];
    }
}
