#pragma once
// A tensor-parallel rank's part of a model, for every F32 model: what one device alone owns
// (whole_shard), where a rank's partial sums are added up (RankReduce), and ShardPlacer, which
// cuts a shard's rows and columns out of the file's matrices and places them on the rank's
// device. models/tensor_parallel.hpp decides the cuts; one device is the shard that owns it all.
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "compute/buffer.hpp"
#include "compute/collective.hpp"
#include "compute/context.hpp"
#include "compute/matmul.hpp"
#include "models/model_config.hpp"
#include "models/tensor_parallel.hpp"

namespace twinfer {

// What one device alone owns: every head, unit and vocabulary row.
RankShard whole_shard(const ModelConfig& c);

// Where a rank's partial outputs are summed (tensor parallelism).
struct RankReduce {
    compute::Collective* collective;
    int rank;
};

// The part of a model one instance runs: all of it on one device, or a tensor-parallel rank's
// shard, whose attention-output and feed-forward products are partial sums until `reduce`.
struct ModelPart {
    RankShard shard;
    std::optional<RankReduce> reduce;   // none on one device
};

// Places a shard's pieces of the file's tensors on ctx's device, into `storage`: views into the
// GGUF mapping where a CPU can use the file's bytes as they are (whole rows), copies otherwise
// (column shards; everything on a GPU, laid out by compute::place_weights).
class ShardPlacer {
public:
    ShardPlacer(compute::Context& ctx, std::vector<compute::Buffer>& storage) : ctx_(ctx), storage_(storage) {}

    compute::WeightMatrix rows(const compute::WeightMatrix& w, IndexRange rows);
    // Throws std::invalid_argument naming the tensor when a cut falls inside a block of its type.
    compute::WeightMatrix columns(const compute::WeightMatrix& w, IndexRange cols, const std::string& name);
    // Rows `range` of each of the n matrices stacked in w (experts): [n * range.size(), cols].
    compute::WeightMatrix rows_of_each(const compute::WeightMatrix& w, size_t n, IndexRange range);
    // A float vector (or the part `range` of it) on the device; null when empty.
    const float* floats(const std::vector<float>& v, IndexRange range) {
        if (v.empty()) return nullptr;
        return reinterpret_cast<const float*>(place(v.data() + range.begin, range.size() * sizeof(float)));
    }
    const float* floats(const std::vector<float>& v) { return floats(v, {0, v.size()}); }

private:
    const std::byte* place(const void* host, size_t bytes);

    compute::Context& ctx_;
    std::vector<compute::Buffer>& storage_;
};

// Elements `range` of each of the `count` vectors of v (count x [v.size() / count]); empty stays
// empty. A shard's part of per-head or per-unit values: biases, sinks, experts' biases.
std::vector<float> part_of_each(std::span<const float> v, size_t count, IndexRange range);

}  // namespace twinfer
