#include "server/slot_table.hpp"

#include <algorithm>
#include <stdexcept>

namespace twinfer::server {

std::optional<SlotTable::Claim> SlotTable::claim(std::span<const Token> prompt) {
    std::optional<Claim> best;
    uint64_t best_used = 0;
    for (size_t i = 0; i < slots_.size(); ++i) {
        const Slot& s = slots_[i];
        if (s.busy) continue;
        const size_t common = std::mismatch(s.reusable.begin(), s.reusable.end(), prompt.begin(), prompt.end()).first - s.reusable.begin();
        const size_t reused = std::min(common, prompt.empty() ? 0 : prompt.size() - 1);
        if (!best || reused > best->reused || (reused == best->reused && s.last_used < best_used)) {
            best = Claim{i, reused};
            best_used = s.last_used;
        }
    }
    if (!best) return std::nullopt;
    Slot& s = slots_[best->slot];
    s.busy = true;
    s.last_used = ++clock_;
    s.reusable.resize(best->reused);
    s.reusable_closed = false;
    return best;
}

void SlotTable::release(size_t slot) {
    Slot& s = slots_.at(slot);
    if (!s.busy) throw std::logic_error("SlotTable::release: slot " + std::to_string(slot) + " is not busy");
    s.busy = false;
    s.last_used = ++clock_;
}

void SlotTable::append_reusable(size_t slot, std::span<const Token> tokens) {
    Slot& s = slots_.at(slot);
    if (!s.reusable_closed) s.reusable.insert(s.reusable.end(), tokens.begin(), tokens.end());
}

void SlotTable::forget(size_t slot) {
    Slot& s = slots_.at(slot);
    s.reusable.clear();
    s.reusable_closed = true;
}

size_t SlotTable::n_busy() const {
    return std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.busy; });
}

}  // namespace twinfer::server
