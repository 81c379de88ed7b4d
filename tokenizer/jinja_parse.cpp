// Lexer and parser for the Jinja2 subset (see jinja.hpp). Both follow jinja2 3.1's lexer.py and
// parser.py closely, since a chat template must render byte for byte as jinja2 renders it: the
// whitespace rules of the lexer and the operator precedence of the parser are where an
// independent reading would drift.
#include "tokenizer/chat_template.hpp"
#include "tokenizer/jinja.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <set>

namespace twinfer::jinja {
namespace {

[[noreturn]] void fail(int line, const std::string& what) {
    throw ChatTemplateError("chat template line " + std::to_string(line) + ": " + what);
}

// A decimal integer literal's value; one beyond int64 is an error (Python's would be a big int).
std::int64_t integer_literal(const std::string& digits, int line) {
    std::int64_t value = 0;
    const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (error != std::errc() || end != digits.data() + digits.size()) fail(line, "integer literal " + digits + " out of range (64 bits)");
    return value;
}

[[noreturn]] void fail_nesting(int line) {
    fail(line, "the template nests deeper than " + std::to_string(limits::nesting) + " levels (the nesting limit)");
}

// ---- Lexer ----------------------------------------------------------------------------------

struct Token {
    enum class Kind { Text, VariableBegin, VariableEnd, BlockBegin, BlockEnd, Name, String, Integer,
                      Float, Operator, End };
    Kind kind;
    std::string text;  // Text data, name, decoded string, operator, or number spelling
    int line;
};

// Length of the run of Python whitespace (regex \s) starting at pos.
std::size_t whitespace_run(const std::string& s, std::size_t pos) {
    std::size_t i = pos;
    while (i < s.size()) {
        std::size_t j = i;
        if (!is_python_space(next_code_point(s, j))) break;
        i = j;
    }
    return i - pos;
}

bool all_whitespace(const std::string& s, std::size_t from) {
    return from < s.size() && from + whitespace_run(s, from) == s.size();
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// A string literal's body decoded as Python's "unicode-escape" codec decodes it (jinja2 does
// exactly that): \n \t \\ \' \xhh \uXXXX ..., an unknown escape keeps its backslash.
std::string decode_string_literal(const std::string& body, int line) {
    std::string out;
    for (std::size_t i = 0; i < body.size(); ++i) {
        if (body[i] != '\\' || i + 1 == body.size()) {
            out += body[i];
            continue;
        }
        char e = body[++i];
        switch (e) {
            case '\n': break;  // line continuation
            case '\\': out += '\\'; break;
            case '\'': out += '\''; break;
            case '"': out += '"'; break;
            case 'a': out += '\a'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'v': out += '\v'; break;
            case 'x': case 'u': case 'U': {
                std::size_t digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                char32_t c = 0;
                for (std::size_t k = 0; k < digits; ++k) {
                    int d = i + 1 + k < body.size() ? hex_digit(body[i + 1 + k]) : -1;
                    if (d < 0) fail(line, std::string("truncated \\") + e + " escape in string literal");
                    c = c * 16 + static_cast<char32_t>(d);
                }
                i += digits;
                append_utf8(out, c);
                break;
            }
            case 'N': fail(line, "\\N{...} escapes in string literals are not supported");
            default:
                if (e >= '0' && e <= '7') {
                    char32_t c = static_cast<char32_t>(e - '0');
                    for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k)
                        c = c * 8 + static_cast<char32_t>(body[++i] - '0');
                    append_utf8(out, c);
                } else {
                    out += '\\';
                    out += e;
                }
        }
    }
    return out;
}

class Lexer {
public:
    explicit Lexer(const std::string& source) : src_(normalize(source)) {}

