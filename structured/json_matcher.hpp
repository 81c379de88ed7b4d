#pragma once
// A character-level pushdown matcher: it reads output one byte at a time and refuses the first
// byte after which the text could no longer be the prefix of a valid document: `prefix`, one
// JSON value valid under the schema, `suffix` (a tool call's wrapper; both empty for plain
// structured output). The value starts at once (no whitespace before it, none after).
//
// The state is a set of paths (anyOf forks one per alternative; most die on the next byte), each
// a stack of frames, one per open value. Whitespace is allowed where JSON allows it inside the
// value, in runs of at most `max_whitespace_run` bytes (space, newline, tab), and not around it: a model
// cannot loop on whitespace, and the text ends when the value closes. Numbers have at most
// `max_digits` digits per part. Every prefix the matcher accepts can still be completed: no dead
// ends, so constrained generation never has to give up.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "structured/json_schema.hpp"

namespace twinfer::structured {

constexpr size_t max_whitespace_run = 16;
constexpr size_t max_digits = 20;
constexpr size_t max_open_values = 64;   // nested objects/arrays (any-value schemas could nest without end)
constexpr size_t max_paths = 256;        // alternatives alive at once (nested anyOf)

// What the output must be.
struct Grammar {
    Schema schema;
    std::string prefix;
    std::string suffix;
};

struct MatcherError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class JsonMatcher {
public:
    explicit JsonMatcher(std::shared_ptr<const Grammar> grammar);

    // Reads the bytes if the text stays a valid prefix (true); else changes nothing (false).
    bool feed(std::string_view bytes);
    // Whether feed(bytes) would succeed.
    bool can_feed(std::string_view bytes) const;
    // The text so far is a whole document (an end of generation may come).
    bool accepting() const;
    // Whole, and no byte may follow: generation ends here.
    bool finished() const;
    // Some path is inside a string where any byte but '"', '\\' and control characters continues
    // it (and no escape or UTF-8 sequence is half read): text without those bytes is accepted.
    bool in_plain_string() const;

    // One open value of a path. Which fields mean something depends on the kind.
    enum class FrameKind : uint8_t { Value, Object, Array, String, Number, Literal, Raw };
    struct Frame {
        FrameKind kind = FrameKind::Value;
        uint8_t phase = 0;          // Raw: 0 prefix, 1 suffix; Object, Array, Number: where in it
        uint8_t escape = 0;         // String: 1 after '\\', 2 to 5 reading \u's digits
        uint8_t utf8_due = 0;       // String: continuation bytes a UTF-8 character still needs
        uint8_t utf8_lo = 0x80, utf8_hi = 0xBF;   // String: the range of the next continuation byte
        bool key = false;           // String: an object's key (node: the object's)
        bool surrogate = false;     // String: \u's first digit was d/D
        int32_t node = -1;
        int32_t value_node = -1;    // Object: the schema of the value after the key just read
        uint32_t count = 0;         // Array: items; Number: digits of the current part; String: characters
        uint32_t lo = 0, hi = 0, pos = 0;   // Literal, key: the candidates [lo, hi) matching `pos` bytes; Raw: pos
        uint64_t used = 0;          // Object: the declared properties given so far

        bool operator==(const Frame&) const = default;
    };
    struct Path {
        std::vector<Frame> stack;   // the innermost open value last
        uint8_t whitespace = 0;     // the current run of whitespace
    };

private:
    bool advance(std::vector<Path>& paths, uint8_t byte) const;

    std::shared_ptr<const Grammar> grammar_;
    std::vector<Path> paths_;
    mutable std::vector<Path> scratch_, next_;   // can_feed's working copies, kept to reuse their memory
};

}  // namespace twinfer::structured
