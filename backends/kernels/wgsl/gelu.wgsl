// Exact (erf) GELU: out[i] = 0.5 * x * (1 + erf(x / sqrt(2))) for i < p.n.
// erfc(|z|) by Abramowitz-Stegun 7.1.26, the same expression as the Rust reference:
// 1 + erf(z) is 2 - erfc(|z|) for x >= 0 and erfc(|z|) below.
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

fn erfc_as(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.2548296 + t * (-0.28449672 + t * (1.4214138 + t * (-1.4531521 + t * 1.0614054))));
    return poly * exp(-z * z);
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i < p.n) {
        let v = x[i];
        let e = erfc_as(abs(v) * 0.70710677);
        var c = e;
        if (v >= 0.0) {
            c = 2.0 - e;
        }
        out[i] = 0.5 * v * c;
    }
}
