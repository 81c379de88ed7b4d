// Values of the Jinja2 subset with Python's semantics: truthiness, str(), repr(), ==, json.dumps,
// and the str methods chat templates call, on UTF-8 text.
#include "tokenizer/chat_template.hpp"
#include "tokenizer/jinja.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace twinfer::jinja {

void Value::adopt(const Value& child) {
    nesting_ = std::max(nesting_, child.nesting_ + 1);
    holds_namespace_ = holds_namespace_ || child.holds_namespace_;
    if (nesting_ > limits::nesting)
        throw ChatTemplateError("a value nests deeper than " + std::to_string(limits::nesting) + " levels (the nesting limit)");
}

Value Value::list(std::vector<Value> items, bool is_tuple) {
    Value v;
    v.nesting_ = 1;
    for (const Value& item : items) v.adopt(item);
    v.storage_ = std::make_shared<const ListValue>(ListValue{std::move(items), is_tuple});
    return v;
}

Value Value::dict(DictItems items) {
    Value v;
    v.nesting_ = 1;
    for (const auto& [key, item] : items) v.adopt(item);
    v.storage_ = std::make_shared<const DictItems>(std::move(items));
    return v;
}

bool Value::truthy() const {
    if (is_undefined() || is_none()) return false;
    if (is_bool()) return as_bool();
    if (is_int()) return as_int() != 0;
    if (is_double()) return as_double() != 0.0;
    if (is_string()) return !as_string().empty();
    if (is_list()) return !as_list().items.empty();
    if (is_dict()) return !as_dict().empty();
    return true;  // namespace, callable
}

double Value::to_double() const {
    if (is_bool()) return as_bool() ? 1.0 : 0.0;
    if (is_int()) return static_cast<double>(as_int());
    return as_double();
}

std::string Value::type_name() const {
    if (is_undefined()) return "Undefined";
    if (is_none()) return "NoneType";
    if (is_bool()) return "bool";
    if (is_int()) return "int";
    if (is_double()) return "float";
    if (is_string()) return "str";
    if (is_list()) return as_list().is_tuple ? "tuple" : "list";
    if (is_dict()) return "dict";
    if (is_namespace()) return "Namespace";
    return "function";
}

const Value* Value::find(const std::string& key) const {
    const DictItems* items = is_dict() ? &as_dict() : is_namespace() ? &as_namespace().attributes : nullptr;
    if (items == nullptr) return nullptr;
    for (const auto& [k, v] : *items)
        if (k == key) return &v;
    return nullptr;
}

