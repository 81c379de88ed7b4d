// Evaluation of the Jinja2 subset (see jinja.hpp): scopes as jinja2 compiles them (a for loop
// body gets a fresh scope per iteration, so `set` inside a loop does not leak out; if/elif do
// not open scopes), filters, tests, str/dict methods and the globals transformers provides.
// Wherever jinja2 raises (undefined used as an operand, a type error, raise_exception), this
// throws ChatTemplateError.
#include "tokenizer/chat_template.hpp"
#include "tokenizer/jinja.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <unordered_map>

namespace twinfer::jinja {

namespace {

[[noreturn]] void fail(int line, const std::string& what) {
    throw ChatTemplateError("chat template line " + std::to_string(line) + ": " + what);
}

std::string undefined_message(const Value& v) {
    const std::string& hint = v.as_undefined().hint;
    return hint.empty() ? "value is undefined" : hint;
}

struct Scope {
    std::unordered_map<std::string, Value> variables;
    std::shared_ptr<Scope> parent;

    const Value* lookup(const std::string& name) const {
        for (const Scope* s = this; s != nullptr; s = s->parent.get()) {
            auto it = s->variables.find(name);
            if (it != s->variables.end()) return &it->second;
        }
        return nullptr;
    }
};
using ScopePtr = std::shared_ptr<Scope>;

ScopePtr child_scope(const ScopePtr& parent) {
    auto s = std::make_shared<Scope>();
    s->parent = parent;
    return s;
}

enum class Flow { Normal, Break, Continue };

// The elements Python would iterate: list items, string code points, dict keys; Undefined
// iterates as empty, as jinja2's Undefined does.
std::vector<Value> iterate(const Value& v, int line) {
    if (v.is_undefined()) return {};
    if (v.is_list()) return v.as_list().items;
    if (v.is_string()) {
        std::vector<Value> out;
        for (auto& point : split_code_points(v.as_string())) out.emplace_back(std::move(point));
        return out;
    }
    if (v.is_dict()) {
        std::vector<Value> out;
        for (const auto& item : v.as_dict()) out.emplace_back(item.first);
        return out;
    }
    fail(line, "'" + v.type_name() + "' object is not iterable");
}

std::int64_t to_integer(const Value& v, int line, const char* what) {
    if (v.is_int()) return v.as_int();
    if (v.is_bool()) return v.as_bool() ? 1 : 0;
    fail(line, std::string(what) + " must be an integer, not '" + v.type_name() + "'");
}

// Item lookup as jinja2's environment.getitem: missing keys and out-of-range indices give
// Undefined; only an undefined container is an error.
Value get_item(const Value& obj, const Value& key, int line) {
    if (obj.is_undefined()) fail(line, undefined_message(obj));
    if (obj.is_dict() || obj.is_namespace()) {
        if (key.is_string()) {
            if (const Value* found = obj.find(key.as_string())) return *found;
            return Undefined{"'" + obj.type_name() + " object' has no attribute '" + key.as_string() + "'"};
        }
        return Undefined{"'" + obj.type_name() + " object' has no item " + key.repr()};
    }
    if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
        std::int64_t index = to_integer(key, line, "index");
        std::vector<std::string> points;
        std::size_t size = obj.is_list() ? obj.as_list().items.size() : (points = split_code_points(obj.as_string())).size();
        if (index < 0) index += static_cast<std::int64_t>(size);
        if (index < 0 || index >= static_cast<std::int64_t>(size))
            return Undefined{obj.type_name() + " index out of range"};
        if (obj.is_list()) return obj.as_list().items[static_cast<std::size_t>(index)];
        return points[static_cast<std::size_t>(index)];
    }
    return Undefined{"'" + obj.type_name() + " object' has no item " + key.repr()};
}

// jinja2's attribute getter for filters like map(attribute='a.b.0').
Value get_dotted(const Value& obj, const std::string& path, int line) {
    Value v = obj;
    std::size_t start = 0;
    while (true) {
        std::size_t dot = path.find('.', start);
        std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        std::int64_t index = 0;
        const auto [end, error] = std::from_chars(part.data(), part.data() + part.size(), index);
        const bool numeric = !part.empty() && part[0] != '-' && error == std::errc() && end == part.data() + part.size();
        v = get_item(v, numeric ? Value(index) : Value(part), line);
        if (dot == std::string::npos) return v;
        start = dot + 1;
    }
}

// Python slice semantics (slice.indices), for lists, tuples and strings.
Value slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v, int line) {
    if (obj.is_undefined()) fail(line, undefined_message(obj));
    std::vector<Value> elements;
    if (obj.is_list()) elements = obj.as_list().items;
    else if (obj.is_string()) elements = iterate(obj, line);
    else fail(line, "'" + obj.type_name() + "' object is not subscriptable");
    auto n = static_cast<std::int64_t>(elements.size());
    auto given = [](const Value& v) { return !v.is_none() && !v.is_undefined(); };
    std::int64_t step = given(step_v) ? to_integer(step_v, line, "slice step") : 1;
    if (step == 0) fail(line, "slice step cannot be zero");
    auto bound = [&](const Value& v, std::int64_t if_missing) {
        if (!given(v)) return if_missing;
        std::int64_t i = to_integer(v, line, "slice index");
        if (i < 0) i += n;
        if (step > 0) return std::clamp<std::int64_t>(i, 0, n);
        return std::clamp<std::int64_t>(i, -1, n - 1);
    };
    std::int64_t start = bound(start_v, step > 0 ? 0 : n - 1);
    std::int64_t stop = bound(stop_v, step > 0 ? n : -1);
    std::vector<Value> out;
    for (std::int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(elements[static_cast<std::size_t>(i)]);
    if (obj.is_string()) {
        std::string s;
        for (const auto& v : out) s += v.as_string();
        return s;
    }
    return Value::list(std::move(out), obj.as_list().is_tuple);
}

// Python ordering (<) for numbers, strings and lists; anything else is a TypeError.
bool python_less(const Value& a, const Value& b, int line) {
    if (a.is_number() && b.is_number()) {
        if (a.is_double() || b.is_double()) return a.to_double() < b.to_double();
        return to_integer(a, line, "") < to_integer(b, line, "");
    }
    if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();
    if (a.is_list() && b.is_list()) {
        const auto& x = a.as_list().items;
        const auto& y = b.as_list().items;
        for (std::size_t i = 0; i < x.size() && i < y.size(); ++i) {
            if (python_equal(x[i], y[i])) continue;
            return python_less(x[i], y[i], line);
        }
        return x.size() < y.size();
    }
    if (a.is_undefined()) fail(line, undefined_message(a));
    if (b.is_undefined()) fail(line, undefined_message(b));
    fail(line, "'<' not supported between instances of '" + a.type_name() + "' and '" + b.type_name() + "'");
}

bool contains(const Value& container, const Value& item, int line) {
    if (container.is_string()) {
        if (!item.is_string())
            fail(line, "'in <string>' requires string as left operand, not " + item.type_name());
        return container.as_string().find(item.as_string()) != std::string::npos;
    }
    if (container.is_list()) {
        for (const auto& v : container.as_list().items)
            if (python_equal(v, item)) return true;
        return false;
    }
    if (container.is_dict()) return item.is_string() && container.find(item.as_string()) != nullptr;
    if (container.is_undefined()) fail(line, undefined_message(container));
    fail(line, "argument of type '" + container.type_name() + "' is not iterable");
}

bool compare(const std::string& op, const Value& a, const Value& b, int line) {
    if (op == "==") return python_equal(a, b);
    if (op == "!=") return !python_equal(a, b);
    if (op == "<") return python_less(a, b, line);
    if (op == ">") return python_less(b, a, line);
    if (op == "<=") return python_less(a, b, line) || python_equal(a, b);
    if (op == ">=") return python_less(b, a, line) || python_equal(a, b);
    if (op == "in") return contains(b, a, line);
    return !contains(b, a, line);  // "not in"
}

// Python's ints are unbounded; these are int64: a result outside it is an error, never a wrap.
[[noreturn]] void fail_overflow(int line, const std::string& op) {
    fail(line, "integer overflow in '" + op + "' (the result does not fit in 64 bits)");
}

std::int64_t checked_add(std::int64_t a, std::int64_t b, int line) {
    std::int64_t r = 0;
    if (__builtin_add_overflow(a, b, &r)) fail_overflow(line, "+");
    return r;
}
std::int64_t checked_sub(std::int64_t a, std::int64_t b, int line, const std::string& op = "-") {
    std::int64_t r = 0;
    if (__builtin_sub_overflow(a, b, &r)) fail_overflow(line, op);
    return r;
}
std::int64_t checked_mul(std::int64_t a, std::int64_t b, int line, const std::string& op = "*") {
    std::int64_t r = 0;
    if (__builtin_mul_overflow(a, b, &r)) fail_overflow(line, op);
    return r;
}

// a // b (b != 0), rounding toward negative infinity as Python does.
std::int64_t floor_div(std::int64_t a, std::int64_t b, int line) {
    if (b == -1) return checked_sub(0, a, line, "//");
    std::int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
    return q;
}

// x ** y for y >= 0 by squaring: at most 64 multiplications, each checked.
std::int64_t integer_power(std::int64_t x, std::int64_t y, int line) {
    std::int64_t result = 1;
    while (true) {
        if (y & 1) result = checked_mul(result, x, line, "**");
        y >>= 1;
        if (y == 0) return result;
        x = checked_mul(x, x, line, "**");
    }
}

// A string or list about to be built of `size` bytes or items: within limits::string_bytes /
// limits::list_items, or an error naming the limit.
void check_string_size(std::size_t size, int line) {
    if (size > limits::string_bytes)
        fail(line, "a string would exceed " + std::to_string(limits::string_bytes) + " bytes (the string size limit)");
}
void check_list_size(std::size_t size, int line) {
    if (size > limits::list_items)
        fail(line, "a list would exceed " + std::to_string(limits::list_items) + " items (the list size limit)");
}

// seq * times as Python: empty for times <= 0 or an empty seq (at once, however large times is);
// the result's size checked before anything is built.
Value repeat(const Value& seq, std::int64_t times, int line) {
    const std::size_t unit = seq.is_string() ? seq.as_string().size() : seq.as_list().items.size();
    const std::uint64_t count = times <= 0 || unit == 0 ? 0 : static_cast<std::uint64_t>(times);
    const std::size_t limit = seq.is_string() ? limits::string_bytes : limits::list_items;
    const std::size_t size = count > limit / std::max<std::size_t>(unit, 1) ? limit + 1 : count * unit;
    if (seq.is_string()) {
        check_string_size(size, line);
        std::string out;
        for (std::uint64_t i = 0; i < count; ++i) out += seq.as_string();
        return out;
    }
    check_list_size(size, line);
    std::vector<Value> out;
    for (std::uint64_t i = 0; i < count; ++i) out.insert(out.end(), seq.as_list().items.begin(), seq.as_list().items.end());
    return Value::list(std::move(out), seq.as_list().is_tuple);
}

Value arithmetic(const std::string& op, const Value& a, const Value& b, int line) {
    if (op == "~") {
        std::string joined = a.str();
        const std::string right = b.str();
        check_string_size(joined.size() + right.size(), line);
        return joined + right;
    }
    if (a.is_undefined()) fail(line, undefined_message(a));
    if (b.is_undefined()) fail(line, undefined_message(b));
    auto type_error = [&]() -> Value {
        fail(line, "unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" + b.type_name() + "'");
    };
    if (op == "+") {
        if (a.is_string() && b.is_string()) {
            check_string_size(a.as_string().size() + b.as_string().size(), line);
            return a.as_string() + b.as_string();
        }
        if (a.is_list() && b.is_list() && a.as_list().is_tuple == b.as_list().is_tuple) {
            check_list_size(a.as_list().items.size() + b.as_list().items.size(), line);
            std::vector<Value> items = a.as_list().items;
            items.insert(items.end(), b.as_list().items.begin(), b.as_list().items.end());
            return Value::list(std::move(items), a.as_list().is_tuple);
        }
    }
    if (op == "*") {
        bool a_seq = a.is_string() || a.is_list(), b_seq = b.is_string() || b.is_list();
        if (a_seq && (b.is_int() || b.is_bool())) return repeat(a, to_integer(b, line, ""), line);
        if (b_seq && (a.is_int() || a.is_bool())) return repeat(b, to_integer(a, line, ""), line);
    }
    if (op == "%" && a.is_string()) fail(line, "unsupported printf-style string formatting ('%')");
    if (!a.is_number() || !b.is_number()) return type_error();
    bool integral = !a.is_double() && !b.is_double();
    if (op == "/") {
        if (b.to_double() == 0.0) fail(line, "division by zero");
        return a.to_double() / b.to_double();
    }
    if (integral) {
        std::int64_t x = to_integer(a, line, ""), y = to_integer(b, line, "");
        if (op == "+") return checked_add(x, y, line);
        if (op == "-") return checked_sub(x, y, line);
        if (op == "*") return checked_mul(x, y, line);
        if ((op == "//" || op == "%") && y == 0) fail(line, "integer division or modulo by zero");
        if (op == "//") return floor_div(x, y, line);
        if (op == "%") {   // Python's: the sign of y (r and y then differ in sign, so r + y cannot overflow)
            if (y == -1) return std::int64_t{0};
            const std::int64_t remainder = x % y;
            return remainder != 0 && ((remainder < 0) != (y < 0)) ? remainder + y : remainder;
        }
        if (op == "**") {
            if (y < 0) return std::pow(static_cast<double>(x), static_cast<double>(y));
            return integer_power(x, y, line);
        }
    }
    double x = a.to_double(), y = b.to_double();
    if (op == "+") return x + y;
    if (op == "-") return x - y;
    if (op == "*") return x * y;
    if ((op == "//" || op == "%") && y == 0.0) fail(line, "float division or modulo by zero");
    if (op == "//") return std::floor(x / y);
    if (op == "%") {
        double r = std::fmod(x, y);
        if (r != 0.0 && ((r < 0) != (y < 0))) r += y;
        return r;
    }
    if (op == "**") return std::pow(x, y);
    return type_error();
}

// Positional-or-keyword argument lookup for filters, tests, methods and globals.
class Arguments {
public:
    Arguments(CallArguments& args, std::string callee, int line) : args_(args), callee_(std::move(callee)), line_(line) {}

    std::optional<Value> get(std::size_t position, const char* name) {
        std::optional<Value> found;
        if (position < args_.positional.size()) found = args_.positional[position];
        for (auto& [key, value] : args_.keywords)
            if (key == name) {
                if (found) fail(line_, callee_ + "() got multiple values for argument '" + name + "'");
                found = value;
                key.clear();  // consumed
            }
        max_position_ = std::max(max_position_, position + 1);
        return found;
    }
    Value get_or(std::size_t position, const char* name, Value fallback) {
        auto v = get(position, name);
        return v ? *v : fallback;
    }
    std::optional<std::string> get_string(std::size_t position, const char* name) {
        auto v = get(position, name);
        if (!v || v->is_none()) return std::nullopt;
        if (!v->is_string()) fail(line_, callee_ + "() argument '" + name + "' must be a string, not " + v->type_name());
        return v->as_string();
    }
    // Call after all get()s: rejects arguments the callee does not take.
    void done() const {
        if (args_.positional.size() > max_position_)
            fail(line_, callee_ + "() takes at most " + std::to_string(max_position_) + " arguments");
        for (const auto& [key, value] : args_.keywords)
            if (!key.empty()) fail(line_, callee_ + "() got an unexpected keyword argument '" + key + "'");
    }
    const std::vector<Value>& positional() const { return args_.positional; }

private:
    CallArguments& args_;
    std::string callee_;
    int line_;
    std::size_t max_position_ = 0;
};

// Python's str.split(sep=None, maxsplit=-1).
Value python_split(const std::string& s, const std::optional<std::string>& sep, std::int64_t maxsplit, int line) {
    std::vector<Value> parts;
    if (sep) {
        if (sep->empty()) fail(line, "empty separator");
        std::size_t start = 0;
        while (maxsplit < 0 || static_cast<std::int64_t>(parts.size()) < maxsplit) {
            std::size_t at = s.find(*sep, start);
            if (at == std::string::npos) break;
            parts.emplace_back(s.substr(start, at - start));
            start = at + sep->size();
        }
        parts.emplace_back(s.substr(start));
        return Value::list(std::move(parts));
    }
    std::size_t i = 0;
    auto skip_space = [&] {
        while (i < s.size()) {
            std::size_t j = i;
            if (!is_python_space(next_code_point(s, j))) break;
            i = j;
        }
    };
    skip_space();
    while (i < s.size()) {
        if (maxsplit >= 0 && static_cast<std::int64_t>(parts.size()) == maxsplit) {
            parts.emplace_back(python_strip(s.substr(i), std::nullopt, false, true));
            break;
        }
        std::size_t start = i;
        while (i < s.size()) {
            std::size_t j = i;
            if (is_python_space(next_code_point(s, j))) break;
            i = j;
        }
        parts.emplace_back(s.substr(start, i - start));
        skip_space();
    }
    return Value::list(std::move(parts));
}

std::string python_replace(const std::string& s, const std::string& old, const std::string& replacement, std::int64_t count) {
    std::string out;
    if (old.empty()) {  // Python inserts the replacement between every code point
        std::vector<std::string> points = split_code_points(s);
        std::int64_t done = 0;
        for (std::size_t i = 0; i <= points.size(); ++i) {
            if (count < 0 || done < count) {
                out += replacement;
                ++done;
            }
            if (i < points.size()) out += points[i];
        }
        return out;
    }
    std::size_t start = 0;
    for (std::int64_t done = 0; count < 0 || done < count; ++done) {
        std::size_t at = s.find(old, start);
        if (at == std::string::npos) break;
        out.append(s, start, at - start);
        out += replacement;
        start = at + old.size();
    }
    out.append(s, start);
    return out;
}

bool starts_or_ends_with(const std::string& s, const Value& affix, bool at_start, int line) {
    std::vector<Value> candidates = affix.is_list() && affix.as_list().is_tuple ? affix.as_list().items : std::vector<Value>{affix};
    for (const auto& c : candidates) {
        if (!c.is_string()) fail(line, "startswith/endswith takes a string or a tuple of strings");
        const std::string& a = c.as_string();
        if (a.size() <= s.size() && (at_start ? s.compare(0, a.size(), a) == 0 : s.compare(s.size() - a.size(), a.size(), a) == 0))
            return true;
    }
    return false;
}

Value call_string_method(const std::string& s, const std::string& method, CallArguments& call_args, int line) {
    Arguments args(call_args, "str." + method, line);
    Value result;
    if (method == "strip" || method == "lstrip" || method == "rstrip") {
        auto chars = args.get_string(0, "chars");
        result = python_strip(s, chars, method != "rstrip", method != "lstrip");
    } else if (method == "startswith" || method == "endswith") {
        auto affix = args.get(0, "prefix");
        if (!affix) fail(line, method + "() takes at least 1 argument");
        if (args.get(1, "start") || args.get(2, "end")) fail(line, "unsupported start/end arguments to " + method + "()");
        result = starts_or_ends_with(s, *affix, method == "startswith", line);
    } else if (method == "split") {
        auto sep = args.get_string(0, "sep");
        std::int64_t maxsplit = to_integer(args.get_or(1, "maxsplit", -1), line, "maxsplit");
        result = python_split(s, sep, maxsplit, line);
    } else if (method == "upper") {
        result = python_upper(s);
    } else if (method == "lower") {
        result = python_lower(s);
    } else if (method == "title") {
        result = python_title(s);
    } else if (method == "capitalize") {
        result = python_capitalize(s);
    } else if (method == "replace") {
        auto old = args.get_string(0, "old");
        auto replacement = args.get_string(1, "new");
        if (!old || !replacement) fail(line, "replace() takes at least 2 arguments");
        result = python_replace(s, *old, *replacement, to_integer(args.get_or(2, "count", -1), line, "count"));
    } else {
        fail(line, "'str' object has no method '" + method + "'");
    }
    args.done();
    return result;
}

Value call_dict_method(const Value& dict, const std::string& method, CallArguments& call_args, int line) {
    Arguments args(call_args, "dict." + method, line);
    Value result;
    if (method == "items") {
        std::vector<Value> items;
        for (const auto& [k, v] : dict.as_dict()) items.push_back(Value::list({k, v}, true));
        result = Value::list(std::move(items));
    } else if (method == "keys" || method == "values") {
        std::vector<Value> items;
        for (const auto& [k, v] : dict.as_dict()) items.push_back(method == "keys" ? Value(k) : v);
        result = Value::list(std::move(items));
    } else if (method == "get") {
        auto key = args.get(0, "key");
        if (!key) fail(line, "get() takes at least 1 argument");
        const Value* found = key->is_string() ? dict.find(key->as_string()) : nullptr;
        result = found ? *found : args.get_or(1, "default", None{});
    } else {
        fail(line, "'dict' object has no method '" + method + "'");
    }
    args.done();
    return result;
}

const std::vector<std::string> dict_methods = {"items", "keys", "values", "get"};
const std::vector<std::string> string_methods = {"strip", "lstrip", "rstrip", "startswith", "endswith", "split",
                                                 "upper", "lower", "replace", "title", "capitalize"};
bool is_one_of(const std::string& name, const std::vector<std::string>& names) {
    return std::find(names.begin(), names.end(), name) != names.end();
}

// Python's float(str) for plain decimal spellings (std::stod would also take hex and "0x").
std::optional<double> parse_python_float(const std::string& text) {
    std::string s = python_strip(text, std::nullopt, true, true);
    s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
    if (s.empty() || s.find_first_not_of("0123456789+-.eE") != std::string::npos) return std::nullopt;
    // strtod, not std::stod: out of range Python gives inf or 0.0, where std::stod throws.
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (end == s.c_str() + s.size()) return d;
    return std::nullopt;
}

// jinja2's do_int: int(value), else int(float(value)), else the default.
Value to_int_filter(const Value& v, const Value& fallback) {
    // A float truncated, as Python's int(); beyond int64 (where Python's would be a big int) the default.
    auto truncated = [&](double d) { return std::abs(d) < 9223372036854775808.0 ? Value(static_cast<std::int64_t>(d)) : fallback; };
    if (v.is_int()) return v;
    if (v.is_bool()) return std::int64_t{v.as_bool()};
    if (v.is_double()) return truncated(v.as_double());
    if (v.is_string()) {
        std::string s = python_strip(v.as_string(), std::nullopt, true, true);
        s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
        bool is_decimal = !s.empty() && s.find_first_not_of("0123456789", s[0] == '-' || s[0] == '+' ? 1 : 0) == std::string::npos &&
                          s.find_first_of("0123456789") != std::string::npos;
        if (is_decimal) {
            try {
                return static_cast<std::int64_t>(std::stoll(s));
            } catch (const std::out_of_range&) {
                return fallback;
            }
        }
        if (auto d = parse_python_float(s)) return truncated(*d);
    }
    return fallback;
}

Value to_float_filter(const Value& v, const Value& fallback) {
    if (v.is_number()) return v.to_double();
    if (v.is_string()) {
        if (auto d = parse_python_float(v.as_string())) return *d;
    }
    return fallback;
}

std::size_t python_len(const Value& v, int line) {
    if (v.is_undefined()) return 0;
    if (v.is_string()) return count_code_points(v.as_string());
    if (v.is_list()) return v.as_list().items.size();
    if (v.is_dict()) return v.as_dict().size();
    fail(line, "object of type '" + v.type_name() + "' has no len()");
}

bool run_test(const std::string& name, const Value& v, CallArguments& call_args, int line) {
    Arguments args(call_args, "test " + name, line);
    auto other = [&] {
        auto o = args.get(0, "other");
        if (!o) fail(line, "test '" + name + "' takes an argument");
        return *o;
    };
    bool result;
    if (name == "defined") result = !v.is_undefined();
    else if (name == "undefined") result = v.is_undefined();
    else if (name == "none") result = v.is_none();
    else if (name == "string") result = v.is_string();
    else if (name == "number") result = v.is_number();
    else if (name == "integer") result = v.is_int();
    else if (name == "float") result = v.is_double();
    else if (name == "boolean") result = v.is_bool();
    else if (name == "true") result = v.is_bool() && v.as_bool();
    else if (name == "false") result = v.is_bool() && !v.as_bool();
    else if (name == "mapping") result = v.is_dict();
    else if (name == "iterable") result = v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
    else if (name == "sequence") result = v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
    else if (name == "callable") result = v.is_callable();
    else if (name == "odd" || name == "even") {
        if (!v.is_int() && !v.is_bool()) fail(line, "test '" + name + "' needs an integer, not " + v.type_name());
        std::int64_t i = to_integer(v, line, "");
        result = (i % 2 != 0) == (name == "odd");
    } else if (name == "divisibleby") {
        Value n = other();
        Value remainder = arithmetic("%", v, n, line);
        result = remainder.to_double() == 0.0;
    } else if (name == "lower") result = v.is_string() && python_lower(v.as_string()) == v.as_string();
    else if (name == "upper") result = v.is_string() && python_upper(v.as_string()) == v.as_string();
    else if (name == "eq" || name == "equalto") result = python_equal(v, other());
    else if (name == "ne") result = !python_equal(v, other());
    else if (name == "lt") result = compare("<", v, other(), line);
    else if (name == "le") result = compare("<=", v, other(), line);
    else if (name == "gt") result = compare(">", v, other(), line);
    else if (name == "ge") result = compare(">=", v, other(), line);
    else if (name == "in") result = contains(other(), v, line);
    else if (name == "sameas") {
        Value o = other();
        // Python identity: None, bools and (small, cached) ints of equal value are the same object.
        bool comparable = v.is_none() || v.is_bool() || v.is_int() || v.is_namespace();
        if (!comparable) fail(line, "unsupported test 'sameas' on a " + v.type_name());
        result = v.type_name() == o.type_name() && python_equal(v, o);
    } else fail(line, "unsupported test '" + name + "'");
    args.done();
    return result;
}

}  // namespace

