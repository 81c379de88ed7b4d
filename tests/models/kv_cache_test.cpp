// KvCache's memory follows the slots' lengths: pages backed by provision, handed back by truncate
// and clear, a bound on the whole pool, ring layers backed whole; on the CPU the pages handed back
// are really gone (mincore), on CUDA the driver's free memory moves with them. And a model whose
// slots x context would need hundreds of GB runs in a pool of what its sequences use, with the
// same logits as a cache of a few slots.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <vector>

#include "common/test_data.hpp"
#include "format/gguf.hpp"
#include "models/f32_llama_model.hpp"
#include "models/kv_cache.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/runtime.hpp"
#include "compute/memory.hpp"
#endif

namespace twinfer {
namespace {

using compute::Device;
using compute::KvType;

// Whether the CPU page holding `p` is in memory.
bool resident(const void* p) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* start = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) / page * page);
    unsigned char in = 0;
    EXPECT_EQ(mincore(start, page, &in), 0);
    return in & 1;
}

TEST(KvCachePages, MemoryFollowsTheLengths) {
    const size_t page = compute::ReservedMemory::page_bytes(Device::CPU), width = 64;   // rows of 256 bytes
    const size_t rows_per_page = page / (width * sizeof(float));
    KvCache cache(Device::CPU, 3, 4, 4096, width, KvType::F32);
    EXPECT_EQ(cache.backed_bytes(), 0u);
    EXPECT_EQ(cache.slot_stride(0), 4096 * width) << "a table of whole pages";
    cache.provision(0, rows_per_page + 1);   // two pages a layer, keys and values
    EXPECT_EQ(cache.backed_bytes(), 3 * 2 * 2 * page);
    cache.commit(0, rows_per_page + 1);
    cache.provision(0, 1);                   // the same two pages
    EXPECT_EQ(cache.backed_bytes(), 3 * 2 * 2 * page);
    cache.provision(2, 1);
    EXPECT_EQ(cache.backed_bytes(), 3 * 2 * 3 * page);
    EXPECT_EQ(cache.length(2), 0u) << "provision does not commit";
    cache.trim();
    EXPECT_EQ(cache.backed_bytes(), 3 * 2 * 3 * page) << "a trim keeps what was provisioned for a pass";
    cache.commit(2, 1);
    cache.truncate(0, rows_per_page);        // one page a layer in use, two kept
    EXPECT_EQ(cache.backed_bytes(), 3 * 2 * 3 * page);
    cache.trim();
    EXPECT_EQ(cache.backed_bytes(), 3 * 2 * 2 * page);
    cache.clear(0);
    cache.trim();
    EXPECT_EQ(cache.backed_bytes(), 3 * 2 * page) << "slot 2's page a layer";
}

TEST(KvCachePages, PagesHandedBackLeaveMemory) {
    const size_t page = compute::ReservedMemory::page_bytes(Device::CPU), width = 64;
    const size_t rows_per_page = page / (width * sizeof(float));
    KvCache cache(Device::CPU, 2, 2, 1024, width, KvType::F32);
    cache.provision(1, 3 * rows_per_page);
    float* keys = cache.keys(1, 1).f32();
    float* values = cache.values(1, 1).f32();
    for (size_t i = 0; i < 3 * rows_per_page * width; ++i) keys[i] = values[i] = 1.0f + float(i);
    cache.commit(1, 3 * rows_per_page);
    ASSERT_TRUE(resident(keys + 2 * rows_per_page * width));
    cache.truncate(1, rows_per_page);
    EXPECT_TRUE(resident(keys + 2 * rows_per_page * width)) << "kept until a trim";
    cache.trim();
    EXPECT_TRUE(resident(keys)) << "the prefix's page is kept";
    EXPECT_EQ(keys[5], 6.0f);
    EXPECT_FALSE(resident(keys + rows_per_page * width));
    EXPECT_FALSE(resident(values + 2 * rows_per_page * width));
    cache.provision(1, rows_per_page);       // a page handed back and backed again reads as new memory
    EXPECT_EQ(keys[rows_per_page * width], 0.0f);
}

