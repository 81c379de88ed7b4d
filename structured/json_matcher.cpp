#include "structured/json_matcher.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>

namespace twinfer::structured {

namespace {

// Object phases: after '{', reading a key (a String frame above), after the key, after ':',
// reading the value (a frame above), after the value, after ','.
enum ObjectPhase : uint8_t { ObjectOpen, ObjectKey, ObjectAfterKey, ObjectColon, ObjectValue, ObjectAfterValue, ObjectComma };
// Array phases: after '[', reading an item (a frame above), after an item, after ','.
enum ArrayPhase : uint8_t { ArrayOpen, ArrayItem, ArrayAfterItem, ArrayComma };
// Number phases, as JSON's grammar reads -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
enum NumberPhase : uint8_t { NumberMinus, NumberZero, NumberInt, NumberDot, NumberFraction, NumberE, NumberExponentSign, NumberExponent };
constexpr size_t max_exponent_digits = 2;   // 1e99 at most: every reader turns it into a finite double

bool is_whitespace(uint8_t c) { return c == ' ' || c == '\n' || c == '\t'; }
bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
bool is_hex(uint8_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// The literals an any-value schema may start: sorted, as Literals nodes keep theirs.
const std::vector<std::string> any_value_literals = {"false", "null", "true"};

}  // namespace

namespace {

using Frame = JsonMatcher::Frame;
using Path = JsonMatcher::Path;
using FrameKind = JsonMatcher::FrameKind;

bool same_path(const Path& a, const Path& b) { return a.whitespace == b.whitespace && a.stack == b.stack; }

// An object's rules; an any-value schema's objects take any key, any value.
struct ObjectRules {
    const std::vector<Property>* properties;
    uint64_t required;
    int additional;
};
// An array's rules likewise.
struct ArrayRules {
    int items;
    size_t min_items, max_items;
};

const std::vector<Property> no_properties;

// The candidates among sorted [lo, hi) (all sharing their first `pos` bytes) whose byte at `pos`
// is c: a range again, since a shorter one sorts first and the rest by that byte.
template <class Items, class Text>
std::pair<uint32_t, uint32_t> narrow(const Items& items, Text text, uint32_t lo, uint32_t hi, uint32_t pos, uint8_t c) {
    const auto begin = items.begin();
    const auto first = std::partition_point(begin + lo, begin + hi, [&](const auto& item) {
        const std::string& s = text(item);
        return s.size() <= pos || uint8_t(s[pos]) < c;
    });
    const auto last = std::partition_point(first, begin + hi, [&](const auto& item) { return uint8_t(text(item)[pos]) == c; });
    return {uint32_t(first - begin), uint32_t(last - begin)};
}

const std::string& property_name(const Property& p) { return p.name; }
const std::string& literal_text(const std::string& s) { return s; }

class Stepper {
public:
    explicit Stepper(const Grammar& grammar) : grammar_(grammar) {}