class Evaluator {
public:
    Flow render_body(const Body& body, const ScopePtr& scope, std::string& out) {
        for (const auto& stmt : body) {
            const Deeper level(*this, stmt->line);
            Flow flow = render_statement(*stmt, scope, out);
            check_string_size(out.size(), stmt->line);
            if (flow != Flow::Normal) return flow;
        }
        return Flow::Normal;
    }

    Value call_macro(const Stmt& macro, const std::weak_ptr<Scope>& defined_in, CallArguments& call_args, int line) {
        ScopePtr parent = defined_in.lock();
        if (!parent) fail(line, "macro '" + macro.attribute + "' called outside the scope that defined it");
        ScopePtr scope = child_scope(parent);
        if (call_args.positional.size() > macro.targets.size())
            fail(line, "macro '" + macro.attribute + "' takes not more than " + std::to_string(macro.targets.size()) + " arguments");
        for (std::size_t i = 0; i < macro.targets.size(); ++i) {
            const std::string& param = macro.targets[i];
            std::optional<Value> v;
            if (i < call_args.positional.size()) v = call_args.positional[i];
            for (auto& [key, value] : call_args.keywords)
                if (key == param) {
                    if (v) fail(line, "macro '" + macro.attribute + "' got multiple values for argument '" + param + "'");
                    v = value;
                }
            if (!v && macro.defaults[i]) v = eval(*macro.defaults[i], scope);
            scope->variables[param] = v ? *v : Value(Undefined{"parameter '" + param + "' was not provided"});
        }
        for (const auto& [key, value] : call_args.keywords)
            if (!is_one_of(key, macro.targets)) fail(line, "macro '" + macro.attribute + "' takes no keyword argument '" + key + "'");
        std::string out;
        render_body(macro.bodies[0], scope, out);
        return out;
    }

private:
    // One level of evaluation while alive: statements, expressions and macro calls recurse, and a
    // self-calling macro would recurse without end (limits::depth).
    class Deeper {
    public:
        Deeper(Evaluator& evaluator, int line) : evaluator_(evaluator) {
            if (++evaluator_.depth_ > limits::depth)
                fail(line, "evaluation nests deeper than " + std::to_string(limits::depth) +
                               " levels (the recursion limit: a macro that calls itself without end?)");
        }
        ~Deeper() { --evaluator_.depth_; }
        Deeper(const Deeper&) = delete;
        Deeper& operator=(const Deeper&) = delete;

