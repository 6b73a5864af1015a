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
