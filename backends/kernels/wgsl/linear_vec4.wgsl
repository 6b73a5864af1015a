// Linear layer, k a multiple of 4: x and w bound as arrays of vec4 (a row is k / 4 of them),
// one load per step. The shared part follows (linear.wgsl).
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> p: Params;

// Elements 4 s .. 4 s + 3 of row `row` of x.
fn load_x(row: u32, s: u32) -> vec4<f32> {
    return x[row * (p.k / 4u) + s];
}

// Elements 4 s .. 4 s + 3 of row `col` of w.
fn load_w(col: u32, s: u32) -> vec4<f32> {
    return w[col * (p.k / 4u) + s];
}

