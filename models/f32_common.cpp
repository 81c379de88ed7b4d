#include "models/f32_common.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string_view>

#include "compute/attention.hpp"
#include "compute/elementwise.hpp"
#include "compute/matmul.hpp"
#include "compute/memory.hpp"
#include "format/quant.hpp"

namespace twinfer {
namespace {

std::string dims_string(const std::vector<uint64_t>& dims) {
    std::string s = "[";
    for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + "]";
}

Logits widened_logits(const float* host, size_t n_positions, size_t n_vocab) {
    Logits logits{n_vocab, n_positions, std::vector<double>(n_positions * n_vocab)};
    compute::widen_to_double(host, logits.values.size(), logits.values.data());
    return logits;
}

std::string mib(size_t bytes) { return std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB"; }

}  // namespace

const gguf::TensorInfo& F32WeightLoader::find(const std::string& name, std::vector<uint64_t> dims) const {
    const gguf::TensorInfo* tensor = file_.find_tensor(name);
    if (!tensor) throw std::runtime_error(file_.origin() + ": tensor " + name + " is missing");
    if (tensor->dims != dims)
        throw std::runtime_error(file_.origin() + ": tensor " + name + " has dims " + dims_string(tensor->dims) +
                                 ", the model's hyper-parameters need " + dims_string(dims));
    return *tensor;
}

DeviceFloats::DeviceFloats(compute::Context& ctx, std::span<const float> values)
    : buffer_(ctx.device(), values.size_bytes()), size_(values.size()) {
    compute::upload(ctx, buffer_.data(), values.data(), values.size_bytes());
}

compute::WeightMatrix F32WeightLoader::matrix(const std::string& name, size_t rows, size_t cols) const {
    try {
        return compute::WeightMatrix::from_tensor(find(name, {cols, rows}));
    } catch (const std::exception& e) {
        throw std::runtime_error(file_.origin() + ": loading " + name + ": " + e.what());
    }
}

std::vector<float> F32WeightLoader::vectors(const std::string& name, size_t n, size_t count) const {
    const gguf::TensorInfo& tensor = find(name, count == 1 ? std::vector<uint64_t>{n} : std::vector<uint64_t>{n, count});
    std::vector<float> values(n * count);
    try {
        dequantize(tensor.type, tensor.data, values);
    } catch (const std::exception& e) {
        throw std::runtime_error(file_.origin() + ": loading " + name + ": " + e.what());
    }
    return values;
}

std::vector<float> F32WeightLoader::optional_vector(const std::string& name, size_t n) const {
    return has(name) ? vector(name, n) : std::vector<float>{};
}

void check_device_memory(compute::Device device, const gguf::File& file, size_t kv_cache_bytes) {
    const std::optional<compute::DeviceMemory> memory = compute::device_memory(device);
    if (!memory) return;
    size_t weight_bytes = 0;
    for (const gguf::TensorInfo& t : file.tensors()) weight_bytes += t.data.size();
    if (weight_bytes + kv_cache_bytes <= memory->free) return;
    throw std::runtime_error(file.origin() + ": not enough " + std::string(compute::device_name(device)) +
                             " memory: the model needs " + mib(weight_bytes + kv_cache_bytes) + " (weights " +
                             mib(weight_bytes) + ", KV cache " + mib(kv_cache_bytes) + "), the device has " +
                             mib(memory->free) + " free of " + mib(memory->total) +
                             " (a smaller --ctx-size shrinks the KV cache)");
}

void F32Workspace::reserve(compute::Device device, size_t n_tokens, std::span<const size_t> widths) {
    if (n_tokens <= capacity_tokens_ && buffers_.size() == widths.size()) return;
    size_t row_bytes = 0;
    for (size_t width : widths) row_bytes += width * sizeof(float);
    if (max_bytes_ && n_tokens * row_bytes > max_bytes_)
        throw compute::OutOfMemory("the activations of a pass of " + std::to_string(n_tokens) + " tokens need " +
                                   std::to_string(n_tokens * row_bytes) + " bytes, past the limit of " +
                                   std::to_string(max_bytes_) + " (max_workspace_bytes)");
    buffers_.clear();
    capacity_tokens_ = 0;
    for (size_t width : widths) buffers_.emplace_back(device, n_tokens * width * sizeof(float));
    capacity_tokens_ = n_tokens;
}

std::vector<const void*> F32Workspace::addresses() const {
    std::vector<const void*> result;
    for (const compute::Buffer& b : buffers_) result.push_back(b.data());
    return result;
}

bool use_cuda_graph(const F32Options& options) {
    const char* env = std::getenv("TWINFER_CUDA_GRAPH");
    return options.device == compute::Device::CUDA && options.cuda_graph && !(env && std::string_view(env) == "0");
}

void F32DecodeStep::run(compute::Context& ctx, Token token, size_t position, bool use_graph,
                        const std::vector<const void*>& buffers, const std::function<void()>& enqueue) {
    if (io_.bytes() == 0) io_ = compute::Buffer(ctx.device(), 3 * sizeof(int32_t));
    const int32_t inputs[2] = {token, static_cast<int32_t>(position)};
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == compute::Device::CUDA) {
        // The inputs go through pinned memory by copies inside the step (the graph's first and last
        // nodes), so that the host neither waits for an upload nor queues copies of its own.
        if (!mailbox_.data()) mailbox_ = compute::cuda::PinnedHostMemory(3 * sizeof(int32_t));
        compute::cuda::synchronize(ctx);   // the last step's copies are done with the mailbox
        std::copy(std::begin(inputs), std::end(inputs), mailbox_.as<int32_t>());
        const auto step = [&] {
            compute::cuda::copy_async(ctx, io_.data(), mailbox_.data(), sizeof inputs);
            enqueue();
            compute::cuda::copy_async(ctx, mailbox_.as<int32_t>() + 2, next_token(), sizeof(int32_t));
        };
        if (!use_graph) return step();
        const auto addresses = [&] {
            std::vector<const void*> all = buffers;
            for (const void* p : compute::cuda::scratch_addresses(ctx)) all.push_back(p);
            return all;
        };
        if (graph_.captured() && addresses() == captured_addresses_) return graph_.replay(ctx);
        // This step runs directly, which also grows the scratch memory its ops need (it must not
        // grow while captured); then the same ops are recorded for the steps after it.
        step();
        graph_.begin_capture(ctx);
        try {
            step();
        } catch (...) {
            graph_.cancel_capture(ctx);
            throw;
        }
        graph_.end_capture(ctx);
        captured_addresses_ = addresses();
        return;
    }
#endif
    (void)use_graph;
    (void)buffers;
    compute::upload(ctx, io_.data(), inputs, sizeof inputs);
    enqueue();
}

Token F32DecodeStep::read_next_token(compute::Context& ctx) {
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == compute::Device::CUDA) {
        compute::cuda::synchronize(ctx);
        return mailbox_.as<int32_t>()[2];
    }
#endif
    int32_t next = 0;
    compute::download(ctx, &next, next_token(), sizeof next);
    return next;
}

