#pragma once
// Which KV slot a new sequence gets, and what each slot holds for prefix reuse. Knows tokens, not
// requests or tensors.
//
// A slot remembers the tokens whose keys and values it holds *and that a fresh prompt would
// compute the same way* (its reusable prefix: positions computed as prompt rows; see
// Scheduler). A new sequence takes the free slot whose reusable prefix shares the most leading
// tokens with its prompt, token for token, and keeps exactly those positions: it can never see
// state computed for other content.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "models/inference.hpp"

namespace twinfer::server {

class SlotTable {
public:
    explicit SlotTable(size_t n_slots = 0) : slots_(n_slots) {}

    struct Claim {
        size_t slot = 0;
        size_t reused = 0;   // leading prompt tokens already in the slot (at most prompt.size() - 1,
                             // so that one token is fed and gives logits)
    };
    // The free slot to run `prompt` in, busy from now on; none when every slot is busy. Among
    // the free slots: the longest reusable match, then the least recently used.
    std::optional<Claim> claim(std::span<const Token> prompt);
    // The slot's sequence ended; `reusable` (what it holds that a later prompt may reuse) is kept.
    void release(size_t slot);
    // Appends tokens the slot computed as prompt rows to its reusable prefix, unless
    // end_reusable() was called since the claim: positions after one that is not reusable (a
    // decode row's) are not reusable either.
    void append_reusable(size_t slot, std::span<const Token> tokens);
    void end_reusable(size_t slot) { slots_.at(slot).reusable_closed = true; }
    // Forget everything the slot holds (its cache was cleared).
    void forget(size_t slot);

    size_t n_slots() const { return slots_.size(); }
    size_t n_busy() const;
    bool busy(size_t slot) const { return slots_.at(slot).busy; }
    const std::vector<Token>& reusable(size_t slot) const { return slots_.at(slot).reusable; }

private:
    struct Slot {
        bool busy = false;
        bool reusable_closed = false;
        uint64_t last_used = 0;
        std::vector<Token> reusable;
    };
    std::vector<Slot> slots_;
    uint64_t clock_ = 0;
};

}  // namespace twinfer::server