namespace {

// Python's float repr: the shortest round-tripping digits, in scientific notation when the
// decimal exponent is below -4 or at least 16, otherwise positional with at least one decimal.
std::string python_float_repr(double d) {
    if (std::isnan(d)) return "nan";
    if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
    char buf[64];
    auto result = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
    std::string sci(buf, result.ptr);  // e.g. "-1.2345e+02"
    std::string sign;
    if (sci[0] == '-') {
        sign = "-";
        sci.erase(0, 1);
    }
    std::size_t e = sci.find('e');
    int exponent = std::stoi(sci.substr(e + 1));
    std::string digits = sci.substr(0, e);
    digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
    if (exponent < -4 || exponent >= 16) {
        std::string mantissa = digits.substr(0, 1);
        if (digits.size() > 1) mantissa += "." + digits.substr(1);
        char exp_buf[16];
        std::snprintf(exp_buf, sizeof exp_buf, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
        return sign + mantissa + exp_buf;
    }
    std::string out;
    if (exponent < 0) {
        out = "0." + std::string(static_cast<std::size_t>(-exponent - 1), '0') + digits;
    } else if (static_cast<std::size_t>(exponent) + 1 >= digits.size()) {
        out = digits + std::string(static_cast<std::size_t>(exponent) + 1 - digits.size(), '0') + ".0";
    } else {
        out = digits.substr(0, static_cast<std::size_t>(exponent) + 1) + "." +
              digits.substr(static_cast<std::size_t>(exponent) + 1);
    }
    return sign + out;
}

bool is_python_printable(char32_t c) {
    if (c < 0x20 || (c >= 0x7F && c < 0xA0) || c == 0xAD) return false;
    if (c != ' ' && is_python_space(c)) return false;
    if ((c >= 0x200B && c <= 0x200F) || (c >= 0x202A && c <= 0x202E) || (c >= 0x2060 && c <= 0x2064) ||
        c == 0xFEFF || (c >= 0xD800 && c <= 0xDFFF) || (c >= 0xE000 && c <= 0xF8FF))
        return false;
    return true;
}

std::string python_string_repr(const std::string& s) {
    bool has_single = s.find('\'') != std::string::npos;
    bool has_double = s.find('"') != std::string::npos;
    char quote = has_single && !has_double ? '"' : '\'';
    std::string out(1, quote);
    for (std::size_t i = 0; i < s.size();) {
        std::size_t start = i;
        char32_t c = next_code_point(s, i);
        if (c == static_cast<char32_t>(quote) || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (c == '\t') {
            out += "\\t";
        } else if (!is_python_printable(c)) {
            char buf[16];
            if (c < 0x100) std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
            else if (c < 0x10000) std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
            else std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
            out += buf;
        } else {
            out.append(s, start, i - start);
        }
    }
    out += quote;
    return out;
}

}  // namespace

std::string Value::str() const {
    if (is_undefined()) return "";
    if (is_string()) return as_string();
    return repr();
}

std::string Value::repr() const {
    if (is_undefined()) return "Undefined";
    if (is_none()) return "None";
    if (is_bool()) return as_bool() ? "True" : "False";
    if (is_int()) return std::to_string(as_int());
    if (is_double()) return python_float_repr(as_double());
    if (is_string()) return python_string_repr(as_string());
    if (is_list()) {
        const ListValue& list = as_list();
        std::string out = list.is_tuple ? "(" : "[";
        for (std::size_t i = 0; i < list.items.size(); ++i) out += (i ? ", " : "") + list.items[i].repr();
        if (list.is_tuple && list.items.size() == 1) out += ",";
        return out + (list.is_tuple ? ")" : "]");
    }
    if (is_dict() || is_namespace()) {
        const DictItems& items = is_dict() ? as_dict() : as_namespace().attributes;
        std::string out = is_dict() ? "{" : "<Namespace {";
        for (std::size_t i = 0; i < items.size(); ++i)
            out += (i ? ", " : "") + python_string_repr(items[i].first) + ": " + items[i].second.repr();
        return out + (is_dict() ? "}" : "}>");
    }
    return "<function " + as_callable().name + ">";
}

bool python_equal(const Value& a, const Value& b) {
    if (a.is_number() && b.is_number()) {
        if (a.is_double() || b.is_double()) return a.to_double() == b.to_double();
        auto as_integer = [](const Value& v) { return v.is_bool() ? std::int64_t{v.as_bool()} : v.as_int(); };
        return as_integer(a) == as_integer(b);
    }
    if (a.is_undefined() || b.is_undefined()) return a.is_undefined() && b.is_undefined();
    if (a.is_none() || b.is_none()) return a.is_none() && b.is_none();
    if (a.is_string() && b.is_string()) return a.as_string() == b.as_string();
    if (a.is_list() && b.is_list()) {
        const ListValue& x = a.as_list();
        const ListValue& y = b.as_list();
        if (x.is_tuple != y.is_tuple || x.items.size() != y.items.size()) return false;
        for (std::size_t i = 0; i < x.items.size(); ++i)
            if (!python_equal(x.items[i], y.items[i])) return false;
        return true;
    }
    if (a.is_dict() && b.is_dict()) {
        if (a.as_dict().size() != b.as_dict().size()) return false;
        for (const auto& [key, value] : a.as_dict()) {
            const Value* other = b.find(key);
            if (other == nullptr || !python_equal(value, *other)) return false;
        }
        return true;
    }
    if (a.is_namespace() && b.is_namespace()) return &a.as_namespace() == &b.as_namespace();
    if (a.is_callable() && b.is_callable()) return &a.as_callable() == &b.as_callable();
    return false;
}

namespace {

std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (char ch : s) {
        auto c = static_cast<unsigned char>(ch);
        switch (ch) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += ch;
                }
        }
    }
    return out + "\"";
}