const float* F32DecodeStep::logits_on_host(compute::Context& ctx, const float* logits, size_t count) {
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == compute::Device::CUDA) {
        if (logits_.bytes() < count * sizeof(float)) logits_ = compute::cuda::PinnedHostMemory(count * sizeof(float));
        compute::cuda::copy_async(ctx, logits_.data(), logits, count * sizeof(float));
        compute::cuda::synchronize(ctx);
        return logits_.as<float>();
    }
#endif
    host_logits_.resize(count);
    compute::download(ctx, host_logits_.data(), logits, count * sizeof(float));
    return host_logits_.data();
}

TopLogits F32DecodeStep::read_top(compute::Context& ctx, const void* pairs, size_t k) {
    const float* host = logits_on_host(ctx, static_cast<const float*>(pairs), 2 * k);   // 4-byte ids, then values
    TopLogits top{std::vector<Token>(k), std::vector<float>(host + k, host + 2 * k)};
    std::memcpy(top.ids.data(), host, k * sizeof(Token));
    return top;
}

Logits F32DecodeStep::read_logits(compute::Context& ctx, const float* logits, size_t n_vocab) {
    return widened_logits(logits_on_host(ctx, logits, n_vocab), 1, n_vocab);
}

void observe(compute::Context& ctx, const F32Observer& observer, std::string_view name, int layer,
             const float* values, size_t count) {
    if (!observer) return;
    std::vector<float> host(count);
    compute::download(ctx, host.data(), values, count * sizeof(float));
    observer(name, layer, host);
}

void check_token_ids(std::span<const Token> ids, size_t n_vocab) {
    if (ids.empty()) throw std::invalid_argument("forward: no tokens given");
    for (size_t i = 0; i < ids.size(); ++i)
        if (ids[i] < 0 || static_cast<size_t>(ids[i]) >= n_vocab)
            throw std::out_of_range("forward: token " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                                    " is outside the vocabulary of " + std::to_string(n_vocab));
}

