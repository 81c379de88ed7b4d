#pragma once
// Inside the CUDA backend: the pieces of the tensor-core kernels (flash_attention.cu for prompts,
// attention.cu's decoding kernel over float16 caches, matvec_int8.cu's batched decode rows):
// cp.async staging, ldmatrix, and mma.sync m16n8k16 with float16 operands and float32 sums or
// int8 operands and int32 sums.
#include <cstdint>

#include <cuda_fp16.h>

namespace twinfer::compute::cuda {

// Halves past each staged row of 64 or 128 halves: a row then starts 16 bytes past a multiple of
// 128, so the 8 rows that one phase of ldmatrix reads fall on different banks.
constexpr int row_pad = 8;

__device__ __forceinline__ uint32_t shared_address(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

// 16 bytes from global to shared memory, asynchronously; zeros where !valid (positions past the
// ones this block reads: masked, and zero rather than whatever is there, since 0 * NaN is NaN).
__device__ __forceinline__ void copy_16_async(void* to, const void* from, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(to)), "l"(from),
                 "r"(valid ? 16 : 0));
}
// 4 or 8 bytes the same way (through L1: cp.async.cg copies only 16).
template <int Bytes> __device__ __forceinline__ void copy_async(void* to, const void* from, bool valid) {
    static_assert(Bytes == 4 || Bytes == 8);
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(shared_address(to)), "l"(from), "n"(Bytes),
                 "r"(valid ? Bytes : 0));
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }
template <int Pending> __device__ __forceinline__ void wait_copies() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

// Four 8x8 float16 matrices from shared memory; lane l gives the address of row l % 8 of matrix
// l / 8. Trans: each matrix transposed (a column of V staged as rows of keys).
__device__ __forceinline__ void load_matrices(uint32_t (&r)[4], const __half* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}
__device__ __forceinline__ void load_matrices_transposed(uint32_t (&r)[4], const __half* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}

// c += a b: a 16x16 (row-major fragment), b 16x8 (column-major fragment), float32 c.
__device__ __forceinline__ void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a b over int8: a 16x16 (lane l holds 4 values of row l / 4 in a0 and of row l / 4 + 8 in a1,
// columns 4 * (l % 4) ..), b 16x8 (4 values of column l / 4, rows 4 * (l % 4) ..); c as
// mma_16x8x16's: rows l / 4 (c[0], c[1]) and l / 4 + 8 (c[2], c[3]), columns 2 * (l % 4) and + 1.
__device__ __forceinline__ void mma_16x8x16_s8(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(b));
}

__device__ __forceinline__ uint32_t half2_bits(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
}

}  // namespace twinfer::compute::cuda