    std::vector<Token> run() {
        bool line_starting = true;  // did the previous lexer match end with a newline?
        std::size_t pos = 0;
        while (pos < src_.size()) {
            std::size_t tag = find_tag_start(pos);
            if (tag == std::string::npos) {
                emit_text(src_.substr(pos));
                break;
            }
            char kind = src_[tag + 1];  // '{', '%' or '#'
            char sign = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
            std::string text = src_.substr(pos, tag - pos);
            int text_newlines = static_cast<int>(std::count(text.begin(), text.end(), '\n'));
            if (sign == '-') {
                text = python_strip(text, std::nullopt, false, true);
            } else if (sign != '+' && kind != '{') {  // lstrip_blocks: block and comment tags only
                std::size_t line_begin = text.rfind('\n') + 1;  // npos + 1 == 0
                if ((line_begin > 0 || line_starting) && all_whitespace(text, line_begin))
                    text.resize(line_begin);
            }
            emit_text(std::move(text));
            line_ += text_newlines;
            pos = tag + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
            if (kind == '#') {
                pos = skip_comment(pos);
            } else {
                tokens_.push_back({kind == '{' ? Token::Kind::VariableBegin : Token::Kind::BlockBegin, "", line_});
                if (kind == '%') reject_raw(pos);
                pos = lex_tag(pos, kind == '%');
            }
            line_starting = pos > 0 && src_[pos - 1] == '\n';
        }
        tokens_.push_back({Token::Kind::End, "", line_});
        return std::move(tokens_);
    }

private:
    // jinja2 turns \r\n and \r into \n and drops one trailing newline (keep_trailing_newline=False).
    static std::string normalize(const std::string& source) {
        std::string out;
        out.reserve(source.size());
        for (std::size_t i = 0; i < source.size(); ++i) {
            if (source[i] == '\r') {
                out += '\n';
                if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
            } else {
                out += source[i];
            }
        }
        if (!out.empty() && out.back() == '\n') out.pop_back();
        return out;
    }

    std::size_t find_tag_start(std::size_t from) const {
        for (std::size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1))
            if (i + 1 < src_.size() && std::strchr("{%#", src_[i + 1]) != nullptr && src_[i + 1] != '\0')
                return i;
        return std::string::npos;
    }

    void emit_text(std::string text) {
        if (!text.empty()) tokens_.push_back({Token::Kind::Text, std::move(text), line_});
    }

    // After "{%" or "{%-"/"{%+": rejected if it opens a raw block, which this subset lacks.
    void reject_raw(std::size_t pos) const {
        std::size_t i = pos + whitespace_run(src_, pos);
        if (src_.compare(i, 3, "raw") == 0 && (i + 3 == src_.size() || (!std::isalnum(static_cast<unsigned char>(src_[i + 3])) && src_[i + 3] != '_')))
            fail(line_, "unsupported tag 'raw'");
    }

    // Where a tag's closing delimiter ends, if one starts at pos: "-%}" eats following
    // whitespace, "%}" one newline (trim_blocks), "+%}" nothing. Variables never trim.
    std::size_t match_end(std::size_t pos, const char* close, bool trim_blocks) const {
        if (src_[pos] == '-' && src_.compare(pos + 1, 2, close) == 0)
            return pos + 3 + whitespace_run(src_, pos + 3);
        if (src_[pos] == '+' && trim_blocks && src_.compare(pos + 1, 2, close) == 0) return pos + 3;
        if (src_.compare(pos, 2, close) == 0) {
            std::size_t end = pos + 2;
            if (trim_blocks && end < src_.size() && src_[end] == '\n') ++end;
            return end;
        }
        return std::string::npos;
    }

    std::size_t skip_comment(std::size_t pos) {
        int start_line = line_;
        for (std::size_t i = pos; i < src_.size(); ++i) {
            std::size_t end = match_end(i, "#}", true);
            if (end != std::string::npos) {
                line_ += static_cast<int>(std::count(src_.begin() + static_cast<long>(pos), src_.begin() + static_cast<long>(end), '\n'));
                return end;
            }
        }
        fail(start_line, "missing end of comment tag");
    }