const int32_t* upload_ids(compute::Context& ctx, std::span<const int32_t> ids, compute::Buffer& buffer) {
    if (buffer.bytes() < ids.size_bytes()) buffer = compute::Buffer(ctx.device(), ids.size_bytes());
    compute::upload(ctx, buffer.data(), ids.data(), ids.size_bytes());
    return buffer.as<int32_t>();
}

Logits download_logits(compute::Context& ctx, const float* values, size_t n_positions, size_t n_vocab) {
    std::vector<float> host(n_positions * n_vocab);
    compute::download(ctx, host.data(), values, host.size() * sizeof(float));
    return widened_logits(host.data(), n_positions, n_vocab);
}

RowOutputs outputs_from_logits(std::span<const SlotToken> rows, Logits all) {
    if (std::ranges::none_of(rows, &SlotToken::argmax_only)) return {std::move(all), {}};
    const size_t V = all.n_vocab;
    RowOutputs out{Logits{V, 0, {}}, {}};
    size_t i = 0;
    for (const SlotToken& row : rows) {
        if (!row.logits) continue;
        const auto values = all.row(i++);
        if (row.argmax_only) {
            out.argmax.push_back(Token(std::max_element(values.begin(), values.end()) - values.begin()));   // the first of equal maxima
        } else {
            out.logits.values.insert(out.logits.values.end(), values.begin(), values.end());
            ++out.logits.n_positions;
        }
    }
    return out;
}

Token argmax_of_last(const Logits& logits) {
    const auto row = logits.last();
    return static_cast<Token>(std::max_element(row.begin(), row.end()) - row.begin());
}

compute::Activations default_activations(compute::Device device) {
    return device == compute::Device::CPU ? compute::Activations::Int8x2 : compute::Activations::Int8;
}

compute::Activations activations_for(const F32Options& options) {
    const compute::Activations a = options.activations.value_or(default_activations(options.device));
    if (a == compute::Activations::Int8x2 && options.device != compute::Device::CPU)
        throw std::invalid_argument("int8x2 activations have CPU kernels only: choose int8 or f32 on " +
                                    std::string(compute::device_name(options.device)));
    return a;
}

void residual_project(compute::Context& ctx, const compute::WeightMatrix& w, const float* bias, const float* x,
                      size_t n_tokens, float* y, compute::Activations activations, const compute::RmsNorm* next_norm) {
    const compute::MatmulOutput output{w, y, /*accumulate=*/true};
    compute::matmul(ctx, std::span(&output, 1), x, n_tokens, activations, nullptr, bias ? nullptr : next_norm);
    if (bias) compute::add_bias(ctx, y, bias, n_tokens, w.rows);
}

void project_qkv(compute::Context& ctx, std::span<const compute::MatmulOutput, 3> qkv, const float* x, size_t T,
                 compute::Activations activations, const compute::RmsNorm& norm, const QkvBiases& biases, size_t n_head,
                 size_t n_head_kv, size_t head_dim, size_t p0, const int32_t* device_position, const compute::RopeParams& rope,
                 compute::CacheRows keys, compute::CacheRows values) {
    float *q = qkv[0].y, *k = qkv[1].y, *v = qkv[2].y;
    const size_t QD = n_head * head_dim, KVD = n_head_kv * head_dim;
    if (device_position && !biases.q && !biases.k && !biases.v)
        return compute::project_rope_store_at(ctx, qkv, x, activations, &norm, n_head, n_head_kv, head_dim, device_position,
                                              rope, keys, values);
    compute::matmul(ctx, std::span<const compute::MatmulOutput>(qkv), x, T, activations, &norm);
    if (biases.q) compute::add_bias(ctx, q, biases.q, T, QD);
    if (biases.k) compute::add_bias(ctx, k, biases.k, T, KVD);
    if (biases.v) compute::add_bias(ctx, v, biases.v, T, KVD);
    if (device_position)
        return compute::rope_store_at(ctx, q, n_head, k, v, n_head_kv, head_dim, device_position, rope, keys, values);
    compute::rope(ctx, q, T, QD, n_head, head_dim, p0, rope);
    compute::rope(ctx, k, T, KVD, n_head_kv, head_dim, p0, rope);
}

void copy_on_device(compute::Context& ctx, void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return;
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == compute::Device::CUDA) return compute::cuda::copy_async(ctx, dst, src, bytes);
#endif
    if (ctx.device() != compute::Device::CPU) compute::throw_backend_unavailable("copy_on_device", ctx.device());
    std::memcpy(dst, src, bytes);
}

