#pragma once
// The Jinja2 subset behind chat templates (tokenizer/chat_template.hpp is the public face).
//
// Syntax: {{ }}, {% %}, {# #}, `-`/`+` whitespace control, trim_blocks and lstrip_blocks as
// transformers sets them; tags for/else/endfor (with `if` filter, tuple targets, loop.*),
// if/elif/else, set (plain, tuple, `ns.attr`, block form), macro, break/continue,
// generation/endgeneration (transformers' assistant-mask tag, rendered as its body).
// Expressions follow jinja2's parser precedence: `x if c else y`, or, and, not, comparisons
// (chained, in, not in), + -, ~, * / // %, **, unary - +, then postfix . [] [a:b:c] () | is.
// Values mirror Python's: none, bool, int, float, str, list/tuple, dict (insertion-ordered),
// namespace, callables; jinja2's default Undefined (falsy, renders empty, errors on use as an
// object or operand). Strings are UTF-8; length, indexing and slicing count code points.
//
// Lexer and parser: jinja_parse.cpp. Values: jinja_value.cpp. Evaluation: jinja_eval.cpp.
#include <cstdint>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace twinfer::jinja {

// The sandbox: a template comes from a model file, that is, from a stranger. Each limit is far
// beyond what a real chat template needs and ends a hostile one with a ChatTemplateError naming
// the limit, after a bounded amount of work and stack.
namespace limits {
constexpr int nesting = 128;                         // parser: nested expressions and statements; tree height
constexpr int depth = 400;                           // evaluator: nested evaluations and macro calls
constexpr std::size_t string_bytes = 16u << 20;      // any string built, the output included
constexpr std::size_t list_items = 1u << 20;         // any list built
constexpr std::int64_t loop_iterations = 1'000'000;  // for-loop iterations of one render, summed
constexpr std::int64_t range_items = 100'000;        // range()'s length (jinja2's sandbox's MAX_RANGE)
constexpr std::size_t strftime_format_bytes = 256;   // strftime_now()'s format
}  // namespace limits

class Value;
struct ListValue {
    std::vector<Value> items;
    bool is_tuple = false;  // only changes how it prints: (a, b) rather than [a, b]
};
using DictItems = std::vector<std::pair<std::string, Value>>;  // insertion order, as Python's
struct NamespaceValue {
    DictItems attributes;  // mutable through {% set ns.x = ... %}, hence shared by reference
};
struct Undefined {
    std::string hint;  // what was missing, for error messages: "'x' is undefined"
};
struct None {};

class Evaluator;
struct CallArguments;
struct Callable {
    std::string name;
    std::function<Value(Evaluator&, CallArguments&, int line)> call;
};

class Value {
public:
    using Storage = std::variant<Undefined, None, bool, std::int64_t, double, std::string,
                                 std::shared_ptr<const ListValue>, std::shared_ptr<const DictItems>,
                                 std::shared_ptr<NamespaceValue>, std::shared_ptr<const Callable>>;

    Value() : storage_(Undefined{}) {}
    Value(Undefined u) : storage_(std::move(u)) {}
    Value(None) : storage_(None{}) {}
    Value(bool b) : storage_(b) {}
    Value(std::int64_t i) : storage_(i) {}
    Value(int i) : storage_(std::int64_t{i}) {}
    Value(double d) : storage_(d) {}
    Value(std::string s) : storage_(std::move(s)) {}
    Value(const char* s) : storage_(std::string(s)) {}
    static Value list(std::vector<Value> items, bool is_tuple = false);
    static Value dict(DictItems items);
    Value(std::shared_ptr<NamespaceValue> ns) : storage_(std::move(ns)), holds_namespace_(true) {}
    Value(std::shared_ptr<const Callable> c) : storage_(std::move(c)) {}

    bool is_undefined() const { return std::holds_alternative<Undefined>(storage_); }
    bool is_none() const { return std::holds_alternative<None>(storage_); }
    bool is_bool() const { return std::holds_alternative<bool>(storage_); }
    bool is_int() const { return std::holds_alternative<std::int64_t>(storage_); }
    bool is_double() const { return std::holds_alternative<double>(storage_); }
    bool is_number() const { return is_bool() || is_int() || is_double(); }
    bool is_string() const { return std::holds_alternative<std::string>(storage_); }
    bool is_list() const { return std::holds_alternative<std::shared_ptr<const ListValue>>(storage_); }
    bool is_dict() const { return std::holds_alternative<std::shared_ptr<const DictItems>>(storage_); }
    bool is_namespace() const { return std::holds_alternative<std::shared_ptr<NamespaceValue>>(storage_); }
    bool is_callable() const { return std::holds_alternative<std::shared_ptr<const Callable>>(storage_); }

