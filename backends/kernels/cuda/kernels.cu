// Built-in RELA kernels for CUDA, compiled at run time by NVRTC.
// Launch shapes and argument order are defined in backends/kernels/src/lib.rs.

extern "C" __global__ void rela_binary(const float* a, const float* b, float* out, unsigned int n, unsigned int op) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = op == 0 ? a[i] + b[i] : a[i] * b[i];
    }
}

extern "C" __global__ void rela_scale(const float* x, float* out, unsigned int n, float alpha) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = alpha * x[i];
    }
}

// out (M x N) = a (M x K) * b (K x N), row-major, 16x16 tiles in shared memory.
extern "C" __global__ void rela_matmul(const float* a, const float* b, float* out, unsigned int m, unsigned int k, unsigned int n) {
    __shared__ float ta[16][16];
    __shared__ float tb[16][16];
    unsigned int col = blockIdx.x * 16 + threadIdx.x;
    unsigned int row = blockIdx.y * 16 + threadIdx.y;
    float acc = 0.0f;
    for (unsigned int t = 0; t < (k + 15) / 16; ++t) {
        unsigned int ka = t * 16 + threadIdx.x;
        unsigned int kb = t * 16 + threadIdx.y;
        ta[threadIdx.y][threadIdx.x] = (row < m && ka < k) ? a[(unsigned long long)row * k + ka] : 0.0f;
        tb[threadIdx.y][threadIdx.x] = (kb < k && col < n) ? b[(unsigned long long)kb * n + col] : 0.0f;
        __syncthreads();
        for (unsigned int i = 0; i < 16; ++i) {
            acc += ta[threadIdx.y][i] * tb[i][threadIdx.x];
        }
        __syncthreads();
    }
    if (row < m && col < n) {
        out[(unsigned long long)row * n + col] = acc;
    }
}

// ---- Model kernels. Launch shapes: rela_kernels::Launch (grids are folded: the block index is
// g = blockIdx.y * gridDim.x + blockIdx.x). Same algorithms and summation orders as the WGSL. ----

#define RELA_LOWEST (-3.4028235e38f)

__device__ __forceinline__ unsigned int rela_group() {
    return blockIdx.y * gridDim.x + blockIdx.x;
}

__device__ __forceinline__ unsigned long long rela_index_1d() {
    return (unsigned long long)rela_group() * blockDim.x + threadIdx.x;
}

// Sum of v over a 256-thread block (tree order); every thread gets the total.
__device__ float rela_block_sum256(float v, float* red) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int w = 128; w > 0; w >>= 1) {
        if (threadIdx.x < w) {
            red[threadIdx.x] += red[threadIdx.x + w];
        }
        __syncthreads();
    }
    float total = red[0];
    __syncthreads();
    return total;
}

// out[r * dim + c] = table[ids[r] * dim + c], or 0 when ids[r] >= vocab. 256-thread blocks over rows * dim.
extern "C" __global__ void rela_gather(const float* table, const unsigned int* ids, float* out, unsigned int vocab, unsigned int dim, unsigned int rows) {
    unsigned long long i = rela_index_1d();
    if (i >= (unsigned long long)rows * dim) {
        return;
    }
    unsigned long long r = i / dim;
    unsigned long long c = i - r * dim;
    unsigned int id = ids[r];
    out[i] = id < vocab ? table[(unsigned long long)id * dim + c] : 0.0f;
}

// Row-wise layer norm, one 256-thread block per row: mean, then biased variance of (x - mean).
extern "C" __global__ void rela_layernorm(const float* x, const float* gamma, const float* beta, float* out, unsigned int rows, unsigned int dim, float eps) {
    __shared__ float red[256];
    unsigned int r = rela_group();
    if (r >= rows) {
        return;
    }
    const float* xr = x + (unsigned long long)r * dim;
    float* yr = out + (unsigned long long)r * dim;
    float s = 0.0f;
    for (unsigned int c = threadIdx.x; c < dim; c += 256) {
        s += xr[c];
    }
    float mean = rela_block_sum256(s, red) / (float)dim;
    float q = 0.0f;
    for (unsigned int c = threadIdx.x; c < dim; c += 256) {
        float d = xr[c] - mean;
        q += d * d;
    }
    float variance = rela_block_sum256(q, red) / (float)dim;
    float inv = 1.0f / sqrtf(variance + eps);
    for (unsigned int c = threadIdx.x; c < dim; c += 256) {
        yr[c] = (xr[c] - mean) * inv * gamma[c] + beta[c];
    }
}

