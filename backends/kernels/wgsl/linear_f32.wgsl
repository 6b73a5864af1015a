// Linear layer, any k: x and w as f32 arrays, four scalar loads per step, zero past k. The
// shared part follows (linear.wgsl).
struct Params { n: u32, m: u32, k: u32, alpha: f32, batch: u32, r0: u32, r1: u32, r2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

// Elements 4 s .. 4 s + 3 of row `row` of x, zero past k.
fn load_x(row: u32, s: u32) -> vec4<f32> {
    let a = row * p.k + 4u * s;
    let end = row * p.k + p.k;
    return vec4<f32>(
        x[a],
        select(0.0, x[a + 1u], a + 1u < end),
        select(0.0, x[a + 2u], a + 2u < end),
        select(0.0, x[a + 3u], a + 3u < end),
    );
}

// Elements 4 s .. 4 s + 3 of row `col` of w, zero past k.
fn load_w(col: u32, s: u32) -> vec4<f32> {
    let a = col * p.k + 4u * s;
    let end = col * p.k + p.k;
    return vec4<f32>(
        w[a],
        select(0.0, w[a + 1u], a + 1u < end),
        select(0.0, w[a + 2u], a + 2u < end),
        select(0.0, w[a + 3u], a + 3u < end),
    );
}

