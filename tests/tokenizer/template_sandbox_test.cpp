// The template engine as a sandbox (tokenizer/jinja.hpp, `limits`): a chat template comes from a
// model file, so hostile ones — deep nesting, self-calling macros, integer overflow, huge powers,
// strings and lists, loops and ranges — end in a ChatTemplateError naming the limit they hit, after
// a bounded amount of work, where they crashed, hung or overflowed before. Each case is a class of
// its limit, generated at a size well past it. Python's results for what stays inside the limits.
#include "tokenizer/chat_template.hpp"

#include <gtest/gtest.h>

#include <string>

namespace twinfer {
namespace {

std::string repeated(const std::string& piece, size_t times) {
    std::string out;
    for (size_t i = 0; i < times; ++i) out += piece;
    return out;
}

std::string render(const std::string& source) {
    const std::vector<ChatMessage> messages = {{"user", "hi"}};
    return ChatTemplate(source).apply(messages, false, "<s>", "</s>");
}

// Parsing or rendering `source` fails with a message containing `limit`.
void expect_limit(const std::string& source, const std::string& limit) {
    try {
        render(source);
        ADD_FAILURE() << "rendered without error; expected " << limit;
    } catch (const ChatTemplateError& e) {
        EXPECT_NE(std::string(e.what()).find(limit), std::string::npos) << e.what();
    }
}

constexpr size_t kHostile = 200'000;   // far past every limit

TEST(TemplateSandbox, NestingIsBoundedHoweverItIsBuilt) {
    const std::string limit = "(the nesting limit)";
    expect_limit("{{ " + repeated("(", kHostile) + "1" + repeated(")", kHostile) + " }}", limit);   // parentheses
    expect_limit("{{ " + repeated("[", kHostile) + repeated("]", kHostile) + " }}", limit);          // list literals
    expect_limit("{{ " + repeated("-", kHostile) + "1 }}", limit);                                   // unary chains
    expect_limit("{{ " + repeated("not ", kHostile) + "1 }}", limit);
    expect_limit("{{ 1" + repeated(" + 1", kHostile) + " }}", limit);                                // operator chains (loops)
    expect_limit("{{ 'a'" + repeated(" ~ 'a'", kHostile) + " }}", limit);
    expect_limit("{{ x" + repeated(".y", kHostile) + " }}", limit);                                  // postfix chains
    expect_limit("{{ x" + repeated("|trim", kHostile) + " }}", limit);                               // filter chains
    expect_limit("{{ 1" + repeated(" if 1 else 1", kHostile) + " }}", limit);                        // conditionals
    expect_limit(repeated("{% if true %}", kHostile) + repeated("{% endif %}", kHostile), limit);    // statements
    // A real template's depth renders.
    EXPECT_EQ(render("{{ " + repeated("(", 40) + "1" + repeated(")", 40) + " }}"), "1");
    EXPECT_EQ(render("{{ 1" + repeated(" + 1", 60) + " }}"), "61");
}

// Namespace attributes are the one state a loop carries: values nested through them, and a
// namespace holding itself (found by tests/fuzz/chat_template_fuzz: printing it, or destroying a
// list 100,000 deep, overflowed the stack; the cycle leaked).
TEST(TemplateSandbox, NamespacesCannotNestValuesWithoutEndOrHoldThemselves) {
    expect_limit("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}", "(the nesting limit)");
    expect_limit("{% set ns = namespace(x={}) %}{% for i in range(100000) %}{% set ns.x = {'a': ns.x} %}{% endfor %}", "(the nesting limit)");
    expect_limit("{% set ns = namespace(c=0) %}{% set ns.c = ns %}{{ ns.c }}", "cannot hold a namespace");
    expect_limit("{% set ns = namespace(c=0) %}{% set ns.c = [ns] %}", "cannot hold a namespace");
    EXPECT_EQ(render("{% set ns = namespace(x=[]) %}{% for i in range(3) %}{% set ns.x = ns.x + [i] %}{% endfor %}{{ ns.x }}"), "[0, 1, 2]");
    EXPECT_EQ(render("{% set ns = namespace(x=[]) %}{% for i in range(3) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}"), "[[[[]]]]");
}

TEST(TemplateSandbox, SelfCallingMacrosHitTheRecursionLimit) {
    expect_limit("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "(the recursion limit");
    expect_limit("{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}{{ a() }}{% endmacro %}{{ a() }}", "(the recursion limit");
    EXPECT_EQ(render("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}"), "54321");
}

TEST(TemplateSandbox, IntegerArithmeticNeverWraps) {
    const std::string overflow = "integer overflow";
    expect_limit("{{ (-9223372036854775807 - 1) // -1 }}", overflow);   // SIGFPE before
    expect_limit("{{ 9223372036854775807 + 1 }}", overflow);
    expect_limit("{{ -9223372036854775807 - 2 }}", overflow);
    expect_limit("{{ 4294967296 * 4294967296 }}", overflow);
    expect_limit("{{ 3 ** 4000000000000 }}", overflow);                  // hung before
    expect_limit("{{ -(-9223372036854775807 - 1) }}", overflow);
    // Python's answers inside the range, the edges included.
    EXPECT_EQ(render("{{ 7 // -2 }} {{ 7 % -2 }} {{ -7 % 2 }} {{ 2 ** 62 }} {{ (-9223372036854775807 - 1) % -1 }}"),
              "-4 -1 1 4611686018427387904 0");
    EXPECT_EQ(render("{{ 9223372036854775807 % -2 }} {{ (-2) ** 63 }} {{ 1 ** 4000000000000 }} {{ (-1) ** 4000000000001 }}"),
              "-1 -9223372036854775808 1 -1");
}

TEST(TemplateSandbox, StringsListsLoopsAndRangesAreBounded) {
    expect_limit("{{ 'a' * 100000000 }}", "(the string size limit)");
    expect_limit("{{ 100000000 * 'ab' }}", "(the string size limit)");
    expect_limit("{{ [1, 2] * 100000000 }}", "(the list size limit)");
    // Doubling a string in a loop: bounded by its size, not the loop.
    expect_limit("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
                 "(the string size limit)");
    expect_limit("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", "(the string size limit)");
    expect_limit("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "(the loop limit)");
    expect_limit("{{ range(1000000000)|length }}", "(the range limit)");
    expect_limit("{% for i in range(10) %}{{ 'x' * 1000000 }}{{ 'y' * 1000000 }}{% endfor %}", "(the string size limit)");
    // Ranges at the edges of int64 (their bounds' difference does not fit in 64 bits).
    EXPECT_EQ(render("{{ range(-9223372036854775807 - 1, 9223372036854775807, 4611686018427387904)|list }}"),
              "[-9223372036854775808, -4611686018427387904, 0, 4611686018427387904]");
    EXPECT_EQ(render("{{ range(9223372036854775807, 9223372036854775805, -1)|list }}"), "[9223372036854775807, 9223372036854775806]");
    EXPECT_EQ(render("{{ 'ab' * 3 }} {{ [1] * 2 }} {{ 'x' * -1 }}|"), "ababab [1, 1] |");
    // An empty sequence repeated any number of times is empty at once (it looped `times` before).
    EXPECT_EQ(render("{{ '' * 9223372036854775807 }}|{{ ([] * 9223372036854775807)|length }}"), "|0");
}

}  // namespace
}  // namespace twinfer