// out[i, j] = sum_t x[i, t] * w[j, t] + bias[j] (x m x k, w n x k). One 256-thread block per
// 64 x 64 output tile (column tiles fastest); each thread owns rows ty + 16 a, columns tx + 16 b.
extern "C" __global__ void rela_linear(const float* x, const float* w, const float* bias, float* out, unsigned int m, unsigned int k, unsigned int n) {
    __shared__ float xs[16][64];
    __shared__ float ws[16][64];
    unsigned int tiles_n = (n + 63) / 64;
    unsigned int g = rela_group();
    if (g >= tiles_n * ((m + 63) / 64)) {
        return;
    }
    unsigned int row0 = (g / tiles_n) * 64;
    unsigned int col0 = (g % tiles_n) * 64;
    unsigned int lid = threadIdx.x;
    unsigned int tx = lid % 16;
    unsigned int ty = lid / 16;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            acc[i][j] = 0.0f;
        }
    }
    for (unsigned int t0 = 0; t0 < k; t0 += 16) {
        for (unsigned int e = lid; e < 1024; e += 256) {
            unsigned int r = e / 16;
            unsigned int kk = e % 16;
            unsigned int t = t0 + kk;
            xs[kk][r] = (row0 + r < m && t < k) ? x[(unsigned long long)(row0 + r) * k + t] : 0.0f;
            ws[kk][r] = (col0 + r < n && t < k) ? w[(unsigned long long)(col0 + r) * k + t] : 0.0f;
        }
        __syncthreads();
        unsigned int steps = min(16u, k - t0);
        for (unsigned int kk = 0; kk < steps; ++kk) {
            float a[4];
            float b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = xs[kk][ty + 16 * i];
                b[i] = ws[kk][tx + 16 * i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    acc[i][j] += a[i] * b[j];
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        unsigned int r = row0 + ty + 16 * i;
        if (r < m) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                unsigned int c = col0 + tx + 16 * j;
                if (c < n) {
                    out[(unsigned long long)r * n + c] = acc[i][j] + bias[c];
                }
            }
        }
    }
}

// erfc(z), z >= 0, by Abramowitz-Stegun 7.1.26 (the expression of the Rust reference and WGSL).
__device__ float rela_erfc_as(float z) {
    float t = 1.0f / (1.0f + 0.3275911f * z);
    float poly = t * (0.2548296f + t * (-0.28449672f + t * (1.4214138f + t * (-1.4531521f + t * 1.0614054f))));
    return poly * expf(-z * z);
}

// Exact (erf) GELU; 256-thread blocks over n.
extern "C" __global__ void rela_gelu(const float* x, float* out, unsigned int n) {
    unsigned long long i = rela_index_1d();
    if (i < n) {
        float v = x[i];
        float e = rela_erfc_as(fabsf(v) * 0.70710677f);
        float c = v >= 0.0f ? 2.0f - e : e;
        out[i] = 0.5f * v * c;
    }
}