    private:
        Evaluator& evaluator_;
    };

    void count_iteration(int line) {
        if (++loop_iterations_ > limits::loop_iterations)
            fail(line, "the template loops more than " + std::to_string(limits::loop_iterations) + " times (the loop limit)");
    }

    int depth_ = 0;
    std::int64_t loop_iterations_ = 0;

    Flow render_statement(const Stmt& s, const ScopePtr& scope, std::string& out) {
        switch (s.kind) {
            case Stmt::Kind::Text: out += s.text; return Flow::Normal;
            case Stmt::Kind::Output: {
                Value v = eval(*s.exprs[0], scope);
                if (v.is_callable()) fail(s.line, "cannot print a function");
                out += v.str();
                return Flow::Normal;
            }
            case Stmt::Kind::If:
                for (std::size_t i = 0; i < s.exprs.size(); ++i)
                    if (eval(*s.exprs[i], scope).truthy()) return render_body(s.bodies[i], scope, out);
                return render_body(s.else_body, scope, out);
            case Stmt::Kind::For: return render_for(s, scope, out);
            case Stmt::Kind::Set: render_set(s, scope); return Flow::Normal;
            case Stmt::Kind::Macro: {
                const Stmt* macro = &s;
                std::weak_ptr<Scope> defined_in = scope;
                auto callable = std::make_shared<const Callable>(Callable{
                    s.attribute, [macro, defined_in](Evaluator& e, CallArguments& args, int line) {
                        return e.call_macro(*macro, defined_in, args, line);
                    }});
                scope->variables[s.attribute] = Value(callable);
                return Flow::Normal;
            }
            case Stmt::Kind::Break: return Flow::Break;
            case Stmt::Kind::Continue: return Flow::Continue;
            case Stmt::Kind::Generation: return render_body(s.bodies[0], scope, out);
        }
        return Flow::Normal;
    }

