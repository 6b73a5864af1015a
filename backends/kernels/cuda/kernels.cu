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