// Masked scaled dot-product attention; one 64-thread block per (batch, head, query), query
// fastest. scale = sqrt(head_dim), seq <= 512.
extern "C" __global__ void rela_attention(const float* q, const float* k, const float* v, const float* mask, float* out, unsigned int batch, unsigned int seq, unsigned int heads, unsigned int hd, float scale) {
    __shared__ float scores[512];
    __shared__ float red[64];
    unsigned int g = rela_group();
    if (g >= batch * heads * seq) {
        return;
    }
    unsigned int i = g % seq;
    unsigned int bh = g / seq;
    unsigned int h = bh % heads;
    unsigned int b = bh / heads;
    unsigned long long width = (unsigned long long)heads * hd;
    unsigned long long qbase = ((unsigned long long)b * seq + i) * width + (unsigned long long)h * hd;
    unsigned int lid = threadIdx.x;

    float local_max = RELA_LOWEST;
    for (unsigned int j = lid; j < seq; j += 64) {
        float s = 0.0f;
        if (mask[(unsigned long long)b * seq + j] != 0.0f) {
            unsigned long long kbase = ((unsigned long long)b * seq + j) * width + (unsigned long long)h * hd;
            float dot = 0.0f;
            for (unsigned int d = 0; d < hd; ++d) {
                dot += q[qbase + d] * k[kbase + d];
            }
            s = dot / scale;
            local_max = fmaxf(local_max, s);
        }
        scores[j] = s;
    }
    red[lid] = local_max;
    __syncthreads();
    for (unsigned int w = 32; w > 0; w >>= 1) {
        if (lid < w) {
            red[lid] = fmaxf(red[lid], red[lid + w]);
        }
        __syncthreads();
    }
    float mx = red[0];
    __syncthreads();

    float local_sum = 0.0f;
    for (unsigned int j = lid; j < seq; j += 64) {
        float e = 0.0f;
        if (mask[(unsigned long long)b * seq + j] != 0.0f) {
            e = expf(scores[j] - mx);
        }
        scores[j] = e;
        local_sum += e;
    }
    red[lid] = local_sum;
    __syncthreads();
    for (unsigned int w = 32; w > 0; w >>= 1) {
        if (lid < w) {
            red[lid] += red[lid + w];
        }
        __syncthreads();
    }
    float sum = red[0];

    for (unsigned int d = lid; d < hd; d += 64) {
        float acc = 0.0f;
        for (unsigned int j = 0; j < seq; ++j) {
            float pj = scores[j];
            if (pj != 0.0f) {
                acc += pj * v[((unsigned long long)b * seq + j) * width + (unsigned long long)h * hd + d];
            }
        }
        out[qbase + d] = sum > 0.0f ? acc / sum : 0.0f;
    }
}

// out[b * dim + c] = sum_s mask[b, s] x[(b * seq + s) * dim + c] / max(sum_s mask[b, s], 1e-9);
// 256-thread blocks over batch * dim.
extern "C" __global__ void rela_meanpool(const float* x, const float* mask, float* out, unsigned int batch, unsigned int seq, unsigned int dim) {
    unsigned long long i = rela_index_1d();
    if (i >= (unsigned long long)batch * dim) {
        return;
    }
    unsigned long long b = i / dim;
    unsigned long long c = i - b * dim;
    float acc = 0.0f;
    float weight = 0.0f;
    for (unsigned int s = 0; s < seq; ++s) {
        float w = mask[b * seq + s];
        weight += w;
        if (w != 0.0f) {
            acc += w * x[(b * seq + s) * dim + c];
        }
    }
    out[i] = acc / fmaxf(weight, 1e-9f);
}

// Row-wise L2 normalization, one 256-thread block per row: x / max(||x||, 1e-12).
extern "C" __global__ void rela_l2norm(const float* x, float* out, unsigned int rows, unsigned int dim) {
    __shared__ float red[256];
    unsigned int r = rela_group();
    if (r >= rows) {
        return;
    }
    const float* xr = x + (unsigned long long)r * dim;
    float* yr = out + (unsigned long long)r * dim;
    float s = 0.0f;
    for (unsigned int c = threadIdx.x; c < dim; c += 256) {
        float val = xr[c];
        s += val * val;
    }
    float denom = fmaxf(sqrtf(rela_block_sum256(s, red)), 1e-12f);
    for (unsigned int c = threadIdx.x; c < dim; c += 256) {
        yr[c] = xr[c] / denom;
    }
}

// ---- Text generation kernels (RMS_NORM ... ARGMAX): the WGSL kernels' algorithms, launched
// with the grids rela_kernels::Launch plans. 256-thread blocks unless a kernel says otherwise. ----