    // Reads byte c on path p; alternatives that anyOf forks go to `forks`, already past c.
    bool step(Path& p, uint8_t c, std::vector<Path>& forks) const {
        const bool space = is_whitespace(c);
        for (;;) {
            if (p.stack.empty()) return false;   // the document is complete: nothing may follow
            Frame& f = p.stack.back();
            switch (f.kind) {
            case FrameKind::Raw: {
                const std::string& text = f.phase == 0 ? grammar_.prefix : grammar_.suffix;
                if (uint8_t(text[f.pos]) != c) return false;
                if (++f.pos == text.size()) p.stack.pop_back();
                p.whitespace = 0;
                return true;
            }
            case FrameKind::Value: {
                if (space) return false;   // a value starts at once: its container took the whitespace before it
                const SchemaNode& n = node(f.node);
                if (n.kind == NodeKind::AnyOf) {
                    for (size_t i = 1; i < n.options.size(); ++i) {
                        Path fork = p;
                        fork.stack.back().node = n.options[i];
                        if (step(fork, c, forks)) forks.push_back(std::move(fork));
                    }
                    f.node = n.options.front();
                    continue;
                }
                if (!start_value(p, c)) return false;
                p.whitespace = 0;
                return true;
            }
            case FrameKind::Object: {
                const ObjectRules o = object_rules(f.node);
                if (space) return f.phase != ObjectKey && f.phase != ObjectValue && take_whitespace(p);
                const bool may_close = (f.used & o.required) == o.required;
                switch (f.phase) {
                case ObjectOpen:
                case ObjectComma:
                    if (c == '"' && may_add_key(f, o)) {
                        f.phase = ObjectKey;
                        p.stack.push_back({.kind = FrameKind::String, .key = true, .node = f.node, .hi = uint32_t(o.properties->size())});
                        p.whitespace = 0;
                        return true;
                    }
                    if (c == '}' && f.phase == ObjectOpen && may_close) return close(p);
                    return false;
                case ObjectAfterKey:
                    if (c != ':') return false;
                    f.phase = ObjectColon;
                    p.whitespace = 0;
                    return true;
                case ObjectColon: {
                    f.phase = ObjectValue;
                    const int child = f.value_node;
                    p.stack.push_back({.kind = FrameKind::Value, .node = child});
                    continue;
                }
                case ObjectAfterValue:
                    if (c == ',' && may_add_key(f, o)) {
                        f.phase = ObjectComma;
                        p.whitespace = 0;
                        return true;
                    }
                    if (c == '}' && may_close) return close(p);
                    return false;
                default: return false;
                }
            }
            case FrameKind::Array: {
                const ArrayRules a = array_rules(f.node);
                if (space) return f.phase != ArrayItem && take_whitespace(p);
                switch (f.phase) {
                case ArrayOpen:
                    if (c == ']' && a.min_items == 0) return close(p);
                    if (a.max_items == 0) return false;
                    f.phase = ArrayItem;
                    p.stack.push_back({.kind = FrameKind::Value, .node = a.items});
                    continue;
                case ArrayAfterItem:
                    if (c == ',' && f.count < a.max_items) {
                        f.phase = ArrayComma;
                        p.whitespace = 0;
                        return true;
                    }
                    if (c == ']' && f.count >= a.min_items) return close(p);
                    return false;
                case ArrayComma:
                    f.phase = ArrayItem;
                    p.stack.push_back({.kind = FrameKind::Value, .node = a.items});
                    continue;
                default: return false;
                }
            }
            case FrameKind::String: return string_byte(p, c);
            case FrameKind::Number:
                if (number_byte(f, c)) {
                    p.whitespace = 0;
                    return true;
                }
                if (!number_may_end(f)) return false;
                p.stack.pop_back();
                value_done(p);
                continue;   // the byte belongs to what holds the number
            case FrameKind::Literal: {
                const std::vector<std::string>& list = literals(f.node);
                const auto [lo, hi] = narrow(list, literal_text, f.lo, f.hi, f.pos, c);
                if (lo < hi) {
                    f.lo = lo, f.hi = hi, ++f.pos;
                    if (hi - lo == 1 && list[lo].size() == f.pos) {
                        p.stack.pop_back();
                        value_done(p);
                    }
                    p.whitespace = 0;
                    return true;
                }
                if (list[f.lo].size() != f.pos) return false;
                p.stack.pop_back();   // a whole literal, and the byte belongs to what holds it
                value_done(p);
                continue;
            }
            }
            return false;
        }
    }

    // Ends the values that end without a closing byte (numbers, literals); true where the
    // document is then complete.
    bool may_end(Path p) const {
        while (!p.stack.empty()) {
            const Frame& f = p.stack.back();
            const bool ends = (f.kind == FrameKind::Number && number_may_end(f)) ||
                              (f.kind == FrameKind::Literal && literals(f.node)[f.lo].size() == f.pos);
            if (!ends) return false;
            p.stack.pop_back();
            value_done(p);
        }
        return true;
    }

