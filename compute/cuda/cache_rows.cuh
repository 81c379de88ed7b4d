#pragma once
// Inside the CUDA backend: reading and writing a KV cache table's elements (compute::CacheRows),
// float32 or float16, for the attention kernels (attention.cu) and the kernels that store a decode
// step's K and V rows (rope.cu, matvec_int8.cu).
#include <cstddef>

#include <cuda_fp16.h>

#include "compute/cache_rows.hpp"

namespace twinfer::compute::cuda {

// A table as a kernel takes it: the address and whether its elements are float16.
struct DeviceCacheRows {
    void* data;
    bool half;
};
inline DeviceCacheRows device_rows(CacheRows rows) { return {rows.data, rows.type == KvType::F16}; }

// table[i] = x, rounded to nearest in a float16 table.
__device__ __forceinline__ void store_cached(DeviceCacheRows table, size_t i, float x) {
    if (table.half) static_cast<__half*>(table.data)[i] = __float2half_rn(x);
    else static_cast<float*>(table.data)[i] = x;
}

// An element of a float32 or float16 table read as float (the attention kernels' template argument).
__device__ __forceinline__ float cached_value(const float* p) { return __ldg(p); }
__device__ __forceinline__ float cached_value(const __half* p) { return __half2float(__ldg(p)); }

// Four consecutive elements (16-byte aligned for float32, 8-byte for float16).
__device__ __forceinline__ float4 cached_float4(const float* p) { return __ldg(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ float4 cached_float4(const __half* p) {
    const uint2 bits = __ldg(reinterpret_cast<const uint2*>(p));
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&bits.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&bits.y));
    return make_float4(a.x, a.y, b.x, b.y);
}

// Two consecutive elements (8-byte aligned for float32, 4-byte for float16).
__device__ __forceinline__ float2 cached_float2(const float* p) { return __ldg(reinterpret_cast<const float2*>(p)); }
__device__ __forceinline__ float2 cached_float2(const __half* p) {
    return __half22float2(__ldg(reinterpret_cast<const __half2*>(p)));
}

// N = 2 or 4 consecutive elements as floats (aligned to N elements).
template <int N, class KV> __device__ __forceinline__ void cached_values(const KV* p, float (&out)[N]) {
    static_assert(N == 2 || N == 4);
    if constexpr (N == 4) {
        const float4 v = cached_float4(p);
        out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
    } else {
        const float2 v = cached_float2(p);
        out[0] = v.x, out[1] = v.y;
    }
}

}  // namespace twinfer::compute::cuda