// Maximum of v over a 256-thread block (tree order); every thread gets it.
__device__ float rela_block_max256(float v, float* red) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int w = 128; w > 0; w >>= 1) {
        if (threadIdx.x < w) {
            red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + w]);
        }
        __syncthreads();
    }
    float total = red[0];
    __syncthreads();
    return total;
}

// RMSNorm, one block per row: s = 1 / sqrt(mean(x^2) + eps), out = (x * s) * w.
extern "C" __global__ void rela_rms_norm(const float* x, const float* w, float* out, unsigned int rows, unsigned int dim, float eps) {
    __shared__ float red[256];
    unsigned int r = rela_group();
    if (r >= rows) {
        return;
    }
    const float* xr = x + (unsigned long long)r * dim;
    float* yr = out + (unsigned long long)r * dim;
    float s = 0.0f;
    for (unsigned int c = threadIdx.x; c < dim; c += 256) {
        float v = xr[c];
        s += v * v;
    }
    float scale = 1.0f / sqrtf(rela_block_sum256(s, red) / (float)dim + eps);
    for (unsigned int c = threadIdx.x; c < dim; c += 256) {
        yr[c] = xr[c] * scale * w[c];
    }
}

// RoPE (llama.cpp's normal mode), one thread per output element over rows * heads * hd: pair
// (2i, 2i+1) turns by pos[r] * 2^(-2i / rope_dim * log2_base); columns from rope_dim on are
// copied. sincosf reduces any argument accurately (no fast math).
extern "C" __global__ void rela_rope(const float* x, const unsigned int* pos, float* out, unsigned int rows, unsigned int heads, unsigned int hd, unsigned int rope_dim, float log2_base) {
    unsigned long long e = rela_index_1d();
    unsigned long long width = (unsigned long long)heads * hd;
    if (e >= (unsigned long long)rows * width) {
        return;
    }
    unsigned long long r = e / width;
    unsigned int d = (unsigned int)((e - r * width) % hd);
    if (d >= rope_dim) {
        out[e] = x[e];
        return;
    }
    unsigned long long first = e - (d % 2);
    float a = x[first];
    float b = x[first + 1];
    float inv_freq = exp2f(-2.0f * (float)(d / 2) / (float)rope_dim * log2_base);
    float s, c;
    sincosf((float)pos[r] * inv_freq, &s, &c);
    out[e] = d % 2 == 0 ? a * c - b * s : a * s + b * c;
}

