#include "models/shards.hpp"

#include <cstring>
#include <stdexcept>

#include "compute/memory.hpp"
#include "format/ggml_type.hpp"

namespace twinfer {

RankShard whole_shard(const ModelConfig& c) {
    return {.rank = 0,
            .heads = {0, static_cast<size_t>(c.n_head)},
            .kv_heads = {0, static_cast<size_t>(c.n_head_kv)},
            .ff = {0, static_cast<size_t>(c.n_ff)},
            .expert_ff = {0, static_cast<size_t>(c.transformer.n_ff_expert)},
            .vocab = {0, static_cast<size_t>(c.n_vocab)}};
}

compute::WeightMatrix ShardPlacer::rows(const compute::WeightMatrix& w, IndexRange rows) {
    return compute::place_weights(ctx_, {w.type, rows.size(), w.cols, w.data + rows.begin * w.row_bytes()}, storage_);
}

compute::WeightMatrix ShardPlacer::columns(const compute::WeightMatrix& w, IndexRange cols, const std::string& name) {
    if (cols.begin == 0 && cols.end == w.cols) return rows(w, {0, w.rows});   // one device: the matrix as it is
    const GGMLTypeTraits& traits = type_traits(w.type);
    if (cols.begin % traits.block_size != 0 || cols.end % traits.block_size != 0)
        throw std::invalid_argument(name + ": columns [" + std::to_string(cols.begin) + ", " + std::to_string(cols.end) +
                                    ") do not start and end on the " + std::to_string(traits.block_size) +
                                    "-value blocks of " + std::string(type_name(w.type)));
    const size_t offset = cols.begin / traits.block_size * traits.type_size;
    const size_t shard_row_bytes = row_size_bytes(w.type, cols.size());
    std::vector<std::byte> gathered(w.rows * shard_row_bytes);
    for (size_t r = 0; r < w.rows; ++r)
        std::memcpy(gathered.data() + r * shard_row_bytes, w.data + r * w.row_bytes() + offset, shard_row_bytes);
    // On the CPU the gathered bytes need a home that outlives this call.
    if (ctx_.device() == compute::Device::CPU) return {w.type, w.rows, cols.size(), place(gathered.data(), gathered.size())};
    return compute::place_weights(ctx_, {w.type, w.rows, cols.size(), gathered.data()}, storage_);
}

compute::WeightMatrix ShardPlacer::rows_of_each(const compute::WeightMatrix& w, size_t n, IndexRange range) {
    const size_t each = w.rows / n;
    if (range.begin == 0 && range.end == each) return rows(w, {0, w.rows});
    const size_t bytes = range.size() * w.row_bytes();
    std::vector<std::byte> gathered(n * bytes);
    for (size_t e = 0; e < n; ++e)
        std::memcpy(gathered.data() + e * bytes, w.data + (e * each + range.begin) * w.row_bytes(), bytes);
    if (ctx_.device() == compute::Device::CPU) return {w.type, n * range.size(), w.cols, place(gathered.data(), gathered.size())};
    return compute::place_weights(ctx_, {w.type, n * range.size(), w.cols, gathered.data()}, storage_);
}

const std::byte* ShardPlacer::place(const void* host, size_t bytes) {
    compute::Buffer& buffer = storage_.emplace_back(ctx_.device(), bytes);
    compute::upload(ctx_, buffer.data(), host, bytes);
    return buffer.as<std::byte>();
}

std::vector<float> part_of_each(std::span<const float> v, size_t count, IndexRange range) {
    if (v.empty()) return {};
    const size_t each = v.size() / count;
    std::vector<float> part;
    part.reserve(count * range.size());
    for (size_t i = 0; i < count; ++i)
        part.insert(part.end(), v.begin() + std::ptrdiff_t(i * each + range.begin), v.begin() + std::ptrdiff_t(i * each + range.end));
    return part;
}

}  // namespace twinfer