    bool plain_string(const Path& p) const {
        if (p.stack.empty()) return false;
        const Frame& f = p.stack.back();
        if (f.kind != FrameKind::String || f.escape != 0 || f.utf8_due != 0) return false;
        if (f.key) return object_rules(f.node).additional >= 0;
        // A maximum length makes a token's length matter.
        return node(f.node).max_length == SIZE_MAX;
    }

private:
    const SchemaNode& node(int index) const { return grammar_.schema.nodes[size_t(index)]; }

    ObjectRules object_rules(int index) const {
        const SchemaNode& n = node(index);
        if (n.kind == NodeKind::AnyValue) return {&no_properties, 0, index};
        return {&n.properties, n.required, n.additional};
    }
    ArrayRules array_rules(int index) const {
        const SchemaNode& n = node(index);
        if (n.kind == NodeKind::AnyValue) return {index, 0, SIZE_MAX};
        return {n.items, n.min_items, n.max_items};
    }
    const std::vector<std::string>& literals(int index) const {
        const SchemaNode& n = node(index);
        return n.kind == NodeKind::AnyValue ? any_value_literals : n.literals;
    }

    static bool take_whitespace(Path& p) {
        if (p.whitespace >= max_whitespace_run) return false;
        ++p.whitespace;
        return true;
    }

    static bool may_add_key(const Frame& f, const ObjectRules& o) {
        const size_t n = o.properties->size();
        const uint64_t all = n == 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1;
        return o.additional >= 0 || (f.used & all) != all;
    }

    // The value on top closes with this byte.
    static bool close(Path& p) {
        p.stack.pop_back();
        value_done(p);
        p.whitespace = 0;
        return true;
    }

    // A value was popped: the object or array holding it moves past it.
    static void value_done(Path& p) {
        if (p.stack.empty()) return;
        Frame& parent = p.stack.back();
        if (parent.kind == FrameKind::Object && parent.phase == ObjectValue) parent.phase = ObjectAfterValue;
        else if (parent.kind == FrameKind::Array && parent.phase == ArrayItem) parent.phase = ArrayAfterItem, ++parent.count;
    }

    // The Value frame on top becomes the frame of the value that byte c starts.
    bool start_value(Path& p, uint8_t c) const {
        Frame& f = p.stack.back();
        const int index = f.node;
        const NodeKind kind = node(index).kind;
        const bool any = kind == NodeKind::AnyValue;
        if (c == '{' && (kind == NodeKind::Object || any)) {
            if (any && p.stack.size() >= max_open_values) return false;
            f = {.kind = FrameKind::Object, .phase = ObjectOpen, .node = index};
            return true;
        }
        if (c == '[' && (kind == NodeKind::Array || any)) {
            if (any && p.stack.size() >= max_open_values) return false;
            f = {.kind = FrameKind::Array, .phase = ArrayOpen, .node = index};
            return true;
        }
        if (c == '"' && (kind == NodeKind::String || any)) {
            f = {.kind = FrameKind::String, .node = index};
            return true;
        }
        if ((c == '-' || is_digit(c)) && (kind == NodeKind::Number || kind == NodeKind::Integer || any)) {
            f = {.kind = FrameKind::Number, .node = index};
            f.phase = c == '-' ? NumberMinus : c == '0' ? NumberZero : NumberInt;
            f.count = is_digit(c) ? 1 : 0;
            return true;
        }
        if (kind == NodeKind::Literals || any) {
            const std::vector<std::string>& list = literals(index);
            const auto [lo, hi] = narrow(list, literal_text, 0, uint32_t(list.size()), 0, c);
            if (lo == hi) return false;
            f = {.kind = FrameKind::Literal, .node = index, .lo = lo, .hi = hi, .pos = 1};
            if (hi - lo == 1 && list[lo].size() == 1) {
                p.stack.pop_back();
                value_done(p);
            }
            return true;
        }
        return false;
    }