void write_json(const Value& v, int indent, bool sort_keys, int depth, std::string& out) {
    auto newline = [&](int level) {
        if (indent >= 0) out += "\n" + std::string(static_cast<std::size_t>(indent * level), ' ');
    };
    const char* item_separator = indent >= 0 ? "," : ", ";
    if (v.is_none()) {
        out += "null";
    } else if (v.is_bool()) {
        out += v.as_bool() ? "true" : "false";
    } else if (v.is_int()) {
        out += std::to_string(v.as_int());
    } else if (v.is_double()) {
        double d = v.as_double();
        out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d < 0 ? "-Infinity" : "Infinity") : v.repr();
    } else if (v.is_string()) {
        out += json_string(v.as_string());
    } else if (v.is_list()) {
        const auto& items = v.as_list().items;
        if (items.empty()) {
            out += "[]";
            return;
        }
        out += "[";
        for (std::size_t i = 0; i < items.size(); ++i) {
            if (i) out += item_separator;
            newline(depth + 1);
            write_json(items[i], indent, sort_keys, depth + 1, out);
        }
        newline(depth);
        out += "]";
    } else if (v.is_dict()) {
        DictItems items = v.as_dict();
        if (items.empty()) {
            out += "{}";
            return;
        }
        if (sort_keys)
            std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        out += "{";
        for (std::size_t i = 0; i < items.size(); ++i) {
            if (i) out += item_separator;
            newline(depth + 1);
            out += json_string(items[i].first) + ": ";
            write_json(items[i].second, indent, sort_keys, depth + 1, out);
        }
        newline(depth);
        out += "}";
    } else {
        throw ChatTemplateError("Object of type " + v.type_name() + " is not JSON serializable");
    }
}

}  // namespace

std::string to_json(const Value& value, int indent, bool sort_keys) {
    std::string out;
    write_json(value, indent, sort_keys, 0, out);
    return out;
}

// ---- UTF-8 and Python str methods ----------------------------------------------------------

char32_t next_code_point(const std::string& s, std::size_t& i) {
    auto byte = static_cast<unsigned char>(s[i]);
    std::size_t extra = byte >= 0xF0 ? 3 : byte >= 0xE0 ? 2 : byte >= 0xC0 ? 1 : 0;
    if (i + extra >= s.size()) extra = 0;
    for (std::size_t k = 1; k <= extra; ++k)
        if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) extra = 0;
    char32_t c = extra == 0 ? byte : byte & (0x3F >> extra);
    for (std::size_t k = 1; k <= extra; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    i += 1 + extra;
    return c;
}

void append_utf8(std::string& out, char32_t c) {
    if (c < 0x80) {
        out += static_cast<char>(c);
    } else if (c < 0x800) {
        out += static_cast<char>(0xC0 | (c >> 6));
        out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        out += static_cast<char>(0xE0 | (c >> 12));
        out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (c >> 18));
        out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (c & 0x3F));
    }
}

std::vector<std::string> split_code_points(const std::string& s) {
    std::vector<std::string> out;
    for (std::size_t i = 0; i < s.size();) {
        std::size_t start = i;
        next_code_point(s, i);
        out.push_back(s.substr(start, i - start));
    }
    return out;
}

std::size_t count_code_points(const std::string& s) {
    std::size_t n = 0;
    for (std::size_t i = 0; i < s.size(); ++n) next_code_point(s, i);
    return n;
}

