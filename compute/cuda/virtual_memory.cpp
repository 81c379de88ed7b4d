// compute::ReservedMemory's CUDA pages: the driver's virtual memory management (cuMemAddressReserve,
// cuMemCreate, cuMemMap, cuMemSetAccess), reached through the runtime's entry-point lookup.
#include <cuda.h>
#include <cuda_runtime.h>

#include <string>

#include "compute/buffer.hpp"
#include "compute/cuda/runtime.hpp"

namespace twinfer::compute::cuda {
namespace {

// The driver calls this file makes, looked up once.
struct DriverCalls {
    decltype(&cuMemGetAllocationGranularity) granularity = nullptr;
    decltype(&cuMemAddressReserve) address_reserve = nullptr;
    decltype(&cuMemAddressFree) address_free = nullptr;
    decltype(&cuMemCreate) create = nullptr;
    decltype(&cuMemRelease) release = nullptr;
    decltype(&cuMemMap) map = nullptr;
    decltype(&cuMemUnmap) unmap = nullptr;
    decltype(&cuMemSetAccess) set_access = nullptr;
    decltype(&cuGetErrorString) error_string = nullptr;
};

template <class F> void look_up(const char* name, F& f) {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess || !p) {
        cudaGetLastError();
        throw Error(std::string("the CUDA driver lacks ") + name + " (virtual memory management, CUDA 10.2 and later)");
    }
    f = reinterpret_cast<F>(p);
}

const DriverCalls& driver() {
    static const DriverCalls calls = [] {
        DriverCalls c;
        look_up("cuMemGetAllocationGranularity", c.granularity);
        look_up("cuMemAddressReserve", c.address_reserve);
        look_up("cuMemAddressFree", c.address_free);
        look_up("cuMemCreate", c.create);
        look_up("cuMemRelease", c.release);
        look_up("cuMemMap", c.map);
        look_up("cuMemUnmap", c.unmap);
        look_up("cuMemSetAccess", c.set_access);
        look_up("cuGetErrorString", c.error_string);
        return c;
    }();
    return calls;
}

std::string describe(CUresult result) {
    const char* text = nullptr;
    if (driver().error_string(result, &text) != CUDA_SUCCESS || !text) return "CUDA driver error " + std::to_string(int(result));
    return text;
}

void check(const char* call, CUresult result) {
    if (result == CUDA_SUCCESS) return;
    if (result == CUDA_ERROR_OUT_OF_MEMORY) throw OutOfMemory(std::string(call) + ": out of GPU memory (" + describe(result) + ")");
    throw Error(std::string(call) + ": " + describe(result));
}

CUmemAllocationProp page_properties(int device) {
    CUmemAllocationProp prop{};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    return prop;
}

}  // namespace

int current_device() {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) {
        cudaGetLastError();
        throw Error("no usable CUDA GPU for the KV cache's pages");
    }
    return device;
}

size_t page_bytes() {
    const CUmemAllocationProp prop = page_properties(current_device());
    size_t granularity = 0;
    check("cuMemGetAllocationGranularity",
          driver().granularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    return granularity;
}

void* reserve_address_space(size_t bytes) {
    CUdeviceptr base = 0;
    check("cuMemAddressReserve", driver().address_reserve(&base, bytes, page_bytes(), 0, 0));
    return reinterpret_cast<void*>(base);
}

void free_address_space(void* base, size_t bytes) noexcept {
    if (base) driver().address_free(reinterpret_cast<CUdeviceptr>(base), bytes);
}

uint64_t map_page(void* at, size_t size, int device) {
    const CUmemAllocationProp prop = page_properties(device);
    CUmemGenericAllocationHandle handle = 0;
    check("cuMemCreate", driver().create(&handle, size, &prop, 0));
    const CUdeviceptr address = reinterpret_cast<CUdeviceptr>(at);
    if (const CUresult mapped = driver().map(address, size, 0, handle, 0); mapped != CUDA_SUCCESS) {
        driver().release(handle);
        check("cuMemMap", mapped);
    }
    CUmemAccessDesc access{};
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = device;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    if (const CUresult granted = driver().set_access(address, size, &access, 1); granted != CUDA_SUCCESS) {
        driver().unmap(address, size);
        driver().release(handle);
        check("cuMemSetAccess", granted);
    }
    return handle;
}

void wait_for_device(int device) noexcept {
    int current = 0;
    if (cudaGetDevice(&current) != cudaSuccess || (current != device && cudaSetDevice(device) != cudaSuccess)) {
        cudaGetLastError();
        return;
    }
    cudaDeviceSynchronize();
    if (current != device) cudaSetDevice(current);
}

void unmap_page(void* at, size_t size, uint64_t handle) noexcept {
    driver().unmap(reinterpret_cast<CUdeviceptr>(at), size);
    driver().release(handle);
}

}  // namespace twinfer::compute::cuda