    bool number_byte(Frame& f, uint8_t c) const {
        const bool integer = node(f.node).kind == NodeKind::Integer;
        const bool digit = is_digit(c);
        const auto to = [&](NumberPhase phase, uint32_t count) {
            f.phase = phase;
            f.count = count;
            return true;
        };
        switch (f.phase) {
        case NumberMinus: return digit && to(c == '0' ? NumberZero : NumberInt, 1);
        case NumberZero:
            if (integer) return false;
            if (c == '.') return to(NumberDot, 0);
            return (c == 'e' || c == 'E') && to(NumberE, 0);
        case NumberInt:
            if (digit) return f.count < max_digits && to(NumberInt, f.count + 1);
            if (integer) return false;
            if (c == '.') return to(NumberDot, 0);
            return (c == 'e' || c == 'E') && to(NumberE, 0);
        case NumberDot: return digit && to(NumberFraction, 1);
        case NumberFraction:
            if (digit) return f.count < max_digits && to(NumberFraction, f.count + 1);
            return (c == 'e' || c == 'E') && to(NumberE, 0);
        case NumberE:
            if (c == '+' || c == '-') return to(NumberExponentSign, 0);
            return digit && to(NumberExponent, 1);
        case NumberExponentSign: return digit && to(NumberExponent, 1);
        case NumberExponent: return digit && f.count < max_exponent_digits && to(NumberExponent, f.count + 1);
        }
        return false;
    }

    static bool number_may_end(const Frame& f) {
        return f.phase == NumberZero || f.phase == NumberInt || f.phase == NumberFraction || f.phase == NumberExponent;
    }

    // A byte inside a string: JSON's escapes, UTF-8 checked to the byte (no overlong forms, no
    // surrogates, nothing past U+10FFFF), no raw control characters. A key also narrows the
    // declared names it may still become.
    bool string_byte(Path& p, uint8_t c) const {
        Frame& f = p.stack.back();
        p.whitespace = 0;
        if (f.escape == 1) {
            if (c == 'u') f.escape = 2;
            else if (c != 0 && std::strchr("\"\\/bfnrt", c)) f.escape = 0;
            else return false;
            return key_byte(f, c);
        }
        if (f.escape >= 2) {
            if (!is_hex(c)) return false;
            // \uD800 to \uDFFF: half of a surrogate pair, which many readers reject alone.
            if (f.escape == 3 && f.surrogate && (c == '8' || c == '9' || std::tolower(c) >= 'a')) return false;
            f.surrogate = f.escape == 2 && (c == 'd' || c == 'D');
            f.escape = f.escape == 5 ? 0 : f.escape + 1;
            return key_byte(f, c);
        }
        if (f.utf8_due) {
            if (c < f.utf8_lo || c > f.utf8_hi) return false;
            --f.utf8_due;
            f.utf8_lo = 0x80, f.utf8_hi = 0xBF;
            return key_byte(f, c);
        }
        if (c == '"') return (f.key || f.count >= node(f.node).min_length) && close_string(p);
        // A new character (an escape is one): within maxLength.
        if (!f.key) {
            if (f.count >= node(f.node).max_length) return false;
            if (c >= 0x20) ++f.count;
        }
        if (c == '\\') {
            f.escape = 1;
            return key_byte(f, c);
        }
        if (c < 0x20) return false;
        if (c >= 0x80) {
            if (c >= 0xC2 && c <= 0xDF) f.utf8_due = 1;
            else if (c >= 0xE0 && c <= 0xEF) f.utf8_due = 2;
            else if (c >= 0xF0 && c <= 0xF4) f.utf8_due = 3;
            else return false;
            if (c == 0xE0) f.utf8_lo = 0xA0;
            if (c == 0xED) f.utf8_hi = 0x9F;
            if (c == 0xF0) f.utf8_lo = 0x90;
            if (c == 0xF4) f.utf8_hi = 0x8F;
        }
        return key_byte(f, c);
    }