TEST(KvCachePages, TheBoundRefusesAndLeavesTheCacheAsItWas) {
    const size_t page = compute::ReservedMemory::page_bytes(Device::CPU), width = 64;
    const size_t rows_per_page = page / (width * sizeof(float));
    KvCache cache(Device::CPU, 2, 3, 2048, width, KvType::F32, {}, /*max_backed_bytes=*/2 * 5 * page);   // 5 pages a half
    cache.provision(0, 2 * rows_per_page);   // 2 layers x 2 pages
    cache.commit(0, 2 * rows_per_page);
    try {
        cache.provision(1, rows_per_page);   // 2 more pages: 6 > 5
        FAIL() << "expected compute::OutOfMemory";
    } catch (const compute::OutOfMemory& e) {
        EXPECT_NE(std::string(e.what()).find("KV cache's memory is used up"), std::string::npos) << e.what();
    }
    EXPECT_EQ(cache.backed_bytes(), 2 * 4 * page);
    EXPECT_EQ(cache.length(1), 0u);
    cache.truncate(0, rows_per_page);        // a page a layer no longer used: provision trims it
    cache.provision(1, rows_per_page);
    EXPECT_EQ(cache.backed_bytes(), 2 * 4 * page);
    EXPECT_EQ(cache.max_backed_bytes(), 2 * 5 * page);
}

TEST(KvCachePages, ARingLayerIsBackedWhole) {
    const size_t page = compute::ReservedMemory::page_bytes(Device::CPU), width = 64;
    const size_t rows_per_page = page / (width * sizeof(float));
    const size_t ring = 3 * rows_per_page;   // 2 x ring rows: 6 pages
    KvCache cache(Device::CPU, 2, 1, 64 * rows_per_page, width, KvType::F32, {ring, 0});
    cache.provision(0, 1);
    EXPECT_EQ(cache.backed_bytes(), 2 * (6 + 1) * page);
    cache.commit(0, 1);
    cache.clear(0);
    cache.trim();
    EXPECT_EQ(cache.backed_bytes(), 0u);
}

TEST(KvCachePages, Float16TablesAreWholePagesToo) {
    const size_t page = compute::ReservedMemory::page_bytes(Device::CPU);
    KvCache cache(Device::CPU, 1, 2, 100, 24, KvType::F16);   // 4,800 bytes a table: two pages
    EXPECT_EQ(cache.slot_stride(0) * 2 % page, 0u);
    EXPECT_EQ(cache.keys(0, 1).data, static_cast<char*>(cache.keys(0, 0).data) + 2 * page);
}

std::shared_ptr<const gguf::File> smollm2() {
    return std::make_shared<const gguf::File>(gguf::File::open(test::smollm2_path()));
}

// 2,048 slots of SmolLM2's 8,192 positions would be 773 GB of float32 rows; three sequences in
// slots far apart use a few MB and compute what they compute in a cache of three slots.
void many_slots_compute_as_few(Device device) {
    F32Options options;
    options.device = device;
    options.n_ctx = 8192;
    F32LlamaModel many = F32LlamaModel::load(smollm2(), options), few = F32LlamaModel::load(smollm2(), options);
    many.set_slot_count(2048);
    few.set_slot_count(3);
    ASSERT_GT(many.kv_cache_bytes(), size_t{700} << 30);
    const size_t slots[] = {0, 1000, 2047};
    std::vector<SlotToken> many_rows, few_rows;
    for (size_t s = 0; s < 3; ++s)
        for (size_t i = 0; i < 20 + 7 * s; ++i) {
            const Token token = Token((int(s) * 7919 + int(i) * 104729) % 40000 + 100);
            const bool last = i + 1 == 20 + 7 * s;
            many_rows.push_back({.slot = slots[s], .token = token, .logits = last, .products = RowProducts::Tiled});
            few_rows.push_back({.slot = s, .token = token, .logits = last, .products = RowProducts::Tiled});
        }
    for (int step = 0; step < 3; ++step) {
        const Logits a = many.forward_rows(many_rows), b = few.forward_rows(few_rows);
        ASSERT_EQ(a.values, b.values) << "step " << step;
        many_rows.clear(), few_rows.clear();
        for (size_t s = 0; s < 3; ++s) {
            const auto row = a.row(s);
            const Token next = Token(std::max_element(row.begin(), row.end()) - row.begin());
            many_rows.push_back({.slot = slots[s], .token = next, .logits = true, .products = RowProducts::Single});
            few_rows.push_back({.slot = s, .token = next, .logits = true, .products = RowProducts::Single});
        }
    }
    EXPECT_LT(many.kv_backed_bytes(), size_t{600} << 20) << "three short sequences' pages";
    EXPECT_EQ(many.kv_backed_bytes(), few.kv_backed_bytes());
}

