#pragma once
// Stop strings over streamed text: what generate() and the server's sequences share.
#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace twinfer {

// Holds back streamed text that could be the start of a stop string, so a stop string is never
// half-printed; finds a completed one.
class StopStringFilter {
public:
    explicit StopStringFilter(const std::vector<std::string>& stops) : stops_(stops) {}

    // Adds decoded text; returns what may be emitted now. Sets `stopped` when a stop string
    // completed (the text before it is returned, the rest dropped).
    std::string push(std::string_view text, bool& stopped) {
        pending_ += text;
        size_t first_stop = std::string::npos;
        for (const auto& s : stops_)
            if (!s.empty()) first_stop = std::min(first_stop, pending_.find(s));
        if (first_stop != std::string::npos) {
            stopped = true;
            std::string out = pending_.substr(0, first_stop);
            pending_.clear();
            return out;
        }
        // Keep the longest suffix of pending_ that is a proper prefix of some stop string.
        size_t hold = 0;
        for (const auto& s : stops_)
            for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n)
                if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
                    hold = n;
                    break;
                }
        std::string out = pending_.substr(0, pending_.size() - hold);
        pending_.erase(0, pending_.size() - hold);
        return out;
    }
    std::string flush() { return std::exchange(pending_, {}); }

private:
    const std::vector<std::string>& stops_;
    std::string pending_;
};

}  // namespace twinfer