    std::size_t lex_tag(std::size_t pos, bool is_block) {
        const char* close = is_block ? "%}" : "}}";
        std::string balance;  // expected closing brackets, innermost last
        int start_line = line_;
        while (true) {
            if (pos >= src_.size()) fail(start_line, std::string("unexpected end of template, expected '") + close + "'");
            if (balance.empty()) {
                std::size_t end = match_end(pos, close, is_block);
                if (end != std::string::npos) {
                    line_ += static_cast<int>(std::count(src_.begin() + static_cast<long>(pos), src_.begin() + static_cast<long>(end), '\n'));
                    tokens_.push_back({is_block ? Token::Kind::BlockEnd : Token::Kind::VariableEnd, "", line_});
                    return end;
                }
            }
            std::size_t ws = whitespace_run(src_, pos);
            if (ws > 0) {
                line_ += static_cast<int>(std::count(src_.begin() + static_cast<long>(pos), src_.begin() + static_cast<long>(pos + ws), '\n'));
                pos += ws;
                continue;
            }
            char c = src_[pos];
            if (std::isdigit(static_cast<unsigned char>(c))) {
                pos = lex_number(pos);
            } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
                std::size_t end = pos;
                while (end < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[end])) || src_[end] == '_')) ++end;
                tokens_.push_back({Token::Kind::Name, src_.substr(pos, end - pos), line_});
                pos = end;
            } else if (c == '\'' || c == '"') {
                std::size_t end = pos + 1;
                while (end < src_.size() && src_[end] != c) end += src_[end] == '\\' ? 2 : 1;
                if (end >= src_.size()) fail(line_, "unterminated string literal");
                std::string body = src_.substr(pos + 1, end - pos - 1);
                tokens_.push_back({Token::Kind::String, decode_string_literal(body, line_), line_});
                line_ += static_cast<int>(std::count(body.begin(), body.end(), '\n'));
                pos = end + 1;
            } else {
                static const char* const operators[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                                        "*", "%", "~", "[", "]", "(", ")", "{", "}", ">",
                                                        "<", "=", ".", ":", "|", ",", ";"};
                const char* op = nullptr;
                for (const char* candidate : operators)
                    if (src_.compare(pos, std::strlen(candidate), candidate) == 0) {
                        op = candidate;
                        break;
                    }
                if (op == nullptr) fail(line_, std::string("unexpected character '") + c + "'");
                if (std::strchr("([{", op[0]) != nullptr && op[1] == '\0') {
                    balance += op[0] == '(' ? ')' : op[0] == '[' ? ']' : '}';
                } else if (std::strchr(")]}", op[0]) != nullptr && op[1] == '\0') {
                    if (balance.empty() || balance.back() != op[0]) fail(line_, std::string("unexpected '") + op + "'");
                    balance.pop_back();
                }
                tokens_.push_back({Token::Kind::Operator, op, line_});
                pos += std::strlen(op);
            }
        }
    }

    // Integers (decimal with _ separators; 0b/0o/0x) and floats, as jinja2's integer_re/float_re.
    std::size_t lex_number(std::size_t pos) {
        auto digits = [&](std::size_t i, auto is_digit) {
            std::size_t j = i;
            while (j < src_.size() && (is_digit(src_[j]) || (src_[j] == '_' && j + 1 < src_.size() && is_digit(src_[j + 1]) && j > i)))
                ++j;
            return j;
        };
        auto decimal = [](char ch) { return ch >= '0' && ch <= '9'; };
        if (src_[pos] == '0' && pos + 2 < src_.size() && std::strchr("bBoOxX", src_[pos + 1]) != nullptr) {
            int base = std::tolower(src_[pos + 1]) == 'b' ? 2 : std::tolower(src_[pos + 1]) == 'o' ? 8 : 16;
            std::size_t end = pos + 2;
            std::int64_t v = 0;
            while (end < src_.size() && ((hex_digit(src_[end]) >= 0 && hex_digit(src_[end]) < base) || src_[end] == '_')) {
                if (src_[end] != '_' && (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, hex_digit(src_[end]), &v)))
                    fail(line_, "integer literal out of range (64 bits)");
                ++end;
            }
            tokens_.push_back({Token::Kind::Integer, std::to_string(v), line_});
            return end;
        }
        std::size_t end = digits(pos, decimal);
        bool is_float = false;
        if (end + 1 < src_.size() && src_[end] == '.' && decimal(src_[end + 1])) {
            end = digits(end + 1, decimal);
            is_float = true;
        }
        if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
            std::size_t e = end + 1;
            if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
            if (e < src_.size() && decimal(src_[e])) {
                end = digits(e, decimal);
                is_float = true;
            }
        }
        std::string spelling = src_.substr(pos, end - pos);
        spelling.erase(std::remove(spelling.begin(), spelling.end(), '_'), spelling.end());
        tokens_.push_back({is_float ? Token::Kind::Float : Token::Kind::Integer, spelling, line_});
        return end;
    }

    std::string src_;
    std::vector<Token> tokens_;
    int line_ = 1;
};

// ---- Parser ---------------------------------------------------------------------------------

const std::set<std::string> known_filters = {
    "trim", "length", "count", "tojson", "upper", "lower", "default", "d", "first", "last", "join",
    "replace", "capitalize", "string", "int", "float", "list", "items", "abs", "reverse", "map",
    "select", "reject", "selectattr", "rejectattr", "unique", "sort", "dictsort", "indent", "round",
    "sum", "min", "max", "wordcount", "center", "title", "safe", "e", "escape", "xmlattr",
    "format", "batch", "slice", "groupby", "random", "truncate", "urlize", "striptags", "pprint",
    "filesizeformat", "attr", "forceescape", "urlencode", "wordwrap"};