    // A key's byte: the declared names it may still be. Without other keys allowed, one of them
    // not yet given must remain.
    bool key_byte(Frame& f, uint8_t c) const {
        if (!f.key) return true;
        const ObjectRules o = object_rules(f.node);
        const auto [lo, hi] = narrow(*o.properties, property_name, f.lo, f.hi, f.pos, c);
        f.lo = lo, f.hi = hi, ++f.pos;
        if (o.additional >= 0) return true;
        const Frame& object = *(&f - 1);
        for (uint32_t i = lo; i < hi; ++i)
            if (!(object.used >> i & 1)) return true;
        return false;
    }

    bool close_string(Path& p) const {
        Frame& f = p.stack.back();
        if (!f.key) {
            p.stack.pop_back();
            value_done(p);
            return true;
        }
        const ObjectRules o = object_rules(f.node);
        const bool exact = f.lo < f.hi && (*o.properties)[f.lo].name.size() == f.pos;
        Frame& object = p.stack[p.stack.size() - 2];
        if (exact) {
            if (object.used >> f.lo & 1) return false;   // a key given twice
            object.used |= uint64_t{1} << f.lo;
            object.value_node = (*o.properties)[f.lo].node;
        } else {
            if (o.additional < 0) return false;
            object.value_node = o.additional;
        }
        object.phase = ObjectAfterKey;
        p.stack.pop_back();
        return true;
    }

    const Grammar& grammar_;
};

}  // namespace

JsonMatcher::JsonMatcher(std::shared_ptr<const Grammar> grammar) : grammar_(std::move(grammar)) {
    Path start;
    if (!grammar_->suffix.empty()) start.stack.push_back({.kind = FrameKind::Raw, .phase = 1});
    start.stack.push_back({.kind = FrameKind::Value, .node = grammar_->schema.root});
    if (!grammar_->prefix.empty()) start.stack.push_back({.kind = FrameKind::Raw, .phase = 0});
    paths_.push_back(std::move(start));
}

bool JsonMatcher::advance(std::vector<Path>& paths, uint8_t byte) const {
    const Stepper stepper(*grammar_);
    next_.clear();
    for (Path& p : paths) {
        std::vector<Path> forks;
        if (stepper.step(p, byte, forks)) next_.push_back(std::move(p));
        for (Path& fork : forks) next_.push_back(std::move(fork));
    }
    // Alternatives that reached the same state are one.
    for (size_t i = 1; i < next_.size(); ++i)
        for (size_t j = 0; j < i; ++j)
            if (same_path(next_[i], next_[j])) {
                next_.erase(next_.begin() + std::ptrdiff_t(i--));
                break;
            }
    if (next_.size() > max_paths)
        throw MatcherError("the schema's alternatives left more than " + std::to_string(max_paths) + " ways to read the output");
    std::swap(paths, next_);
    return !paths.empty();
}

bool JsonMatcher::feed(std::string_view bytes) {
    if (!can_feed(bytes)) return false;
    std::swap(paths_, scratch_);
    return true;
}

bool JsonMatcher::can_feed(std::string_view bytes) const {
    scratch_ = paths_;
    for (const char c : bytes)
        if (!advance(scratch_, uint8_t(c))) return false;
    return true;
}

bool JsonMatcher::accepting() const {
    const Stepper stepper(*grammar_);
    return std::any_of(paths_.begin(), paths_.end(), [&](const Path& p) { return stepper.may_end(p); });
}

bool JsonMatcher::finished() const {
    return std::all_of(paths_.begin(), paths_.end(), [](const Path& p) { return p.stack.empty(); });
}

bool JsonMatcher::in_plain_string() const {
    const Stepper stepper(*grammar_);
    return std::any_of(paths_.begin(), paths_.end(), [&](const Path& p) { return stepper.plain_string(p); });
}

}  // namespace twinfer::structured
