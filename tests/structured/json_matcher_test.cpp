// The structured-output matcher: for each construct of the supported subset, prefixes that must
// be accepted and bytes that must be refused; whole documents against nlohmann's parser; every
// unsupported keyword refused by name; the token layer's mask against testing every token.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "structured/json_matcher.hpp"

namespace twinfer::structured {
namespace {

using nlohmann::json;

std::shared_ptr<const Grammar> grammar_of(const json& schema, bool strict = false, std::string prefix = "", std::string suffix = "") {
    return std::make_shared<Grammar>(Grammar{compile_json_schema(schema, {.strict = strict}), std::move(prefix), std::move(suffix)});
}

// Whether `text` is a valid prefix; whole: whether it is a whole document too.
struct Reading {
    bool prefix = false;
    bool whole = false;
};
Reading read(const std::shared_ptr<const Grammar>& g, const std::string& text) {
    JsonMatcher m(g);
    // Byte by byte, so that every intermediate prefix is checked too.
    for (const char c : text)
        if (!m.feed(std::string_view(&c, 1))) return {};
    return {true, m.accepting()};
}

void expect_whole(const std::shared_ptr<const Grammar>& g, const std::string& text) {
    const Reading r = read(g, text);
    EXPECT_TRUE(r.prefix && r.whole) << text;
}
void expect_prefix_only(const std::shared_ptr<const Grammar>& g, const std::string& text) {
    const Reading r = read(g, text);
    EXPECT_TRUE(r.prefix && !r.whole) << text;
}
void expect_refused(const std::shared_ptr<const Grammar>& g, const std::string& text) { EXPECT_FALSE(read(g, text).prefix) << text; }

TEST(JsonMatcher, AnyObject) {
    const auto g = std::make_shared<Grammar>(Grammar{any_json_object(), "", ""});
    expect_whole(g, "{}");
    expect_whole(g, R"({"a": [1, -2.5e3, "x\u00e9\n", true, null, {"b": {}}], "c": false})");
    expect_whole(g, "{ \"a\" :\t1 }");
    expect_refused(g, "\n{}");         // the document starts at once
    expect_prefix_only(g, "{\"a\": tr");
    expect_prefix_only(g, "{\"a\": 12");
    expect_refused(g, "[]");            // an object, not any value
    expect_refused(g, "{} ");           // nothing after the document
    expect_refused(g, "{\"a\" 1}");     // ':' missing
    expect_refused(g, "{\"a\": 01}");   // leading zero
    expect_refused(g, "{\"a\": 1.}");
    expect_refused(g, "{\"a\": tru}");
    expect_refused(g, "{\"a\": \"\x01\"}");    // raw control character in a string
    expect_refused(g, "{\"a\": \"\\x\"}");     // unknown escape
    expect_refused(g, "{\"a\": \"\\ud800\"}"); // half a surrogate pair
    expect_refused(g, "{\"a\": \"\xC0\x80\"}");  // overlong UTF-8
    expect_refused(g, "{\"a\": \"\xED\xA0\x80\"}");  // an encoded surrogate
    expect_refused(g, "{,}");
    expect_refused(g, "{\"a\": 1,}");
    expect_refused(g, "{\"a\": [1,]}");
    expect_whole(g, "{\"a\": \"\xE2\x82\xAC \xF0\x9F\x98\x80\"}");
}

TEST(JsonMatcher, WhitespaceRunsAreBounded) {
    const auto g = std::make_shared<Grammar>(Grammar{any_json_object(), "", ""});
    expect_prefix_only(g, "{" + std::string(max_whitespace_run, ' '));
    expect_refused(g, "{" + std::string(max_whitespace_run + 1, ' '));
    expect_whole(g, "{" + std::string(max_whitespace_run, '\n') + "\"a\":" + std::string(max_whitespace_run, ' ') + "1}");
    expect_refused(g, "{\r}");   // only space, newline and tab
}

TEST(JsonMatcher, ObjectPropertiesRequiredAdditional) {
    const json schema = {{"type", "object"},
                         {"properties", {{"name", {{"type", "string"}}}, {"age", {{"type", "integer"}}}, {"nick", {{"type", "string"}}}}},
                         {"required", {"name", "age"}},
                         {"additionalProperties", false}};
    const auto g = grammar_of(schema);
    expect_whole(g, R"({"name": "Ann", "age": 31})");
    expect_whole(g, R"({"age": 31, "nick": "A", "name": "Ann"})");   // any order
    expect_prefix_only(g, R"({"name": "Ann")");
    expect_refused(g, R"({"name": "Ann"})");                         // age is required
    expect_refused(g, R"({"name": "Ann", "name")");                  // a key twice
    expect_refused(g, R"({"x)");                                     // no such property
    expect_refused(g, R"({"nam")" "\"");                             // a prefix of a name is not one
    expect_refused(g, R"({"age": 1.5)");                             // integer
    expect_refused(g, R"({"age": "1")");
    expect_refused(g, R"({"name": "A", "age": 1, "nick": "B",)");    // no key left to give
    // Without additionalProperties, plain JSON Schema allows other keys; strict mode does not.
    const json open = {{"type", "object"}, {"properties", {{"a", {{"type", "integer"}}}}}};
    expect_whole(grammar_of(open), R"({"a": 1, "zzz": [true]})");
    expect_refused(grammar_of(open, /*strict=*/true), R"({"z)");
    expect_refused(grammar_of(open), R"({"a": 1, "a": 2})");         // a declared key twice, even with others allowed
    const json typed_extra = {{"type", "object"}, {"additionalProperties", {{"type", "boolean"}}}};
    expect_whole(grammar_of(typed_extra), R"({"x": true, "y": false})");
    expect_refused(grammar_of(typed_extra), R"({"x": 1)");
}

TEST(JsonMatcher, StringLengthsCountCharacters) {
    const auto g = grammar_of({{"type", "string"}, {"minLength", 2}, {"maxLength", 3}});
    expect_refused(g, "\"a\"");
    expect_whole(g, "\"ab\"");
    expect_whole(g, "\"a\\n\xC3\xA9\"");   // an escape and a two-byte character count one each
    expect_refused(g, "\"abcd");
    JsonMatcher m(g);
    EXPECT_TRUE(m.feed("\"abc"));
    EXPECT_FALSE(m.in_plain_string());     // every token's length matters now
    EXPECT_FALSE(m.can_feed("d"));
    EXPECT_TRUE(m.can_feed("\""));
    EXPECT_THROW(compile_json_schema({{"type", "string"}, {"minLength", 4}, {"maxLength", 3}}), SchemaError);
    EXPECT_THROW(compile_json_schema({{"type", "integer"}, {"maxLength", 3}}), SchemaError);
}

TEST(JsonMatcher, EscapedPropertyNames) {
    const json schema = {{"type", "object"}, {"properties", {{"a\"b", {{"type", "null"}}}}}, {"required", {"a\"b"}}, {"additionalProperties", false}};
    expect_whole(grammar_of(schema), R"({"a\"b": null})");
    expect_refused(grammar_of(schema), R"({"a"b)");
}

TEST(JsonMatcher, ArraysWithBounds) {
    const auto g = grammar_of({{"type", "array"}, {"items", {{"type", "number"}}}, {"minItems", 1}, {"maxItems", 3}});
    expect_refused(g, "[]");
    expect_whole(g, "[1]");
    expect_whole(g, "[1, 2.5, -3e-2]");
    expect_refused(g, "[1, 2, 3, ");
    expect_refused(g, "[\"a\"");
    expect_prefix_only(g, "[ 1 ,");
    const auto empty = grammar_of({{"type", "array"}, {"maxItems", 0}});
    expect_whole(empty, "[]");
    expect_refused(empty, "[1");
}

TEST(JsonMatcher, EnumConstAndLiterals) {
    const auto g = grammar_of({{"enum", {"red", "green", 1, 12, nullptr}}});
    expect_whole(g, "\"red\"");
    expect_whole(g, "1");
    expect_whole(g, "12");
    expect_whole(g, "null");
    expect_prefix_only(g, "\"gr");
    expect_refused(g, "\"blue\"");
    expect_refused(g, "123");
    expect_refused(g, "\"red \"");
    const auto c = grammar_of({{"type", "object"}, {"properties", {{"k", {{"const", {{"x", 1}}}}}}}, {"required", {"k"}}});
    expect_whole(c, R"({"k": {"x":1}})");
    expect_refused(c, R"({"k": {"x": 1}})");   // a const is matched as its compact text
    const auto b = grammar_of({{"type", "boolean"}});
    expect_whole(b, "true");
    expect_whole(b, "false");
    expect_refused(b, "tru e");
    expect_whole(grammar_of({{"type", "null"}}), "null");
}

TEST(JsonMatcher, NumbersAndIntegers) {
    const auto number = grammar_of({{"type", "number"}});
    for (const char* ok : {"0", "-0", "12", "-1.25", "3e5", "3E+5", "2.5e-3"}) expect_whole(number, ok);
    for (const char* bad : {"+1", "01", ".5", "1..2", "1e", "--1", "1e+"}) {
        const Reading r = read(number, bad);
        EXPECT_FALSE(r.prefix && r.whole) << bad;
    }
    expect_refused(number, "1e123");   // at most two exponent digits
    expect_refused(number, std::string(max_digits + 1, '1'));
    const auto integer = grammar_of({{"type", "integer"}});
    expect_whole(integer, "-42");
    expect_refused(integer, "4.2");
    expect_refused(integer, "4e2");
}

TEST(JsonMatcher, AnyOfAndTypeLists) {
    const auto g = grammar_of({{"anyOf", {{{"type", "string"}}, {{"type", "null"}}, {{"type", "object"}, {"properties", {{"a", {{"type", "integer"}}}}}, {"additionalProperties", false}}}}});
    expect_whole(g, "\"x\"");
    expect_whole(g, "null");
    expect_whole(g, "{\"a\": 2}");
    expect_refused(g, "1");
    expect_refused(g, "{\"b\"");
    const auto objects = grammar_of({{"anyOf",
                                      {{{"type", "object"}, {"properties", {{"k", {{"const", "a"}}}, {"x", {{"type", "integer"}}}}}, {"required", {"k", "x"}}, {"additionalProperties", false}},
                                       {{"type", "object"}, {"properties", {{"k", {{"const", "b"}}}, {"y", {{"type", "string"}}}}}, {"required", {"k", "y"}}, {"additionalProperties", false}}}}});
    expect_whole(objects, R"({"k": "a", "x": 1})");
    expect_whole(objects, R"({"k": "b", "y": "s"})");
    expect_refused(objects, R"({"k": "a", "y")");
    const auto nullable = grammar_of({{"type", {"integer", "null"}}});
    expect_whole(nullable, "7");
    expect_whole(nullable, "null");
    expect_refused(nullable, "\"7\"");
}

TEST(JsonMatcher, PrefixAndSuffixWrapTheValue) {
    const auto g = grammar_of({{"type", "object"}}, false, "<tool_call>\n", "\n</tool_call>");
    JsonMatcher m(g);
    EXPECT_FALSE(m.can_feed("{"));
    EXPECT_TRUE(m.feed("<tool_call>\n{\"a\": 1}"));
    EXPECT_FALSE(m.accepting());
    EXPECT_FALSE(m.can_feed(" "));
    EXPECT_TRUE(m.feed("\n</tool_call>"));
    EXPECT_TRUE(m.accepting());
    EXPECT_TRUE(m.finished());
    EXPECT_FALSE(m.can_feed("\n"));
}

TEST(JsonMatcher, FinishedOnlyWhenNothingMayFollow) {
    const auto object = std::make_shared<Grammar>(Grammar{any_json_object(), "", ""});
    JsonMatcher m(object);
    EXPECT_TRUE(m.feed("{\"a\": 1"));
    EXPECT_FALSE(m.accepting());
    EXPECT_TRUE(m.feed("}"));
    EXPECT_TRUE(m.finished());
    JsonMatcher number(grammar_of({{"type", "number"}}));
    EXPECT_TRUE(number.feed("12"));
    EXPECT_TRUE(number.accepting());
    EXPECT_FALSE(number.finished());   // 123 could follow
}

TEST(JsonMatcher, FailedFeedChangesNothing) {
    JsonMatcher m(grammar_of({{"type", "array"}, {"items", {{"type", "integer"}}}}));
    EXPECT_TRUE(m.feed("[1"));
    EXPECT_FALSE(m.feed("2x"));
    EXPECT_TRUE(m.feed("2]"));
    EXPECT_TRUE(m.finished());
}

TEST(JsonMatcher, NestingOfAnyValueIsBounded) {
    const auto g = std::make_shared<Grammar>(Grammar{any_json_object(), "", ""});
    JsonMatcher m(g);
    EXPECT_TRUE(m.feed("{\"a\":"));
    size_t opened = 0;
    while (m.feed("[")) ++opened;
    EXPECT_GT(opened, 10u);
    EXPECT_LE(opened, max_open_values);
    EXPECT_TRUE(m.feed(std::string(opened, ']') + "}"));   // and it still closes
    EXPECT_TRUE(m.finished());
}

// Random documents of a schema, written by nlohmann, are accepted whole; each with one byte
// changed is either refused or, if accepted whole, still parses and fits (checked by reading it).
TEST(JsonMatcher, GeneratedDocumentsAreAccepted) {
    const json schema = {{"type", "object"},
                         {"properties",
                          {{"id", {{"type", "integer"}}},
                           {"tags", {{"type", "array"}, {"items", {{"type", "string"}}}}},
                           {"score", {{"type", "number"}}},
                           {"kind", {{"enum", {"a", "b"}}}},
                           {"sub", {{"type", "object"}, {"properties", {{"ok", {{"type", "boolean"}}}}}, {"required", {"ok"}}, {"additionalProperties", false}}}}},
                         {"required", {"id", "tags", "score", "kind", "sub"}},
                         {"additionalProperties", false}};
    const auto g = grammar_of(schema);
    std::mt19937 rng(7);
    for (int i = 0; i < 200; ++i) {
        json doc = {{"id", int(rng() % 2000) - 1000},
                    {"tags", json::array()},
                    {"score", double(int(rng() % 10000)) / 64.0},
                    {"kind", rng() % 2 ? "a" : "b"},
                    {"sub", {{"ok", rng() % 2 == 0}}}};
        for (unsigned t = rng() % 4; t > 0; --t) doc["tags"].push_back(std::string(rng() % 5, char('a' + rng() % 26)) + "\"\\\xC3\xA9");
        const std::string text = doc.dump(rng() % 2 ? -1 : 2);
        expect_whole(g, text);
    }
}

TEST(JsonSchema, UnsupportedKeywordsAreRefusedByName) {
    const std::vector<std::pair<json, std::string>> cases = {
        {{{"type", "string"}, {"pattern", "^a"}}, ".pattern"},
        {{{"type", "string"}, {"format", "date"}}, ".format"},
        {{{"type", "string"}, {"contentEncoding", "base64"}}, ".contentEncoding"},
        {{{"type", "array"}, {"contains", {{"type", "string"}}}}, ".contains"},
        {{{"type", "object"}, {"dependentRequired", json::object()}}, ".dependentRequired"},
        {{{"type", "number"}, {"minimum", 1}}, ".minimum"},
        {{{"type", "number"}, {"maximum", 1}}, ".maximum"},
        {{{"type", "number"}, {"exclusiveMinimum", 1}}, ".exclusiveMinimum"},
        {{{"type", "number"}, {"multipleOf", 2}}, ".multipleOf"},
        {{{"$ref", "#/$defs/a"}}, ".$ref"},
        {{{"oneOf", json::array({{{"type", "string"}}})}}, ".oneOf"},
        {{{"allOf", json::array({{{"type", "string"}}})}}, ".allOf"},
        {{{"not", {{"type", "string"}}}}, ".not"},
        {{{"type", "array"}, {"uniqueItems", true}}, ".uniqueItems"},
        {{{"type", "array"}, {"prefixItems", json::array()}}, ".prefixItems"},
        {{{"type", "object"}, {"patternProperties", json::object()}}, ".patternProperties"},
        {{{"type", "object"}, {"minProperties", 1}}, ".minProperties"},
        {{{"type", "object"}, {"properties", {{"zip", {{"type", "string"}, {"pattern", "[0-9]+"}}}}}}, ".properties.zip.pattern"},
        {{{"type", "array"}, {"items", {{"if", json::object()}}}}, ".items.if"},
    };
    for (const auto& [schema, where] : cases) {
        try {
            compile_json_schema(schema);
            ADD_FAILURE() << "accepted " << schema.dump();
        } catch (const SchemaError& e) {
            EXPECT_EQ(e.where, where) << schema.dump();
            const std::string keyword = where.substr(where.rfind('.') + 1);
            EXPECT_NE(std::string(e.what()).find("'" + keyword + "'"), std::string::npos) << e.what();
        }
    }
}

TEST(JsonSchema, MalformedSchemasAreRefused) {
    for (const json& schema : {json("string"), json(false), json{{"type", "text"}}, json{{"type", "object"}, {"required", {"a"}}},
                               json{{"type", "array"}, {"minItems", 3}, {"maxItems", 1}}, json{{"type", "array"}, {"minItems", -1}},
                               json{{"enum", json::array()}}, json{{"anyOf", json::array()}}, json{{"type", "string"}, {"properties", json::object()}},
                               json{{"anyOf", {{{"type", "string"}}}}, {"type", "string"}}}) {
        EXPECT_THROW(compile_json_schema(schema), SchemaError) << schema.dump();
    }
    json deep = {{"type", "string"}};
    for (size_t i = 0; i <= schema_limits::nesting + 1; ++i) deep = {{"type", "array"}, {"items", deep}};
    EXPECT_THROW(compile_json_schema(deep), SchemaError);
    json many = {{"type", "object"}, {"properties", json::object()}};
    for (size_t i = 0; i <= schema_limits::properties; ++i) many["properties"]["p" + std::to_string(i)] = {{"type", "null"}};
    EXPECT_THROW(compile_json_schema(many), SchemaError);
}

TEST(JsonSchema, AnnotationsAreIgnored) {
    const json schema = {{"title", "T"}, {"description", "d"}, {"$schema", "https://json-schema.org/draft/2020-12/schema"},
                         {"type", "object"}, {"properties", {{"a", {{"type", "string"}, {"description", "x"}, {"default", "q"}}}}}};
    expect_whole(grammar_of(schema), R"({"a": "b"})");
}

}  // namespace
}  // namespace twinfer::structured
