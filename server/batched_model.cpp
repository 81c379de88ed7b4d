#include "server/batched_model.hpp"

#include <stdexcept>
#include <string>
#include <variant>

#include "format/mapped_file_guard.hpp"

namespace twinfer::server {
namespace {

template <class M>
concept HasSlots = requires(M& m, std::span<const SlotToken> rows) {
    m.set_slot_count(size_t{1});
    { m.run_rows(rows, RowProducts::Single) } -> std::same_as<RowOutputs>;
};

// Calls fn(model) for a model with slots; throws for the others (the constructor refused them).
template <class F>
auto with_slots(ModelBackend& backend, F&& fn) {
    using Result = decltype(fn(std::declval<F32LlamaModel&>()));
    return std::visit(
        [&](auto& m) -> Result {
            if constexpr (HasSlots<std::decay_t<decltype(m)>>) return fn(m);
            else throw std::logic_error("BatchedModel: a model without KV slots");
        },
        backend);
}

// The CPU models read their weights from the model file's mapping as they run: once the file was
// truncated or rewritten (format/mapped_file_guard.hpp), no pass can be trusted, now or later.
void require_unchanged_model_file() {
    if (const std::string problem = mapped_files_problem(); !problem.empty())
        throw std::runtime_error(problem + ": restart the server to load it again");
}

}  // namespace

BatchedModel::BatchedModel(ModelBackend& backend) : backend_(backend) {
    const bool has_slots = std::visit([](auto& m) { return HasSlots<std::decay_t<decltype(m)>>; }, backend_);
    if (!has_slots)
        throw std::runtime_error(backend_description(backend_) +
                                 " has no KV-cache slots to serve several sequences: twinfer serve runs the float32 models "
                                 "(--precision f32)");
}

void BatchedModel::set_slot_count(size_t n_slots) {
    with_slots(backend_, [&](auto& m) { m.set_slot_count(n_slots); });
}

size_t BatchedModel::n_ctx() const {
    return with_slots(backend_, [](auto& m) { return static_cast<size_t>(m.n_ctx()); });
}

size_t BatchedModel::n_vocab() const {
    return with_slots(backend_, [](auto& m) { return static_cast<size_t>(m.config().n_vocab); });
}

compute::Device BatchedModel::device() const {
    return with_slots(backend_, [](auto& m) { return m.options().device; });
}

size_t BatchedModel::slot_length(size_t slot) const {
    return with_slots(backend_, [&](auto& m) { return m.slot_length(slot); });
}

size_t BatchedModel::kv_backed_bytes() const {
    return with_slots(backend_, [](auto& m) { return m.kv_backed_bytes(); });
}

void BatchedModel::trim_kv() {
    with_slots(backend_, [](auto& m) { m.trim_cache(); });
}

size_t BatchedModel::reusable_prefix(size_t slot, size_t n) const {
    return with_slots(backend_, [&](auto& m) { return m.reusable_prefix(slot, n); });
}

size_t BatchedModel::max_run_rows() const {
    return with_slots(backend_, [](auto& m) { return m.max_run_rows(); });
}

void BatchedModel::truncate_slot(size_t slot, size_t n) {
    with_slots(backend_, [&](auto& m) { m.truncate_slot(slot, n); });
}

RowOutputs BatchedModel::run_rows(std::span<const SlotToken> rows, RowProducts logits_products) {
    require_unchanged_model_file();
    RowOutputs outputs = with_slots(backend_, [&](auto& m) { return m.run_rows(rows, logits_products); });
    require_unchanged_model_file();   // changed during the pass: these logits may have read zeros or new bytes
    return outputs;
}

}  // namespace twinfer::server