void zero_on_device(compute::Context& ctx, void* dst, size_t bytes) {
    if (bytes == 0) return;
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == compute::Device::CUDA) return compute::cuda::zero_async(ctx, dst, bytes);
#endif
    if (ctx.device() != compute::Device::CPU) compute::throw_backend_unavailable("zero_on_device", ctx.device());
    std::memset(dst, 0, bytes);
}

size_t context_length(const F32Options& options, size_t n_ctx_train) {
    return options.n_ctx == 0 ? n_ctx_train : options.n_ctx;
}

// The products of a batched pass (enqueue_rows of F32LlamaModel and TransformerModel): rows [0, n_single) each as the
// decode step computes its token (compute::matmul_rows: one call, the weights read once for all of
// them), then the next n_tiled (padded) as one product, as a prompt's tokens are. outputs' y and x
// are the pass's row arrays; norm (if any) normalizes each row of x into its `out` first.
void fill_padding_rows(compute::Context& ctx, float* rows, const RowBatch& batch, size_t width) {
    for (size_t r = batch.n_rows; r < batch.n_padded; ++r)
        copy_on_device(ctx, rows + r * width, rows + (batch.n_rows - 1) * width, width * sizeof(float));
}

void attend_runs(compute::Context& ctx, KvCache& cache, size_t layer, const RowBatch& batch, float* q, float* k,
                 const float* v, const compute::RopeParams* rope, const compute::AttentionShape& shape, bool stored,
                 float* att) {
    const size_t H = shape.n_head, Hkv = shape.n_head_kv, D = shape.head_dim, QD = H * D, KVD = shape.kv_stride;
    const size_t ring = shape.ring;
    const compute::DecodeRows& group = batch.decode_rows;
    if (group.n_rows) {
        const compute::CacheRows keys = cache.keys(layer, 0), values = cache.values(layer, 0);
        const size_t stride = cache.slot_stride(layer);
        compute::decode_rows_rope_store(ctx, q, H, k, v, Hkv, D, group, rope, keys, values, stride, ring);
        compute::decode_rows_attention(ctx, q, keys, values, group, stride, shape, att);
    }
    for (const SlotRun& run : batch.runs) {
        if (run.first_row < group.n_rows) continue;                                    // in the group
        float *q_run = q + run.first_row * QD, *k_run = k + run.first_row * KVD;
        const float* v_run = v + run.first_row * KVD;
        const compute::CacheRows keys = cache.keys(layer, run.slot), values = cache.values(layer, run.slot);   // [rows, KVD]
        if (rope) {
            compute::rope(ctx, q_run, run.n_rows, QD, H, D, run.first_position, *rope);
            compute::rope(ctx, k_run, run.n_rows, KVD, Hkv, D, run.first_position, *rope);
        }
        if (ring) {
            compute::store_ring(ctx, k_run, run.n_rows, KVD, keys, run.first_position, nullptr, ring);
            compute::store_ring(ctx, v_run, run.n_rows, KVD, values, run.first_position, nullptr, ring);
        } else if (!stored) {
            compute::store_rows(ctx, k_run, run.n_rows, KVD, keys, run.first_position);
            compute::store_rows(ctx, v_run, run.n_rows, KVD, values, run.first_position);
        }
        compute::attention(ctx, q_run, keys, values, run.n_rows, run.first_position, shape, att + run.first_row * QD,
                           attention_rows(batch, run));                                // att: [n_rows, H, D]
    }
    fill_padding_rows(ctx, att, batch, QD);
}

void rows_matmul(compute::Context& ctx, std::span<const compute::MatmulOutput> outputs, const float* x, size_t n_single,
                 size_t n_tiled, compute::Activations activations, const compute::RmsNorm* norm, bool batched) {
    if (n_single) compute::matmul_rows(ctx, outputs, x, n_single, activations, norm);
    if (!n_tiled) return;
    const size_t cols = outputs[0].w.cols;
    std::vector<compute::MatmulOutput> tiled(outputs.begin(), outputs.end());
    for (compute::MatmulOutput& o : tiled) o.y += n_single * o.w.rows;
    const compute::RmsNorm tiled_norm = norm ? compute::RmsNorm{norm->weight, norm->eps, norm->out + n_single * cols}
                                             : compute::RmsNorm{};
    if (batched) compute::matmul_row_tiles(ctx, tiled, x + n_single * cols, n_tiled, activations, norm ? &tiled_norm : nullptr);
    else compute::matmul(ctx, tiled, x + n_single * cols, n_tiled, activations, norm ? &tiled_norm : nullptr);
}

}  // namespace twinfer