    static void bind_targets(const std::vector<std::string>& targets, const Value& v, Scope& scope, int line) {
        if (targets.size() == 1) {
            scope.variables[targets[0]] = v;
            return;
        }
        if (!v.is_list()) fail(line, "cannot unpack non-sequence " + v.type_name());
        const auto& items = v.as_list().items;
        if (items.size() != targets.size())
            fail(line, "cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(targets.size()) + " names");
        for (std::size_t i = 0; i < targets.size(); ++i) scope.variables[targets[i]] = items[i];
    }

    Flow render_for(const Stmt& s, const ScopePtr& scope, std::string& out) {
        std::vector<Value> items = iterate(eval(*s.exprs[0], scope), s.line);
        if (s.exprs.size() > 1) {  // {% for x in xs if cond %}: filtered before loop.* is counted
            std::vector<Value> kept;
            for (auto& item : items) {
                ScopePtr filter_scope = child_scope(scope);
                bind_targets(s.targets, item, *filter_scope, s.line);
                if (eval(*s.exprs[1], filter_scope).truthy()) kept.push_back(std::move(item));
            }
            items = std::move(kept);
        }
        if (items.empty()) return render_body(s.else_body, child_scope(scope), out);
        auto n = static_cast<std::int64_t>(items.size());
        for (std::int64_t i = 0; i < n; ++i) {
            count_iteration(s.line);
            ScopePtr body_scope = child_scope(scope);
            bind_targets(s.targets, items[static_cast<std::size_t>(i)], *body_scope, s.line);
            DictItems loop = {{"index", i + 1},        {"index0", i},         {"revindex", n - i},
                              {"revindex0", n - i - 1}, {"first", i == 0},     {"last", i == n - 1},
                              {"length", n},            {"depth", 1},          {"depth0", 0}};
            if (i > 0) loop.emplace_back("previtem", items[static_cast<std::size_t>(i - 1)]);
            if (i + 1 < n) loop.emplace_back("nextitem", items[static_cast<std::size_t>(i + 1)]);
            body_scope->variables["loop"] = Value::dict(std::move(loop));
            if (render_body(s.bodies[0], body_scope, out) == Flow::Break) break;
        }
        return Flow::Normal;
    }

    void render_set(const Stmt& s, const ScopePtr& scope) {
        Value v;
        if (s.bodies.empty()) {
            v = eval(*s.exprs[0], scope);
        } else {
            std::string captured;
            render_body(s.bodies[0], scope, captured);
            v = std::move(captured);
        }
        if (!s.attribute.empty()) {
            const Value* target = scope->lookup(s.targets[0]);
            if (target == nullptr || !target->is_namespace())
                fail(s.line, "can only set attributes on a namespace ('" + s.targets[0] + "' is not one)");
            // Namespaces are the one mutable value: one holding a namespace could come to hold
            // itself, a cycle that printing would follow forever and reference counts never free.
            if (v.holds_namespace())
                fail(s.line, "a namespace attribute cannot hold a namespace (the sandbox: it could make a cycle)");
            auto& attributes = target->as_namespace().attributes;
            for (auto& [key, value] : attributes)
                if (key == s.attribute) {
                    value = v;
                    return;
                }
            attributes.emplace_back(s.attribute, v);
            return;
        }
        bind_targets(s.targets, v, *scope, s.line);
    }

public:
    Value eval(const Expr& e, const ScopePtr& scope) {
        const Deeper level(*this, e.line);
        switch (e.kind) {
            case Expr::Kind::Literal: return e.value;
            case Expr::Kind::Name: {
                const Value* v = scope->lookup(e.name);
                return v ? *v : Value(Undefined{"'" + e.name + "' is undefined"});
            }
            case Expr::Kind::ListLit:
            case Expr::Kind::TupleLit: {
                std::vector<Value> items;
                for (const auto& c : e.children) items.push_back(eval(*c, scope));
                return Value::list(std::move(items), e.kind == Expr::Kind::TupleLit);
            }
            case Expr::Kind::DictLit: {
                DictItems items;
                for (std::size_t i = 0; i < e.children.size(); i += 2) {
                    Value key = eval(*e.children[i], scope);
                    if (!key.is_string()) fail(e.line, "unsupported dict key of type " + key.type_name());
                    Value value = eval(*e.children[i + 1], scope);
                    auto it = std::find_if(items.begin(), items.end(), [&](const auto& kv) { return kv.first == key.as_string(); });
                    if (it != items.end()) it->second = std::move(value);
                    else items.emplace_back(key.as_string(), std::move(value));
                }
                return Value::dict(std::move(items));
            }
            case Expr::Kind::Attribute: {
                Value obj = eval(*e.children[0], scope);
                if (obj.is_undefined()) fail(e.line, undefined_message(obj));
                if ((obj.is_dict() && is_one_of(e.name, dict_methods)) || (obj.is_string() && is_one_of(e.name, string_methods)))
                    fail(e.line, "unsupported reference to method '" + e.name + "' without calling it");
                if (obj.is_dict() || obj.is_namespace()) return get_item(obj, e.name, e.line);
                return Undefined{"'" + obj.type_name() + " object' has no attribute '" + e.name + "'"};
            }
            case Expr::Kind::Subscript:
                return get_item(eval(*e.children[0], scope), eval(*e.children[1], scope), e.line);
            case Expr::Kind::Slice: {
                auto part = [&](std::size_t i) { return e.children[i] ? eval(*e.children[i], scope) : Value(None{}); };
                return slice(eval(*e.children[0], scope), part(1), part(2), part(3), e.line);
            }
            case Expr::Kind::Call: return eval_call(e, scope);
            case Expr::Kind::Filter: {
                Value input = eval(*e.children[0], scope);
                CallArguments args = eval_arguments(e, scope, 1);
                return apply_filter(e.name, input, args, e.line);
            }
            case Expr::Kind::Test: {
                Value input = eval(*e.children[0], scope);
                CallArguments args = eval_arguments(e, scope, 1);
                return run_test(e.name, input, args, e.line);
            }
            case Expr::Kind::Not: return !eval(*e.children[0], scope).truthy();
            case Expr::Kind::Negate:
            case Expr::Kind::Plus: {
                Value v = eval(*e.children[0], scope);
                if (v.is_undefined()) fail(e.line, undefined_message(v));
                if (!v.is_number()) fail(e.line, "bad operand type for unary " + std::string(e.kind == Expr::Kind::Negate ? "-" : "+") + ": '" + v.type_name() + "'");
                if (e.kind == Expr::Kind::Plus) return v.is_bool() ? Value(std::int64_t{v.as_bool()}) : v;
                if (v.is_double()) return -v.as_double();
                return checked_sub(0, to_integer(v, e.line, ""), e.line);
            }
            case Expr::Kind::Binary:
                return arithmetic(e.name, eval(*e.children[0], scope), eval(*e.children[1], scope), e.line);
            case Expr::Kind::And: {
                Value left = eval(*e.children[0], scope);
                return left.truthy() ? eval(*e.children[1], scope) : left;
            }
            case Expr::Kind::Or: {
                Value left = eval(*e.children[0], scope);
                return left.truthy() ? left : eval(*e.children[1], scope);
            }
            case Expr::Kind::Compare: {
                Value left = eval(*e.children[0], scope);
                for (std::size_t i = 0; i < e.ops.size(); ++i) {
                    Value right = eval(*e.children[i + 1], scope);
                    if (!compare(e.ops[i], left, right, e.line)) return false;
                    left = std::move(right);
                }
                return true;
            }
            case Expr::Kind::Conditional:
                if (eval(*e.children[0], scope).truthy()) return eval(*e.children[1], scope);
                return e.children[2] ? eval(*e.children[2], scope) : Value(Undefined{"conditional expression had no else"});
        }
        fail(e.line, "unknown expression");
    }

private:
    CallArguments eval_arguments(const Expr& e, const ScopePtr& scope, std::size_t first_child) {
        CallArguments args;
        for (std::size_t i = first_child; i < e.children.size(); ++i) args.positional.push_back(eval(*e.children[i], scope));
        for (const auto& [key, expr] : e.keywords) args.keywords.emplace_back(key, eval(*expr, scope));
        return args;
    }

    Value eval_call(const Expr& e, const ScopePtr& scope) {
        const Expr& callee = *e.children[0];
        CallArguments args;
        if (callee.kind == Expr::Kind::Attribute) {
            Value obj = eval(*callee.children[0], scope);
            args = eval_arguments(e, scope, 1);
            if (obj.is_undefined()) fail(e.line, undefined_message(obj));
            if (obj.is_string()) return call_string_method(obj.as_string(), callee.name, args, e.line);
            if (obj.is_dict()) return call_dict_method(obj, callee.name, args, e.line);
            fail(e.line, "'" + obj.type_name() + "' object has no method '" + callee.name + "'");
        }
        Value f = eval(callee, scope);
        args = eval_arguments(e, scope, 1);
        if (f.is_undefined()) fail(e.line, undefined_message(f));
        if (!f.is_callable()) fail(e.line, "'" + f.type_name() + "' object is not callable");
        return f.as_callable().call(*this, args, e.line);
    }

    Value apply_filter(const std::string& name, const Value& v, CallArguments& call_args, int line) {
        Arguments args(call_args, "filter " + name, line);
        Value result = filter_result(name, v, args, line);
        args.done();
        return result;
    }

    Value filter_result(const std::string& name, const Value& v, Arguments& args, int line) {
        if (name == "safe") return v;
        if (name == "default" || name == "d") {
            Value fallback = args.get_or(0, "default_value", "");
            bool boolean = args.get_or(1, "boolean", false).truthy();
            return v.is_undefined() || (boolean && !v.truthy()) ? fallback : v;
        }
        if (name == "length" || name == "count") return static_cast<std::int64_t>(python_len(v, line));
        if (name == "string") return v.str();
        if (name == "trim") return python_strip(v.str(), args.get_string(0, "chars"), true, true);
        if (name == "upper") return python_upper(v.str());
        if (name == "lower") return python_lower(v.str());
        if (name == "capitalize") return python_capitalize(v.str());
        if (name == "replace") {
            auto old = args.get_string(0, "old");
            auto replacement = args.get_string(1, "new");
            if (!old || !replacement) fail(line, "filter replace takes 2 arguments");
            Value count = args.get_or(2, "count", None{});
            return python_replace(v.str(), *old, *replacement, count.is_none() ? -1 : to_integer(count, line, "count"));
        }
        if (name == "int") return to_int_filter(v, args.get_or(0, "default", 0));
        if (name == "float") return to_float_filter(v, args.get_or(0, "default", 0.0));
        if (name == "abs") {
            if (!v.is_number()) fail(line, "bad operand type for abs(): '" + v.type_name() + "'");
            return v.is_double() ? Value(std::fabs(v.as_double())) : Value(static_cast<std::int64_t>(std::llabs(to_integer(v, line, ""))));
        }
        if (name == "tojson") {
            if (args.get_or(0, "ensure_ascii", false).truthy()) fail(line, "unsupported tojson(ensure_ascii=True)");
            Value indent = args.get_or(1, "indent", None{});
            if (!args.get_or(2, "separators", None{}).is_none()) fail(line, "unsupported tojson(separators=...)");
            bool sort_keys = args.get_or(3, "sort_keys", false).truthy();
            if (!indent.is_none() && !indent.is_int()) fail(line, "unsupported tojson indent of type " + indent.type_name());
            try {
                return to_json(v, indent.is_none() ? -1 : static_cast<int>(std::max<std::int64_t>(0, indent.as_int())), sort_keys);
            } catch (const ChatTemplateError& err) {
                fail(line, err.what());
            }
        }
        if (name == "list") {
            if (v.is_list()) return Value::list(v.as_list().items);
            return Value::list(iterate(v, line));
        }
        if (name == "items") {
            if (v.is_undefined()) return Value::list({});
            if (!v.is_dict()) fail(line, "can only get item pairs from a mapping");
            CallArguments none;
            return call_dict_method(v, "items", none, line);
        }
        if (name == "first" || name == "last") {
            if (name == "last" && v.is_undefined()) fail(line, undefined_message(v));
            std::vector<Value> items = iterate(v, line);
            if (items.empty()) return Undefined{"no " + name + " item, sequence was empty"};
            return name == "first" ? items.front() : items.back();
        }
        if (name == "reverse") {
            if (v.is_string()) {
                std::vector<std::string> points = split_code_points(v.as_string());
                std::string out;
                for (auto it = points.rbegin(); it != points.rend(); ++it) out += *it;
                return out;
            }
            std::vector<Value> items = iterate(v, line);
            std::reverse(items.begin(), items.end());
            return Value::list(std::move(items));
        }
        if (name == "join") {
            std::string separator = args.get_string(0, "d").value_or("");
            auto attribute = args.get_string(1, "attribute");
            std::string out;
            bool first = true;
            for (const auto& item : iterate(v, line)) {
                out += (first ? "" : separator) + (attribute ? get_dotted(item, *attribute, line) : item).str();
                first = false;
            }
            return out;
        }
        if (name == "map") {
            auto attribute = args.get_string(0, "attribute");
            if (!attribute) fail(line, "unsupported map() without attribute=");
            std::optional<Value> fallback = args.get(1, "default");
            std::vector<Value> out;
            for (const auto& item : iterate(v, line)) {
                Value mapped = get_dotted(item, *attribute, line);
                out.push_back(mapped.is_undefined() && fallback ? *fallback : mapped);
            }
            return Value::list(std::move(out));
        }
        if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
            bool by_attribute = name.ends_with("attr");
            const auto& positional = args.positional();
            std::size_t first_test_arg = by_attribute ? 1 : 0;
            if (by_attribute && (positional.empty() || !positional[0].is_string()))
                fail(line, "filter " + name + " needs an attribute name");
            if (positional.size() > first_test_arg && !positional[first_test_arg].is_string())
                fail(line, "filter " + name + " needs a test name");
            for (std::size_t i = 0; i < positional.size(); ++i) args.get(i, "");
            std::vector<Value> out;
            for (const auto& item : iterate(v, line)) {
                Value subject = by_attribute ? get_dotted(item, positional[0].as_string(), line) : item;
                bool passed;
                if (positional.size() > first_test_arg) {
                    CallArguments test_args;
                    test_args.positional.assign(positional.begin() + static_cast<long>(first_test_arg) + 1, positional.end());
                    passed = run_test(positional[first_test_arg].as_string(), subject, test_args, line);
                } else {
                    passed = subject.truthy();
                }
                if (passed == name.starts_with("select")) out.push_back(item);
            }
            return Value::list(std::move(out));
        }
        fail(line, "unsupported filter '" + name + "'");
    }
};