    bool as_bool() const { return std::get<bool>(storage_); }
    std::int64_t as_int() const { return std::get<std::int64_t>(storage_); }
    double as_double() const { return std::get<double>(storage_); }
    const std::string& as_string() const { return std::get<std::string>(storage_); }
    const ListValue& as_list() const { return *std::get<std::shared_ptr<const ListValue>>(storage_); }
    const DictItems& as_dict() const { return *std::get<std::shared_ptr<const DictItems>>(storage_); }
    NamespaceValue& as_namespace() const { return *std::get<std::shared_ptr<NamespaceValue>>(storage_); }
    const Callable& as_callable() const { return *std::get<std::shared_ptr<const Callable>>(storage_); }
    const Undefined& as_undefined() const { return std::get<Undefined>(storage_); }

    // Python's bool(x), str(x), repr(x); numbers widen bool -> int -> float as Python does.
    bool truthy() const;
    std::string str() const;
    std::string repr() const;
    double to_double() const;  // bool, int or float
    // Python's type name, for error messages ("str", "int", "list", ...).
    std::string type_name() const;

    // Item lookup on a dict or namespace by key; nullptr when absent.
    const Value* find(const std::string& key) const;

    // Levels of lists and dicts in this value (0 for a scalar), and whether a namespace is among
    // them: kept as values are built, so that a value nested past limits::nesting (which printing
    // and destroying would recurse through) is refused when built, and a namespace can be kept
    // from holding one (a cycle).
    int nesting() const { return nesting_; }
    bool holds_namespace() const { return holds_namespace_; }

private:
    void adopt(const Value& child);   // nesting and holds_namespace of a container with this child
    Storage storage_;
    int nesting_ = 0;
    bool holds_namespace_ = false;
};

bool python_equal(const Value& a, const Value& b);

// json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys), as transformers'
// tojson filter calls it. indent < 0 means None (one line, ", " and ": " separators).
std::string to_json(const Value& value, int indent, bool sort_keys);

// UTF-8 helpers with Python's str semantics. next_code_point decodes at s[i] and advances i;
// a malformed byte decodes as itself.
char32_t next_code_point(const std::string& s, std::size_t& i);
void append_utf8(std::string& out, char32_t c);
std::vector<std::string> split_code_points(const std::string& s);
std::size_t count_code_points(const std::string& s);
bool is_python_space(char32_t c);
std::string python_strip(const std::string& s, const std::optional<std::string>& chars, bool left,
                         bool right);
std::string python_upper(const std::string& s);
std::string python_lower(const std::string& s);
std::string python_capitalize(const std::string& s);
std::string python_title(const std::string& s);

// ---- Syntax tree ----------------------------------------------------------------------------

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
    enum class Kind {
        Literal,     // value
        Name,        // name
        ListLit,     // children
        TupleLit,    // children
        DictLit,     // children: key0, value0, key1, value1, ...
        Attribute,   // children[0] . name
        Subscript,   // children[0] [ children[1] ]
        Slice,       // children[0] [ children[1] : children[2] : children[3] ] (null = omitted)
        Call,        // children[0] ( arguments )
        Filter,      // children[0] | name ( arguments )
        Test,        // children[0] is name arguments
        Not,         // not children[0]
        Negate,      // - children[0]
        Plus,        // + children[0]
        Binary,      // children[0] op children[1]; op in + - * / // % ** ~
        And,         // children[0] and children[1]
        Or,          // children[0] or children[1]
        Compare,     // children[0] ops[0] children[1] ops[1] children[2] ...
        Conditional  // children[1] if children[0] else children[2] (null: undefined)
    };
    Kind kind;
    int line = 0;
    int height = 1;    // levels of this tree: 1 + the tallest child's (limits::nesting)
    Value value;
    std::string name;  // Name, Attribute, Filter, Test; the operator for Binary
    std::vector<ExprPtr> children;
    std::vector<std::string> ops;                             // Compare
    std::vector<std::pair<std::string, ExprPtr>> keywords;   // Call, Filter, Test
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
    enum class Kind {
        Text,      // text
        Output,    // {{ exprs[0] }}
        If,        // exprs = conditions of if/elif..., bodies[i] for each, else_body
        For,       // targets in exprs[0] [if exprs[1]]; bodies[0]; else_body
        Set,       // targets (or target_object.attribute) = exprs[0]; or block form: bodies[0]
        Macro,     // name(targets = defaults in exprs); bodies[0]
        Break,
        Continue,
        Generation  // bodies[0]
    };
    Kind kind;
    int line = 0;
    std::string text;
    std::vector<ExprPtr> exprs;
    std::vector<Body> bodies;
    Body else_body;
    std::vector<std::string> targets;
    std::string attribute;  // Set on a namespace: {% set targets[0].attribute = ... %}
    std::vector<ExprPtr> defaults;  // Macro: defaults for the last parameters (null = required)
};

struct Template {
    Body body;
};

// Throws ChatTemplateError naming what is unsupported or malformed and its line.
Template parse(const std::string& source);

struct CallArguments {
    std::vector<Value> positional;
    std::vector<std::pair<std::string, Value>> keywords;
};

// Renders with the given global variables; runtime errors are ChatTemplateError. now: the local
// time strftime_now(format) formats (transformers' datetime.now().strftime(format)); none: the
// time of the call.
std::string render(const Template& tmpl, const std::map<std::string, Value>& globals, const std::optional<std::tm>& now);

}  // namespace twinfer::jinja