const std::set<std::string> supported_filters = {
    "trim", "length", "count", "tojson", "upper", "lower", "default", "d", "first", "last", "join",
    "replace", "capitalize", "string", "int", "float", "list", "items", "abs", "reverse", "map",
    "select", "reject", "selectattr", "rejectattr", "safe"};
const std::set<std::string> supported_tests = {
    "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "mapping",
    "iterable", "sequence", "true", "false", "odd", "even", "divisibleby", "eq", "equalto",
    "ne", "lt", "le", "gt", "ge", "in", "lower", "upper", "callable",
    "sameas"};
const std::set<std::string> supported_methods = {
    "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "upper", "lower", "replace",
    "title", "capitalize", "items", "keys", "values", "get"};

std::unique_ptr<Stmt> make_stmt(Stmt::Kind kind, int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = line;
    return s;
}

class Parser {
public:
    explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

    Template parse_template() {
        Template t;
        std::string end_tag = parse_body(t.body, {});
        if (!end_tag.empty()) fail(current().line, "unexpected '" + end_tag + "'");
        return t;
    }

private:
    const Token& current() const { return tokens_[pos_]; }
    const Token& peek(std::size_t ahead = 1) const { return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)]; }
    Token advance() { return tokens_[pos_ < tokens_.size() - 1 ? pos_++ : pos_]; }
    bool at_operator(const char* op) const { return current().kind == Token::Kind::Operator && current().text == op; }
    bool at_name(const char* name) const { return current().kind == Token::Kind::Name && current().text == name; }
    bool skip_operator(const char* op) {
        if (!at_operator(op)) return false;
        ++pos_;
        return true;
    }
    bool skip_name(const char* name) {
        if (!at_name(name)) return false;
        ++pos_;
        return true;
    }
    static std::string describe(const Token& t) {
        switch (t.kind) {
            case Token::Kind::End: return "end of template";
            case Token::Kind::BlockEnd: return "end of statement block";
            case Token::Kind::VariableEnd: return "end of print statement";
            case Token::Kind::Text: return "template data";
            default: return "'" + t.text + "'";
        }
    }
    void expect_operator(const char* op) {
        if (!skip_operator(op)) fail(current().line, std::string("expected '") + op + "', got " + describe(current()));
    }
    std::string expect_name() {
        if (current().kind != Token::Kind::Name) fail(current().line, "expected a name, got " + describe(current()));
        return advance().text;
    }
    void expect_block_end() {
        if (current().kind != Token::Kind::BlockEnd)
            fail(current().line, "expected end of statement block, got " + describe(current()));
        ++pos_;
    }

    // Counts one level of nesting while alive (limits::nesting): the parser recurses per level.
    class Nested {
    public:
        Nested(Parser& parser, int line) : parser_(parser) {
            if (++parser_.nesting_ > limits::nesting) fail_nesting(line);
        }
        ~Nested() { --parser_.nesting_; }
        Nested(const Nested&) = delete;
        Nested& operator=(const Nested&) = delete;

    private:
        Parser& parser_;
    };

    // Parses statements into body until a block tag whose name is in end_tags (left unconsumed
    // after its name, which is returned) or the end of the template (returns "").
    std::string parse_body(Body& body, const std::set<std::string>& end_tags) {
        const Nested level(*this, current().line);
        while (true) {
            const Token& t = current();
            switch (t.kind) {
                case Token::Kind::End:
                    if (!end_tags.empty())
                        fail(t.line, "unexpected end of template, expected one of: " + join(end_tags));
                    return "";
                case Token::Kind::Text: {
                    auto s = make_stmt(Stmt::Kind::Text, t.line);
                    s->text = t.text;
                    body.push_back(std::move(s));
                    ++pos_;
                    break;
                }
                case Token::Kind::VariableBegin: {
                    ++pos_;
                    auto s = make_stmt(Stmt::Kind::Output, t.line);
                    s->exprs.push_back(parse_expression());
                    if (current().kind != Token::Kind::VariableEnd)
                        fail(current().line, "expected end of print statement, got " + describe(current()));
                    ++pos_;
                    body.push_back(std::move(s));
                    break;
                }
                case Token::Kind::BlockBegin: {
                    ++pos_;
                    if (current().kind != Token::Kind::Name) fail(current().line, "expected a tag name, got " + describe(current()));
                    std::string tag = current().text;
                    if (end_tags.count(tag) != 0) {
                        ++pos_;
                        return tag;
                    }
                    body.push_back(parse_statement());
                    break;
                }
                default: fail(t.line, "unexpected " + describe(t));
            }
        }
    }

    static std::string join(const std::set<std::string>& names) {
        std::string out;
        for (const auto& n : names) out += (out.empty() ? "'" : ", '") + n + "'";
        return out;
    }

    std::unique_ptr<Stmt> parse_statement() {
        int line = current().line;
        std::string tag = advance().text;
        if (tag == "if") return parse_if(line);
        if (tag == "for") return parse_for(line);
        if (tag == "set") return parse_set(line);
        if (tag == "macro") return parse_macro(line);
        if (tag == "break" || tag == "continue") {
            if (loop_depth_ == 0) fail(line, "'" + tag + "' outside of a loop");
            expect_block_end();
            return make_stmt(tag == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue, line);
        }
        if (tag == "generation") {
            expect_block_end();
            auto s = make_stmt(Stmt::Kind::Generation, line);
            s->bodies.emplace_back();
            parse_body(s->bodies[0], {"endgeneration"});
            expect_block_end();
            return s;
        }
        fail(line, "unsupported tag '" + tag + "'");
    }

    std::unique_ptr<Stmt> parse_if(int line) {
        auto s = make_stmt(Stmt::Kind::If, line);
        while (true) {
            s->exprs.push_back(parse_expression());
            expect_block_end();
            s->bodies.emplace_back();
            std::string end = parse_body(s->bodies.back(), {"elif", "else", "endif"});
            if (end == "elif") continue;
            if (end == "else") {
                expect_block_end();
                parse_body(s->else_body, {"endif"});
            }
            expect_block_end();
            return s;
        }
    }

    std::vector<std::string> parse_targets() {
        std::vector<std::string> targets;
        bool parenthesized = skip_operator("(");
        do {
            targets.push_back(expect_name());
        } while (skip_operator(","));
        if (parenthesized) expect_operator(")");
        return targets;
    }

    std::unique_ptr<Stmt> parse_for(int line) {
        auto s = make_stmt(Stmt::Kind::For, line);
        s->targets = parse_targets();
        if (!skip_name("in")) fail(current().line, "expected 'in' in for loop, got " + describe(current()));
        s->exprs.push_back(parse_tuple_expression(/*with_condexpr=*/false));
        if (skip_name("if")) s->exprs.push_back(parse_expression());
        if (at_name("recursive")) fail(current().line, "unsupported recursive for loop");
        expect_block_end();
        s->bodies.emplace_back();
        ++loop_depth_;
        std::string end = parse_body(s->bodies[0], {"else", "endfor"});
        --loop_depth_;
        if (end == "else") {
            expect_block_end();
            parse_body(s->else_body, {"endfor"});
        }
        expect_block_end();
        return s;
    }

    std::unique_ptr<Stmt> parse_set(int line) {
        auto s = make_stmt(Stmt::Kind::Set, line);
        std::string first = expect_name();
        if (skip_operator(".")) {
            s->targets.push_back(first);
            s->attribute = expect_name();
        } else {
            s->targets.push_back(first);
            while (skip_operator(",")) s->targets.push_back(expect_name());
        }
        if (skip_operator("=")) {
            s->exprs.push_back(parse_tuple_expression(true));
            expect_block_end();
            return s;
        }
        if (s->targets.size() != 1 || !s->attribute.empty())
            fail(line, "a block set takes one plain variable name");
        if (current().kind != Token::Kind::BlockEnd) fail(current().line, "unsupported filter on block set");
        ++pos_;
        s->bodies.emplace_back();
        parse_body(s->bodies[0], {"endset"});
        expect_block_end();
        return s;
    }

    std::unique_ptr<Stmt> parse_macro(int line) {
        auto s = make_stmt(Stmt::Kind::Macro, line);
        s->attribute = expect_name();  // the macro's name
        expect_operator("(");
        while (!skip_operator(")")) {
            if (!s->targets.empty()) expect_operator(",");
            if (skip_operator(")")) break;
            s->targets.push_back(expect_name());
            if (skip_operator("=")) {
                s->defaults.push_back(parse_expression());
            } else {
                if (!s->defaults.empty() && s->defaults.back() != nullptr)
                    fail(current().line, "non-default macro argument follows default argument");
                s->defaults.push_back(nullptr);
            }
        }
        expect_block_end();
        s->bodies.emplace_back();
        int saved_depth = loop_depth_;
        loop_depth_ = 0;
        parse_body(s->bodies[0], {"endmacro"});
        loop_depth_ = saved_depth;
        if (current().kind == Token::Kind::Name) ++pos_;  // {% endmacro name %}
        expect_block_end();
        return s;
    }

    // ---- Expressions, in jinja2's precedence order ----

    // Adds a child (null: an omitted part) and keeps the parent's height: evaluating and destroying
    // a tree recurse once a level, so no tree may be taller than limits::nesting, however it was
    // built (the operator chains below build theirs in loops).
    static void attach(Expr& parent, ExprPtr child) {
        if (child) raise_height(parent, child->height);
        parent.children.push_back(std::move(child));
    }
    static void attach_keyword(Expr& parent, std::string key, ExprPtr value) {
        raise_height(parent, value->height);
        parent.keywords.emplace_back(std::move(key), std::move(value));
    }
    static void raise_height(Expr& parent, int child_height) {
        parent.height = std::max(parent.height, child_height + 1);
        if (parent.height > limits::nesting) fail_nesting(parent.line);
    }

    static ExprPtr make(Expr::Kind kind, int line) {
        auto e = std::make_unique<Expr>();
        e->kind = kind;
        e->line = line;
        return e;
    }

    ExprPtr parse_tuple_expression(bool with_condexpr) {
        int line = current().line;
        auto parse_one = [&] { return with_condexpr ? parse_expression() : parse_or(); };
        ExprPtr first = parse_one();
        if (!at_operator(",")) return first;
        auto tuple = make(Expr::Kind::TupleLit, line);
        attach(*tuple, std::move(first));
        while (skip_operator(",")) {
            if (current().kind == Token::Kind::BlockEnd) break;
            attach(*tuple, parse_one());
        }
        return tuple;
    }

    ExprPtr parse_expression() {
        const Nested level(*this, current().line);
        ExprPtr expr = parse_or();
        while (at_name("if")) {
            int line = advance().line;
            auto cond = make(Expr::Kind::Conditional, line);
            attach(*cond, parse_or());
            attach(*cond, std::move(expr));
            attach(*cond, skip_name("else") ? parse_expression() : nullptr);
            expr = std::move(cond);
        }
        return expr;
    }

    ExprPtr parse_or() {
        ExprPtr left = parse_and();
        while (at_name("or")) {
            auto e = make(Expr::Kind::Or, advance().line);
            attach(*e, std::move(left));
            attach(*e, parse_and());
            left = std::move(e);
        }
        return left;
    }

    ExprPtr parse_and() {
        ExprPtr left = parse_not();
        while (at_name("and")) {
            auto e = make(Expr::Kind::And, advance().line);
            attach(*e, std::move(left));
            attach(*e, parse_not());
            left = std::move(e);
        }
        return left;
    }

    ExprPtr parse_not() {
        std::vector<int> nots;   // the lines of leading `not`s, applied innermost last
        while (at_name("not")) nots.push_back(advance().line);
        ExprPtr e = parse_compare();
        for (auto line = nots.rbegin(); line != nots.rend(); ++line) {
            auto negation = make(Expr::Kind::Not, *line);
            attach(*negation, std::move(e));
            e = std::move(negation);
        }
        return e;
    }

    ExprPtr parse_compare() {
        int line = current().line;
        ExprPtr first = parse_math1();
        std::unique_ptr<Expr> cmp;
        while (true) {
            std::string op;
            if (current().kind == Token::Kind::Operator &&
                (current().text == "==" || current().text == "!=" || current().text == "<" ||
                 current().text == "<=" || current().text == ">" || current().text == ">=")) {
                op = advance().text;
            } else if (skip_name("in")) {
                op = "in";
            } else if (at_name("not") && peek().kind == Token::Kind::Name && peek().text == "in") {
                pos_ += 2;
                op = "not in";
            } else {
                break;
            }
            if (!cmp) {
                cmp = make(Expr::Kind::Compare, line);
                attach(*cmp, std::move(first));
            }
            cmp->ops.push_back(op);
            attach(*cmp, parse_math1());
        }
        return cmp ? std::move(cmp) : std::move(first);
    }

    ExprPtr binary(const std::string& op, ExprPtr left, ExprPtr right, int line) {
        auto e = make(Expr::Kind::Binary, line);
        e->name = op;
        attach(*e, std::move(left));
        attach(*e, std::move(right));
        return e;
    }

    ExprPtr parse_math1() {
        ExprPtr left = parse_concat();
        while (at_operator("+") || at_operator("-")) {
            Token op = advance();
            left = binary(op.text, std::move(left), parse_concat(), op.line);
        }
        return left;
    }

    ExprPtr parse_concat() {
        ExprPtr left = parse_math2();
        while (at_operator("~")) {
            Token op = advance();
            left = binary("~", std::move(left), parse_math2(), op.line);
        }
        return left;
    }

    ExprPtr parse_math2() {
        ExprPtr left = parse_pow();
        while (at_operator("*") || at_operator("/") || at_operator("//") || at_operator("%")) {
            Token op = advance();
            left = binary(op.text, std::move(left), parse_pow(), op.line);
        }
        return left;
    }

    ExprPtr parse_pow() {
        ExprPtr left = parse_unary(true);
        while (at_operator("**")) {
            Token op = advance();
            left = binary("**", std::move(left), parse_unary(true), op.line);
        }
        return left;
    }

    ExprPtr parse_unary(bool with_filter) {
        const Nested level(*this, current().line);
        ExprPtr node;
        if (at_operator("-") || at_operator("+")) {
            Token op = advance();
            node = make(op.text == "-" ? Expr::Kind::Negate : Expr::Kind::Plus, op.line);
            attach(*node, parse_unary(false));
        } else {
            node = parse_primary();
        }
        node = parse_postfix(std::move(node));
        if (with_filter) node = parse_filter_expression(std::move(node));
        return node;
    }

    ExprPtr parse_primary() {
        const Token& t = current();
        int line = t.line;
        switch (t.kind) {
            case Token::Kind::Name: {
                std::string name = advance().text;
                auto e = make(Expr::Kind::Literal, line);
                if (name == "true" || name == "True") e->value = true;
                else if (name == "false" || name == "False") e->value = false;
                else if (name == "none" || name == "None") e->value = None{};
                else {
                    e->kind = Expr::Kind::Name;
                    e->name = name;
                }
                return e;
            }
            case Token::Kind::String: {
                std::string s;
                while (current().kind == Token::Kind::String) s += advance().text;  // "a" "b" joins
                auto e = make(Expr::Kind::Literal, line);
                e->value = std::move(s);
                return e;
            }
            case Token::Kind::Integer: {
                auto e = make(Expr::Kind::Literal, line);
                e->value = integer_literal(advance().text, line);
                return e;
            }
            case Token::Kind::Float: {
                auto e = make(Expr::Kind::Literal, line);
                // Python's float(): beyond the double range it is inf, below it 0.0, as strtod
                // gives; std::stod would throw std::out_of_range instead (a fuzzer finding).
                e->value = std::strtod(advance().text.c_str(), nullptr);
                return e;
            }
            case Token::Kind::Operator:
                if (t.text == "(") {
                    ++pos_;
                    if (skip_operator(")")) return make(Expr::Kind::TupleLit, line);
                    ExprPtr inner = parse_expression();
                    if (!at_operator(",")) {
                        expect_operator(")");
                        return inner;
                    }
                    auto tuple = make(Expr::Kind::TupleLit, line);
                    attach(*tuple, std::move(inner));
                    while (skip_operator(",") && !at_operator(")")) attach(*tuple, parse_expression());
                    expect_operator(")");
                    return tuple;
                }
                if (t.text == "[") {
                    ++pos_;
                    auto list = make(Expr::Kind::ListLit, line);
                    while (!skip_operator("]")) {
                        if (!list->children.empty()) expect_operator(",");
                        if (skip_operator("]")) break;
                        attach(*list, parse_expression());
                    }
                    return list;
                }
                if (t.text == "{") {
                    ++pos_;
                    auto dict = make(Expr::Kind::DictLit, line);
                    while (!skip_operator("}")) {
                        if (!dict->children.empty()) expect_operator(",");
                        if (skip_operator("}")) break;
                        attach(*dict, parse_expression());
                        expect_operator(":");
                        attach(*dict, parse_expression());
                    }
                    return dict;
                }
                break;
            default: break;
        }
        fail(line, "unexpected " + describe(t));
    }

    ExprPtr parse_postfix(ExprPtr node) {
        while (true) {
            if (at_operator(".")) {
                int line = advance().line;
                if (current().kind == Token::Kind::Integer) {
                    auto sub = make(Expr::Kind::Subscript, line);
                    auto index = make(Expr::Kind::Literal, line);
                    index->value = integer_literal(advance().text, line);
                    attach(*sub, std::move(node));
                    attach(*sub, std::move(index));
                    node = std::move(sub);
                    continue;
                }
                auto attr = make(Expr::Kind::Attribute, line);
                attr->name = expect_name();
                attach(*attr, std::move(node));
                node = std::move(attr);
            } else if (at_operator("[")) {
                node = parse_subscript(std::move(node));
            } else if (at_operator("(")) {
                node = parse_call(std::move(node));
            } else {
                return node;
            }
        }
    }

    ExprPtr parse_subscript(ExprPtr node) {
        int line = advance().line;  // '['
        ExprPtr parts[3];
        bool is_slice = false;
        for (int part = 0; part < 3; ++part) {
            if (!at_operator(":") && !at_operator("]")) parts[part] = parse_expression();
            if (part == 2 || !skip_operator(":")) break;
            is_slice = true;
        }
        expect_operator("]");
        auto e = make(is_slice ? Expr::Kind::Slice : Expr::Kind::Subscript, line);
        attach(*e, std::move(node));
        if (!is_slice) {
            if (!parts[0]) fail(line, "expected a subscript");
            attach(*e, std::move(parts[0]));
        } else {
            for (auto& p : parts) attach(*e, std::move(p));
        }
        return e;
    }

    void parse_call_arguments(Expr& call) {
        expect_operator("(");
        bool first = true;
        while (!skip_operator(")")) {
            if (!first) expect_operator(",");
            first = false;
            if (skip_operator(")")) break;
            if (at_operator("*") || at_operator("**")) fail(current().line, "unsupported *args/**kwargs in call");
            if (current().kind == Token::Kind::Name && peek().kind == Token::Kind::Operator && peek().text == "=") {
                std::string key = advance().text;
                ++pos_;
                attach_keyword(call, key, parse_expression());
            } else {
                if (!call.keywords.empty()) fail(current().line, "positional argument after keyword argument");
                attach(call, parse_expression());
            }
        }
    }

    ExprPtr parse_call(ExprPtr callee) {
        auto call = make(Expr::Kind::Call, current().line);
        if (callee->kind == Expr::Kind::Attribute && supported_methods.count(callee->name) == 0)
            fail(callee->line, "unsupported method '" + callee->name + "'");
        attach(*call, std::move(callee));
        parse_call_arguments(*call);
        return call;
    }

    ExprPtr parse_filter_expression(ExprPtr node) {
        while (true) {
            if (at_operator("|")) {
                int line = advance().line;
                std::string name = expect_name();
                while (skip_operator(".")) name += "." + expect_name();
                if (supported_filters.count(name) == 0)
                    fail(line, known_filters.count(name) ? "unsupported filter '" + name + "'"
                                                         : "no filter named '" + name + "'");
                auto f = make(Expr::Kind::Filter, line);
                f->name = name;
                attach(*f, std::move(node));
                if (at_operator("(")) parse_call_arguments(*f);
                node = std::move(f);
            } else if (at_name("is")) {
                node = parse_test(std::move(node));
            } else if (at_operator("(")) {
                node = parse_call(std::move(node));
            } else {
                return node;
            }
        }
    }

    ExprPtr parse_test(ExprPtr node) {
        int line = advance().line;  // 'is'
        bool negated = skip_name("not");
        std::string name = expect_name();
        if (supported_tests.count(name) == 0) fail(line, "unsupported test '" + name + "'");
        auto test = make(Expr::Kind::Test, line);
        test->name = name;
        attach(*test, std::move(node));
        const Token& t = current();
        bool argument_follows = t.kind == Token::Kind::String || t.kind == Token::Kind::Integer ||
                                t.kind == Token::Kind::Float ||
                                (t.kind == Token::Kind::Name && t.text != "else" && t.text != "or" && t.text != "and") ||
                                (t.kind == Token::Kind::Operator && (t.text == "[" || t.text == "{"));
        if (at_operator("(")) {
            parse_call_arguments(*test);
        } else if (argument_follows) {
            if (at_name("is")) fail(t.line, "you cannot chain multiple tests with is");
            attach(*test, parse_postfix(parse_primary()));
        }
        if (!negated) return test;
        auto not_node = make(Expr::Kind::Not, line);
        attach(*not_node, std::move(test));
        return not_node;
    }

    std::vector<Token> tokens_;
    std::size_t pos_ = 0;
    int loop_depth_ = 0;
    int nesting_ = 0;   // Nested levels now open
};

}  // namespace

Template parse(const std::string& source) {
    return Parser(Lexer(source).run()).parse_template();
}

}  // namespace twinfer::jinja