// out[i] = silu(gate[i]) * up[i].
extern "C" __global__ void rela_swiglu(const float* gate, const float* up, float* out, unsigned int n) {
    unsigned long long i = rela_index_1d();
    if (i < n) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// GGUF blocks (types are ggml ids: 0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, 12 Q4_K, 14 Q6_K), as
// rela_kernels::quant and quant.wgsl dequantize them.
__device__ float rela_half(const unsigned char* p) {
    unsigned int h = (unsigned int)p[0] | ((unsigned int)p[1] << 8);
    unsigned int sign = (h & 0x8000u) << 16;
    unsigned int e = (h >> 10) & 0x1Fu;
    unsigned int m = h & 0x3FFu;
    if (e == 0) {
        float v = (float)m * 5.9604645e-8f;
        return sign ? -v : v;
    }
    if (e == 31) {
        return __uint_as_float(sign | 0x7F800000u | (m << 13));
    }
    return __uint_as_float(sign | ((e + 112) << 23) | (m << 13));
}

__device__ unsigned int rela_block_elems(unsigned int ty) {
    return ty <= 1 ? 1 : (ty == 12 || ty == 14 ? 256 : 32);
}

__device__ unsigned int rela_block_bytes(unsigned int ty) {
    switch (ty) {
        case 0: return 4;
        case 1: return 2;
        case 2: return 18;
        case 3: return 20;
        case 8: return 34;
        case 12: return 144;
        default: return 210;
    }
}

// Weights 32 c .. 32 c + 31 of the row of k weights at `row` into w (zero past k).
__device__ void rela_q_chunk(unsigned int ty, const unsigned char* row, unsigned int c, unsigned int k, float* w) {
    switch (ty) {
        case 0:
            for (unsigned int t = 0; t < 32; ++t) {
                unsigned int e = 32 * c + t;
                w[t] = e < k ? __uint_as_float((unsigned int)row[4 * e] | ((unsigned int)row[4 * e + 1] << 8) | ((unsigned int)row[4 * e + 2] << 16) | ((unsigned int)row[4 * e + 3] << 24)) : 0.0f;
            }
            break;
        case 1:
            for (unsigned int t = 0; t < 32; ++t) {
                unsigned int e = 32 * c + t;
                w[t] = e < k ? rela_half(row + 2 * e) : 0.0f;
            }
            break;
        case 2: {
            const unsigned char* b = row + 18ull * c;
            float d = rela_half(b);
            for (unsigned int i = 0; i < 16; ++i) {
                unsigned int q = b[2 + i];
                w[i] = d * (float)((int)(q & 15) - 8);
                w[i + 16] = d * (float)((int)(q >> 4) - 8);
            }
            break;
        }
        case 3: {
            const unsigned char* b = row + 20ull * c;
            float d = rela_half(b);
            float m = rela_half(b + 2);
            for (unsigned int i = 0; i < 16; ++i) {
                unsigned int q = b[4 + i];
                w[i] = d * (float)(q & 15) + m;
                w[i + 16] = d * (float)(q >> 4) + m;
            }
            break;
        }
        case 8: {
            const unsigned char* b = row + 34ull * c;
            float d = rela_half(b);
            for (unsigned int t = 0; t < 32; ++t) {
                w[t] = (float)(signed char)b[2 + t] * d;
            }
            break;
        }
        case 12: {
            const unsigned char* b = row + 144ull * (c / 8);
            unsigned int j = c % 8;
            const unsigned char* q = b + 4;
            unsigned int sc, mn;
            if (j < 4) {
                sc = q[j] & 63;
                mn = q[j + 4] & 63;
            } else {
                sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
                mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
            }
            float d1 = rela_half(b) * (float)sc;
            float dm1 = rela_half(b + 2) * (float)mn;
            const unsigned char* qs = b + 16 + 32 * (j / 2);
            unsigned int shift = 4 * (j % 2);
            for (unsigned int l = 0; l < 32; ++l) {
                w[l] = d1 * (float)((qs[l] >> shift) & 15) - dm1;
            }
            break;
        }
        default: {
            const unsigned char* b = row + 210ull * (c / 8);
            unsigned int s = c % 8;
            unsigned int h = s / 4;
            unsigned int kk = s % 4;
            float d = rela_half(b + 208);
            for (unsigned int l = 0; l < 32; ++l) {
                unsigned int low = (b[64 * h + l + 32 * (kk % 2)] >> (4 * (kk / 2))) & 15;
                unsigned int high = (b[128 + 32 * h + l] >> (2 * kk)) & 3;
                int qv = (int)(low | (high << 4)) - 32;
                float scale = (float)(signed char)b[192 + 8 * h + l / 16 + 2 * kk];
                w[l] = (d * scale) * (float)qv;
            }
            break;
        }
    }
}

// Linear layer over GGUF blocks: out[i, j] = sum_t x[i, t] * W[j, t]. One 64-thread block per
// 4 x 4 output tile (column tiles fastest); threads split k into 32-weight chunks, then a tree
// sum in shared memory (4 KiB).
extern "C" __global__ void rela_q_linear(const float* x, const unsigned char* wq, float* out, unsigned int m, unsigned int k, unsigned int n, unsigned int ty) {
    __shared__ float red[16][64];
    unsigned int tiles_n = (n + 3) / 4;
    unsigned int g = rela_group();
    if (g >= tiles_n * ((m + 3) / 4)) {
        return;
    }
    unsigned int i0 = (g / tiles_n) * 4;
    unsigned int j0 = (g % tiles_n) * 4;
    unsigned long long row_bytes = (unsigned long long)(k / rela_block_elems(ty)) * rela_block_bytes(ty);
    unsigned int chunks = (k + 31) / 32;
    unsigned int tid = threadIdx.x;
    float acc[16];
    for (int a = 0; a < 16; ++a) {
        acc[a] = 0.0f;
    }
    float w[32];
    for (unsigned int ch = tid; ch < chunks; ch += 64) {
        // Rows and columns past the end of the output are skipped; their sums stay zero.
        for (unsigned int c = 0; c < min(4u, n - j0); ++c) {
            rela_q_chunk(ty, wq + (j0 + c) * row_bytes, ch, k, w);
            for (unsigned int r = 0; r < min(4u, m - i0); ++r) {
                const float* xr = x + (unsigned long long)(i0 + r) * k + 32ull * ch;
                float s = 0.0f;
                for (unsigned int t = 0; t < 32; ++t) {
                    if (32 * ch + t < k) {
                        s += xr[t] * w[t];
                    }
                }
                acc[r * 4 + c] += s;
            }
        }
    }
    for (int a = 0; a < 16; ++a) {
        red[a][tid] = acc[a];
    }
    __syncthreads();
    for (unsigned int half = 32; half > 0; half >>= 1) {
        if (tid < half) {
            for (int a = 0; a < 16; ++a) {
                red[a][tid] += red[a][tid + half];
            }
        }
        __syncthreads();
    }
    if (tid < 16) {
        unsigned int r = tid / 4;
        unsigned int c = tid % 4;
        if (i0 + r < m && j0 + c < n) {
            out[(unsigned long long)(i0 + r) * n + j0 + c] = red[tid][0];
        }
    }
}

// Embedding rows from GGUF blocks: one thread per 32-weight chunk of an output row (rows *
// ceil(dim / 32) threads); zeros for ids >= vocab.
extern "C" __global__ void rela_q_gather(const unsigned char* table, const unsigned int* ids, float* out, unsigned int vocab, unsigned int dim, unsigned int rows, unsigned int ty) {
    unsigned long long i = rela_index_1d();
    unsigned int chunks = (dim + 31) / 32;
    if (i >= (unsigned long long)rows * chunks) {
        return;
    }
    unsigned long long r = i / chunks;
    unsigned int ch = (unsigned int)(i - r * chunks);
    unsigned int id = ids[r];
    float w[32];
    if (id < vocab) {
        unsigned long long row_bytes = (unsigned long long)(dim / rela_block_elems(ty)) * rela_block_bytes(ty);
        rela_q_chunk(ty, table + id * row_bytes, ch, dim, w);
    } else {
        for (int t = 0; t < 32; ++t) {
            w[t] = 0.0f;
        }
    }
    for (unsigned int t = 0; t < 32; ++t) {
        unsigned int c = 32 * ch + t;
        if (c < dim) {
            out[r * dim + c] = w[t];
        }
    }
}

// Causal grouped-query attention over a KV cache: one 64-thread block per (token, head) unit,
// head fastest; keys in tiles of 256 with an online softmax; thread tid owns columns tid,
// tid + 64, tid + 128, tid + 192 of the head (hd <= 256). scale = sqrt(hd).
extern "C" __global__ void rela_causal_attention(const float* q, const float* k, const float* v, float* out, unsigned int tokens, unsigned int pos0, unsigned int heads, unsigned int kv_heads, unsigned int hd, float scale) {
    __shared__ float scores[256];
    unsigned int g = rela_group();
    if (g >= tokens * heads) {
        return;
    }
    unsigned int t = g / heads;
    unsigned int h = g % heads;
    unsigned long long kv_width = (unsigned long long)kv_heads * hd;
    unsigned long long kv_off = (unsigned long long)(h / (heads / kv_heads)) * hd;
    unsigned long long qbase = ((unsigned long long)t * heads + h) * hd;
    unsigned int keys = pos0 + t + 1;
    unsigned int tid = threadIdx.x;
    float mx = RELA_LOWEST;
    float sum = 0.0f;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (unsigned int j0 = 0; j0 < keys; j0 += 256) {
        unsigned int len = min(256u, keys - j0);
        for (unsigned int jj = tid; jj < len; jj += 64) {
            const float* kr = k + (j0 + jj) * kv_width + kv_off;
            float dot = 0.0f;
            for (unsigned int d = 0; d < hd; ++d) {
                dot += q[qbase + d] * kr[d];
            }
            scores[jj] = dot / scale;
        }
        __syncthreads();
        float tile_max = RELA_LOWEST;
        for (unsigned int jj = 0; jj < len; ++jj) {
            tile_max = fmaxf(tile_max, scores[jj]);
        }
        float new_max = fmaxf(mx, tile_max);
        float rescale = expf(mx - new_max);
        sum *= rescale;
        for (int a = 0; a < 4; ++a) {
            acc[a] *= rescale;
        }
        mx = new_max;
        for (unsigned int jj = 0; jj < len; ++jj) {
            float e = expf(scores[jj] - mx);
            sum += e;
            const float* vr = v + (j0 + jj) * kv_width + kv_off;
            for (unsigned int a = 0; a < 4; ++a) {
                unsigned int d = tid + 64 * a;
                if (d < hd) {
                    acc[a] += e * vr[d];
                }
            }
        }
        __syncthreads();
    }
    for (unsigned int a = 0; a < 4; ++a) {
        unsigned int d = tid + 64 * a;
        if (d < hd) {
            out[qbase + d] = acc[a] / sum;
        }
    }
}

// Row-wise softmax, one block per row: max, sum of exp(x - max) (tree reductions), then
// out = exp(x - max) / sum.
extern "C" __global__ void rela_softmax(const float* x, float* out, unsigned int rows, unsigned int dim) {
    __shared__ float red[256];
    unsigned int r = rela_group();
    if (r >= rows) {
        return;
    }
    const float* xr = x + (unsigned long long)r * dim;
    float* yr = out + (unsigned long long)r * dim;
    float mx = RELA_LOWEST;
    for (unsigned int c = threadIdx.x; c < dim; c += 256) {
        mx = fmaxf(mx, xr[c]);
    }
    float top = rela_block_max256(mx, red);
    float s = 0.0f;
    for (unsigned int c = threadIdx.x; c < dim; c += 256) {
        s += expf(xr[c] - top);
    }
    float inv = 1.0f / rela_block_sum256(s, red);
    for (unsigned int c = threadIdx.x; c < dim; c += 256) {
        yr[c] = expf(xr[c] - top) * inv;
    }
}

// Whether candidate (v, i) beats (w, j); 0xFFFFFFFF is no candidate.
__device__ bool rela_beats(float v, unsigned int i, float w, unsigned int j) {
    if (i == 0xFFFFFFFFu) {
        return false;
    }
    if (j == 0xFFFFFFFFu) {
        return true;
    }
    return v > w || (v == w && i < j);
}

// Row-wise argmax, one block per row: the first largest non-NaN element (lowest index on
// ties), 0 for a row of NaN. out holds u32 indices.
extern "C" __global__ void rela_argmax(const float* x, unsigned int* out, unsigned int rows, unsigned int dim) {
    __shared__ float best_v[256];
    __shared__ unsigned int best_i[256];
    unsigned int r = rela_group();
    if (r >= rows) {
        return;
    }
    const float* xr = x + (unsigned long long)r * dim;
    float bv = 0.0f;
    unsigned int bi = 0xFFFFFFFFu;
    for (unsigned int c = threadIdx.x; c < dim; c += 256) {
        float v = xr[c];
        // NaN (exponent all ones, mantissa non-zero) is never chosen.
        bool nan = (__float_as_uint(v) & 0x7FFFFFFFu) > 0x7F800000u;
        if (!nan && rela_beats(v, c, bv, bi)) {
            bv = v;
            bi = c;
        }
    }
    best_v[threadIdx.x] = bv;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (unsigned int w = 128; w > 0; w >>= 1) {
        unsigned int tid = threadIdx.x;
        if (tid < w && rela_beats(best_v[tid + w], best_i[tid + w], best_v[tid], best_i[tid])) {
            best_v[tid] = best_v[tid + w];
            best_i[tid] = best_i[tid + w];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[r] = best_i[0] == 0xFFFFFFFFu ? 0u : best_i[0];
    }
}