// str.isspace(): the code points Python's str.strip() and regex \s treat as whitespace.
bool is_python_space(char32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

std::string python_strip(const std::string& s, const std::optional<std::string>& chars, bool left, bool right) {
    std::vector<std::string> points = split_code_points(s);
    std::vector<std::string> strip_set = chars ? split_code_points(*chars) : std::vector<std::string>{};
    auto strippable = [&](const std::string& p) {
        if (chars) return std::find(strip_set.begin(), strip_set.end(), p) != strip_set.end();
        std::size_t i = 0;
        return is_python_space(next_code_point(p, i));
    };
    std::size_t begin = 0, end = points.size();
    if (left)
        while (begin < end && strippable(points[begin])) ++begin;
    if (right)
        while (end > begin && strippable(points[end - 1])) --end;
    std::string out;
    for (std::size_t i = begin; i < end; ++i) out += points[i];
    return out;
}

namespace {

// Simple (one to one) case mappings for ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic;
// other scripts pass through unchanged.
char32_t to_upper(char32_t c) {
    if (c >= 'a' && c <= 'z') return c - 32;
    if (c < 0x80) return c;
    if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 32;
    if (c == 0xFF) return 0x178;
    if (c == 0xB5) return 0x39C;
    if (c == 0x131) return 'I';
    if (c == 0x17F) return 'S';
    if ((c >= 0x100 && c <= 0x12F) || (c >= 0x132 && c <= 0x137) || (c >= 0x14A && c <= 0x177))
        return (c & 1) ? c - 1 : c;
    if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c : c - 1;
    if (c >= 0x3B1 && c <= 0x3C9) return c == 0x3C2 ? 0x3A3 : c - 32;
    if (c == 0x3AC) return 0x386;
    if (c >= 0x3AD && c <= 0x3AF) return c - 37;
    if (c == 0x3CC) return 0x38C;
    if (c == 0x3CD || c == 0x3CE) return c - 63;
    if (c >= 0x430 && c <= 0x44F) return c - 32;
    if (c >= 0x450 && c <= 0x45F) return c - 80;
    if ((c >= 0x460 && c <= 0x481) || (c >= 0x48A && c <= 0x4BF) || (c >= 0x4D0 && c <= 0x52F))
        return (c & 1) ? c - 1 : c;
    if (c >= 0x4C1 && c <= 0x4CE) return (c & 1) ? c : c - 1;
    if (c == 0x4CF) return 0x4C0;
    return c;
}

char32_t to_lower(char32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c < 0x80) return c;
    if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) return c + 32;
    if (c == 0x178) return 0xFF;
    if ((c >= 0x100 && c <= 0x12F) || (c >= 0x132 && c <= 0x137) || (c >= 0x14A && c <= 0x177))
        return (c & 1) ? c : c + 1;
    if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c + 1 : c;
    if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
    if (c == 0x386) return 0x3AC;
    if (c >= 0x388 && c <= 0x38A) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 63;
    if (c >= 0x410 && c <= 0x42F) return c + 32;
    if (c >= 0x400 && c <= 0x40F) return c + 80;
    if ((c >= 0x460 && c <= 0x481) || (c >= 0x48A && c <= 0x4BF) || (c >= 0x4D0 && c <= 0x52F))
        return (c & 1) ? c : c + 1;
    if (c >= 0x4C1 && c <= 0x4CE) return (c & 1) ? c + 1 : c;
    if (c == 0x4C0) return 0x4CF;
    return c;
}

// Python's full mappings that expand: "ß".upper() == "SS", "İ".lower() == "i̇".
void append_upper(std::string& out, char32_t c) {
    if (c == 0xDF) out += "SS";
    else if (c == 0x149) out += "\xCA\xBCN";
    else append_utf8(out, to_upper(c));
}

void append_lower(std::string& out, char32_t c) {
    if (c == 0x130) out += "i\xCC\x87";
    else append_utf8(out, to_lower(c));
}

bool is_cased(char32_t c) { return to_upper(c) != c || to_lower(c) != c || c == 0xDF; }

}  // namespace

std::string python_upper(const std::string& s) {
    std::string out;
    for (std::size_t i = 0; i < s.size();) append_upper(out, next_code_point(s, i));
    return out;
}

std::string python_lower(const std::string& s) {
    std::string out;
    for (std::size_t i = 0; i < s.size();) append_lower(out, next_code_point(s, i));
    return out;
}

std::string python_capitalize(const std::string& s) {
    std::string out;
    for (std::size_t i = 0; i < s.size();) {
        bool first = i == 0;
        char32_t c = next_code_point(s, i);
        if (first && c == 0xDF) out += "Ss";  // title case of ß
        else if (first) append_upper(out, c);
        else append_lower(out, c);
    }
    return out;
}

std::string python_title(const std::string& s) {
    std::string out;
    bool previous_cased = false;
    for (std::size_t i = 0; i < s.size();) {
        char32_t c = next_code_point(s, i);
        if (previous_cased) append_lower(out, c);
        else if (c == 0xDF) out += "Ss";
        else append_upper(out, c);
        previous_cased = is_cased(c);
    }
    return out;
}

}  // namespace twinfer::jinja