TEST(KvCachePages, ManySlotsComputeAsFew) { many_slots_compute_as_few(Device::CPU); }

#ifdef TWINFER_WITH_CUDA
#define TWINFER_REQUIRE_GPU()                                                         \
    if (compute::cuda::device_count() == 0) GTEST_SKIP() << compute::cuda::describe_device()
#else
#define TWINFER_REQUIRE_GPU() GTEST_SKIP() << "built without the CUDA backend (TWINFER_CUDA=OFF)"
#endif

TEST(KvCachePagesCuda, ManySlotsComputeAsFew) {
    TWINFER_REQUIRE_GPU();
    many_slots_compute_as_few(Device::CUDA);
}

#ifdef TWINFER_WITH_CUDA
// The driver's free memory goes down by the pages backed and up again when they are handed back;
// what the device wrote into a page reads back.
TEST(KvCachePagesCuda, PagesComeAndGo) {
    TWINFER_REQUIRE_GPU();
    const size_t page = compute::ReservedMemory::page_bytes(Device::CUDA), width = 1024;   // rows of 4 KiB
    const size_t rows_per_page = page / (width * sizeof(float));
    KvCache cache(Device::CUDA, 4, 8, 64 * rows_per_page, width, KvType::F32);
    compute::Context ctx({.device = Device::CUDA, .n_threads = 0, .cpu_isa = std::nullopt});   // its stream and handles first: they take memory too
    const size_t free_before = compute::cuda::memory_info().free;
    cache.provision(3, 16 * rows_per_page);                // 4 layers x 16 pages x 2
    EXPECT_EQ(cache.backed_bytes(), 4 * 16 * 2 * page);
    const size_t free_backed = compute::cuda::memory_info().free;
    EXPECT_GE(free_before - free_backed, cache.backed_bytes());
    EXPECT_LT(free_before - free_backed, cache.backed_bytes() + (size_t{64} << 20));
    std::vector<float> rows(16 * rows_per_page * width);
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = float(i % 9973);
    compute::upload(ctx, cache.values(2, 3).f32(), rows.data(), rows.size() * sizeof(float));
    std::vector<float> back(rows.size());
    compute::download(ctx, back.data(), cache.values(2, 3).f32(), back.size() * sizeof(float));
    EXPECT_EQ(back, rows);
    cache.commit(3, 16 * rows_per_page);
    cache.truncate(3, 4 * rows_per_page);
    cache.trim();
    EXPECT_EQ(cache.backed_bytes(), 4 * 4 * 2 * page);
    compute::download(ctx, back.data(), cache.values(2, 3).f32(), 4 * rows_per_page * width * sizeof(float));
    EXPECT_TRUE(std::equal(back.begin(), back.begin() + std::ptrdiff_t(4 * rows_per_page * width), rows.begin()));
    EXPECT_GE(compute::cuda::memory_info().free, free_backed + 4 * 12 * 2 * page);
}
#endif

}  // namespace
}  // namespace twinfer
