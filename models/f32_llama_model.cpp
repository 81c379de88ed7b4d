#include "models/f32_llama_model.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "compute/elementwise.hpp"
#include "compute/norm.hpp"
#include "models/llama_layers.hpp"

namespace twinfer {
namespace {

// The activation buffers of one forward pass, by name; widths in F32LlamaModel::reserve_workspace.
// KCUR and VCUR hold a decode step's key and value rows until they are stored at its position.
// OUT: a rank's partial sums before their all-reduce.
enum Buffer { X, XN, Q, KCUR, VCUR, ATT, OUT, GATE, UP, LOGITS, N_BUFFERS };

}  // namespace

F32LlamaModel::F32LlamaModel(std::shared_ptr<const gguf::File> file, ModelConfig config, const F32Options& options,
                             std::optional<ModelPart> part)
    : F32ModelBase(std::move(file), std::move(config), options, std::move(part), LOGITS) {}

F32LlamaModel F32LlamaModel::load(std::shared_ptr<const gguf::File> file, const F32Options& options,
                                  std::optional<ModelPart> part) {
    if (!file) throw std::invalid_argument("F32LlamaModel::load: no file");
    ModelConfig c = ModelConfig::from_gguf(*file);
    if (c.architecture != Architecture::Llama)
        throw std::runtime_error(file->origin() + ": F32LlamaModel runs the Llama family, not '" + c.architecture_name + "'");

    if (!part)
        check_device_memory(options.device, *file,
                            KvCache::bytes(c.n_layer, 1, context_length(options, c.n_ctx_train), c.n_embd_kv(), options.cache_type));
    F32LlamaModel m(file, c, options, std::move(part));
    m.weights_ = LlamaWeights::load(m.ctx_, *file, m.config_, m.part_.shard);
    return m;
}

void F32LlamaModel::reserve_workspace(size_t n_tokens) {
    const RankShard& s = part_.shard;
    const size_t E = config_.n_embd, Fr = s.ff.size(), Vr = s.vocab.size(), QDr = s.heads.size() * config_.head_dim;
    const size_t KVDr = kv_width();
    const size_t widths[N_BUFFERS] = {E, E, QDr, KVDr, KVDr, QDr, reduce() ? E : 0, Fr, Fr, Vr};
    workspace_.reserve(options_.device, n_tokens, widths);
}

// The pass is llama_layers.cpp's, over this part's shard: a sequence's T tokens as one run of
// this model's slot.
void F32LlamaModel::enqueue_forward(const int32_t* ids, size_t T, size_t p0, const int32_t* device_position,
                                    size_t n_out) {
    enqueue_pass(sequence_batch(ids, slot_, T, p0, n_out), device_position);
}

void F32LlamaModel::enqueue_rows(const RowBatch& batch) { enqueue_pass(batch, nullptr); }

void F32LlamaModel::enqueue_pass(const RowBatch& batch, const int32_t* device_position) {
    const LlamaPassBuffers buffers{workspace_.buffer(X),    workspace_.buffer(XN),   workspace_.buffer(Q),
                                   workspace_.buffer(KCUR), workspace_.buffer(VCUR), workspace_.buffer(ATT),
                                   workspace_.buffer(OUT),  workspace_.buffer(GATE), workspace_.buffer(UP),
                                   workspace_.buffer(LOGITS)};
    enqueue_llama_pass(ctx_, config_, weights_, cache_, buffers, activations_for(options_), batch, device_position, reduce(),
                       observer_);
}

}  // namespace twinfer