std::string render(const Template& tmpl, const std::map<std::string, Value>& globals, const std::optional<std::tm>& now) {
    auto root = std::make_shared<Scope>();
    auto builtin = [&](const std::string& name, std::function<Value(Evaluator&, CallArguments&, int)> fn) {
        root->variables[name] = Value(std::make_shared<const Callable>(Callable{name, std::move(fn)}));
    };
    builtin("raise_exception", [](Evaluator&, CallArguments& call_args, int line) -> Value {
        Arguments args(call_args, "raise_exception", line);
        Value message = args.get_or(0, "message", "");
        args.done();
        throw ChatTemplateError(message.str());
    });
    builtin("strftime_now", [now](Evaluator&, CallArguments& call_args, int line) -> Value {
        Arguments args(call_args, "strftime_now", line);
        const Value format = args.get_or(0, "format", Value());
        args.done();
        if (!format.is_string()) fail(line, "strftime_now() needs a format string");
        const std::string& f = format.as_string();
        if (f.size() > limits::strftime_format_bytes)
            fail(line, "strftime_now() format longer than " + std::to_string(limits::strftime_format_bytes) + " bytes");
        if (f.empty()) return Value(std::string());
        // Each conversion writes at most a few dozen bytes; 0 from strftime is then an empty result.
        std::tm time{};
        if (now) {
            time = *now;
        } else {
            const std::time_t t = std::time(nullptr);
            localtime_r(&t, &time);
        }
        std::string out(64 * f.size() + 64, '\0');
        out.resize(std::strftime(out.data(), out.size(), f.c_str(), &time));
        return Value(std::move(out));
    });
    builtin("namespace", [](Evaluator&, CallArguments& call_args, int line) -> Value {
        auto ns = std::make_shared<NamespaceValue>();
        if (call_args.positional.size() > 1) fail(line, "namespace() takes at most one positional argument");
        if (!call_args.positional.empty()) {
            if (!call_args.positional[0].is_dict()) fail(line, "namespace() positional argument must be a dict");
            ns->attributes = call_args.positional[0].as_dict();
        }
        for (auto& [key, value] : call_args.keywords) {
            // An init-capture: clang before 16 cannot capture a structured binding (the fuzz build uses clang).
            auto it = std::find_if(ns->attributes.begin(), ns->attributes.end(), [&name = key](const auto& kv) { return kv.first == name; });
            if (it != ns->attributes.end()) it->second = value;
            else ns->attributes.emplace_back(key, value);
        }
        return Value(ns);
    });
    builtin("range", [](Evaluator&, CallArguments& call_args, int line) -> Value {
        if (!call_args.keywords.empty() || call_args.positional.empty() || call_args.positional.size() > 3)
            fail(line, "range() takes 1 to 3 positional arguments");
        std::vector<std::int64_t> bounds;
        for (const auto& v : call_args.positional) bounds.push_back(to_integer(v, line, "range() argument"));
        std::int64_t start = bounds.size() > 1 ? bounds[0] : 0;
        std::int64_t stop = bounds.size() > 1 ? bounds[1] : bounds[0];
        std::int64_t step = bounds.size() > 2 ? bounds[2] : 1;
        if (step == 0) fail(line, "range() arg 3 must not be zero");
        // The length first, in 128 bits (stop - start may not fit in 64).
        const __int128 span = static_cast<__int128>(stop) - start;
        const __int128 length = step > 0 ? (span > 0 ? (span + step - 1) / step : 0) : (span < 0 ? (-span + -static_cast<__int128>(step) - 1) / -static_cast<__int128>(step) : 0);
        if (length > limits::range_items)
            fail(line, "range() would have more than " + std::to_string(limits::range_items) + " items (the range limit)");
        std::vector<Value> out;
        for (__int128 i = 0; i < length; ++i) out.emplace_back(static_cast<std::int64_t>(start + i * step));
        return Value::list(std::move(out));
    });
    builtin("dict", [](Evaluator&, CallArguments& call_args, int line) -> Value {
        if (!call_args.positional.empty()) fail(line, "unsupported positional arguments to dict()");
        DictItems items;
        for (auto& [key, value] : call_args.keywords) items.emplace_back(key, value);
        return Value::dict(std::move(items));
    });
    for (const auto& [name, value] : globals) root->variables[name] = value;

    std::string out;
    Evaluator evaluator;
    evaluator.render_body(tmpl.body, root, out);
    return out;
}

}  // namespace twinfer::jinja
