// Structured output and tool calls through a real `twinfer serve` on SmolLM2 with a tool-calling
// ChatML template (tests/data/chat_templates): json_schema output at temperature 1.5 over 50 seeds,
// each parsed and checked against the schema by hand (not by the matcher that produced it);
// json_object; tool calls with tool_choice required, named and streamed; a conversation with tool
// results; and every unsupported construct a 400 naming it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/test_data.hpp"
#include "server/server_process.hpp"

namespace twinfer {
namespace {

using nlohmann::json;
using test::ServerProcess;

class StructuredOutputTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (!std::filesystem::exists(test::smollm2_path())) return;
        // A long --timeout: fifty answers on a two-core machine that other builds share.
        server_ = new ServerProcess({"--parallel", "10", "-c", "1024", "--timeout", "1400", "--chat-template-file",
                                     (test::repo_root() / "tests/data/chat_templates/chatml_tools.jinja").string()});
    }
    static void TearDownTestSuite() {
        delete server_;
        server_ = nullptr;
    }
    void SetUp() override { TWINFER_REQUIRE_FILE(test::smollm2_path()); }
    static ServerProcess* server_;
};
ServerProcess* StructuredOutputTest::server_ = nullptr;

const json member_schema = json::parse(R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "maxLength": 16},
    "age": {"type": "integer"},
    "score": {"type": "number"},
    "member": {"type": "boolean"},
    "color": {"enum": ["red", "green", "blue"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 2},
    "address": {"type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}, "zip": {"anyOf": [{"type": "string", "maxLength": 6}, {"type": "null"}]}},
                "required": ["city", "zip"], "additionalProperties": false}
  },
  "required": ["name", "age", "score", "member", "color", "tags", "address"],
  "additionalProperties": false
})");

size_t characters(const std::string& s) {
    size_t n = 0;
    for (const unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

// member_schema, checked by hand.
void expect_member(const json& doc, const std::string& text) {
    ASSERT_TRUE(doc.is_object()) << text;
    std::set<std::string> keys;
    for (const auto& [key, value] : doc.items()) keys.insert(key);
    EXPECT_EQ(keys, (std::set<std::string>{"name", "age", "score", "member", "color", "tags", "address"})) << text;
    EXPECT_TRUE(doc["name"].is_string() && characters(doc["name"].get<std::string>()) <= 16) << text;
    EXPECT_TRUE(doc["age"].is_number_integer()) << text;
    EXPECT_TRUE(doc["score"].is_number()) << text;
    EXPECT_TRUE(doc["member"].is_boolean()) << text;
    EXPECT_TRUE(doc["color"] == "red" || doc["color"] == "green" || doc["color"] == "blue") << text;
    ASSERT_TRUE(doc["tags"].is_array()) << text;
    EXPECT_TRUE(doc["tags"].size() >= 1 && doc["tags"].size() <= 2) << text;
    for (const json& tag : doc["tags"]) EXPECT_TRUE(tag.is_string() && characters(tag.get<std::string>()) <= 8) << text;
    const json& address = doc["address"];
    ASSERT_TRUE(address.is_object() && address.size() == 2) << text;
    EXPECT_TRUE(address["city"].is_string() && characters(address["city"].get<std::string>()) <= 12) << text;
    EXPECT_TRUE(address["zip"].is_null() || (address["zip"].is_string() && characters(address["zip"].get<std::string>()) <= 6)) << text;
}

json chat(const std::string& content, json extra) {
    extra["messages"] = json::array({{{"role", "user"}, {"content", content}}});
    return extra;
}

TEST_F(StructuredOutputTest, JsonSchemaOverFiftySeedsAtTemperatureOnePointFive) {
    // Five requests of n = 10 (choice i samples with seed + i: 50 seeds), ten sequences at a time.
    std::vector<std::string> bodies(5);
    std::vector<std::thread> threads;
    for (size_t r = 0; r < bodies.size(); ++r)
        threads.emplace_back([&, r] {
            httplib::Client client = server_->client();
            client.set_read_timeout(1400, 0);
            const json body = chat("Describe a club member as JSON.",
                                   {{"temperature", 1.5}, {"seed", 1000 + 10 * r}, {"n", 10}, {"max_tokens", 400},
                                    {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "member"}, {"strict", true}, {"schema", member_schema}}}}}});
            if (auto res = client.Post("/v1/chat/completions", body.dump(), "application/json"); res && res->status == 200) bodies[r] = res->body;
        });
    for (auto& t : threads) t.join();
    size_t checked = 0;
    for (const std::string& body : bodies) {
        ASSERT_FALSE(body.empty()) << "a request failed";
        const json response = json::parse(body);
        for (const json& choice : response["choices"]) {
            const std::string text = choice["message"]["content"];
            EXPECT_EQ(choice["finish_reason"], "stop") << text;
            const json doc = json::parse(text, nullptr, false);
            ASSERT_FALSE(doc.is_discarded()) << "not JSON: " << text;
            expect_member(doc, text);
            ++checked;
        }
    }
    EXPECT_EQ(checked, 50u);
}

TEST_F(StructuredOutputTest, JsonObjectIsAnObject) {
    for (const bool stream : {false, true}) {
        const json body = chat("List three fruits in JSON.", {{"temperature", 0}, {"max_tokens", 300}, {"stream", stream},
                                                             {"response_format", {{"type", "json_object"}}}});
        auto res = server_->client().Post("/v1/chat/completions", body.dump(), "application/json");
        ASSERT_TRUE(res && res->status == 200);
        std::string text;
        if (!stream) {
            text = json::parse(res->body)["choices"][0]["message"]["content"];
        } else {
            for (size_t at = 0; (at = res->body.find("data: {", at)) != std::string::npos; ++at) {
                const json chunk = json::parse(res->body.substr(at + 6, res->body.find("\n\n", at) - at - 6));
                if (chunk["choices"][0]["delta"].contains("content")) text += chunk["choices"][0]["delta"]["content"].get<std::string>();
            }
        }
        const json doc = json::parse(text, nullptr, false);
        EXPECT_TRUE(doc.is_object()) << text;
    }
}

TEST_F(StructuredOutputTest, LengthCutsADocumentShort) {
    const json r = server_->post("/v1/chat/completions",
                                 chat("JSON please.", {{"temperature", 0}, {"max_tokens", 3}, {"response_format", {{"type", "json_object"}}}}).dump(), 200);
    EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
}

const json weather_tool = json::parse(R"({"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
  "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                 "required": ["city", "unit"], "additionalProperties": false}}})");
const json time_tool = json::parse(R"({"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}}, "required": ["zone"], "additionalProperties": false}}})");

void expect_weather_call(const json& call) {
    EXPECT_TRUE(call["id"].is_string() && call["id"].get<std::string>().starts_with("call_")) << call;
    EXPECT_EQ(call["type"], "function");
    EXPECT_EQ(call["function"]["name"], "get_weather");
    const json arguments = json::parse(call["function"]["arguments"].get<std::string>());
    EXPECT_TRUE(arguments["city"].is_string()) << call;
    EXPECT_TRUE(arguments["unit"] == "celsius" || arguments["unit"] == "fahrenheit") << call;
    EXPECT_EQ(arguments.size(), 2u);
}

TEST_F(StructuredOutputTest, RequiredAndNamedToolCalls) {
    for (const json& choice : {json("required"), json{{"type", "function"}, {"function", {{"name", "get_weather"}}}}}) {
        for (int seed = 0; seed < 3; ++seed) {
            const json r = server_->post("/v1/chat/completions",
                                         chat("What is the weather in Paris?", {{"temperature", 1.0}, {"seed", seed}, {"max_tokens", 200},
                                                                                {"tools", {weather_tool, time_tool}}, {"tool_choice", choice}})
                                             .dump(),
                                         200);
            const json& c = r["choices"][0];
            EXPECT_EQ(c["finish_reason"], "tool_calls") << r;
            EXPECT_TRUE(c["message"]["content"].is_null());
            ASSERT_EQ(c["message"]["tool_calls"].size(), 1u) << r;
            if (choice.is_object()) expect_weather_call(c["message"]["tool_calls"][0]);
            else EXPECT_TRUE(c["message"]["tool_calls"][0]["function"]["name"] == "get_weather" ||
                             c["message"]["tool_calls"][0]["function"]["name"] == "get_time") << r;
        }
    }
}

TEST_F(StructuredOutputTest, StreamedToolCall) {
    const json body = chat("What is the weather in Oslo?", {{"temperature", 0}, {"max_tokens", 200}, {"stream", true}, {"tools", {weather_tool}},
                                                            {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}});
    auto res = server_->client().Post("/v1/chat/completions", body.dump(), "application/json");
    ASSERT_TRUE(res && res->status == 200);
    std::vector<json> chunks;
    for (size_t at = 0; (at = res->body.find("data: {", at)) != std::string::npos; ++at)
        chunks.push_back(json::parse(res->body.substr(at + 6, res->body.find("\n\n", at) - at - 6)));
    ASSERT_GE(chunks.size(), 2u);
    EXPECT_EQ(chunks.front()["choices"][0]["delta"]["role"], "assistant");
    json call;
    for (const json& chunk : chunks) {
        const json& delta = chunk["choices"][0]["delta"];
        EXPECT_TRUE(!delta.contains("content") || delta["content"].is_null() || delta["content"] == "") << chunk;
        if (delta.contains("tool_calls")) {
            EXPECT_EQ(delta["tool_calls"][0]["index"], 0);
            call = delta["tool_calls"][0];
        }
    }
    expect_weather_call(call);
    EXPECT_EQ(chunks.back()["choices"][0]["finish_reason"], "tool_calls");
    EXPECT_NE(res->body.find("data: [DONE]"), std::string::npos);
}

TEST_F(StructuredOutputTest, ToolResultsAndPastCallsAreRendered) {
    const json body = {{"temperature", 0},
                       {"max_tokens", 40},
                       {"tools", {weather_tool}},
                       {"tool_choice", "auto"},
                       {"messages",
                        {{{"role", "user"}, {"content", "Weather in Paris?"}},
                         {{"role", "assistant"}, {"content", nullptr},
                          {"tool_calls", {{{"id", "call_1"}, {"type", "function"},
                                           {"function", {{"name", "get_weather"}, {"arguments", "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}}}}}},
                         {{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "{\"temperature\": 21}"}}}}};
    const json r = server_->post("/v1/chat/completions", body.dump(), 200);
    EXPECT_TRUE(r["choices"][0]["finish_reason"] == "stop" || r["choices"][0]["finish_reason"] == "length" ||
                r["choices"][0]["finish_reason"] == "tool_calls") << r;
    EXPECT_GT(r["usage"]["prompt_tokens"].get<int>(), 150);   // the tools and the tool result are in the prompt
}

TEST_F(StructuredOutputTest, UnsupportedConstructsAre400NamingThem) {
    const auto expect_400 = [&](const json& body, const std::string& param, const std::string& in_message) {
        const json e = server_->post("/v1/chat/completions", body.dump(), 400);
        EXPECT_EQ(e["error"]["param"], param) << e;
        EXPECT_NE(e["error"]["message"].get<std::string>().find(in_message), std::string::npos) << e;
    };
    const auto with_schema = [](const json& schema) {
        return chat("x", {{"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "s"}, {"schema", schema}}}}}});
    };
    expect_400(with_schema({{"type", "object"}, {"properties", {{"zip", {{"type", "string"}, {"pattern", "[0-9]+"}}}}}}),
               "response_format.json_schema.schema.properties.zip.pattern", "'pattern'");
    expect_400(with_schema({{"$ref", "#/$defs/x"}}), "response_format.json_schema.schema.$ref", "'$ref'");
    expect_400(with_schema({{"oneOf", {{{"type", "string"}}}}}), "response_format.json_schema.schema.oneOf", "'oneOf'");
    expect_400(with_schema({{"type", "string"}, {"format", "email"}}), "response_format.json_schema.schema.format", "'format'");
    expect_400(chat("x", {{"response_format", {{"type", "yaml"}}}}), "response_format.type", "json_schema");
    json tool = weather_tool;
    tool["function"]["parameters"]["properties"]["city"]["minimum"] = 3;
    expect_400(chat("x", {{"tools", {tool}}, {"tool_choice", "required"}}), "tools[0].function.parameters.properties.city.minimum", "'minimum'");
    expect_400(chat("x", {{"tools", {weather_tool}}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "nope"}}}}}}), "tool_choice", "nope");
    expect_400(chat("x", {{"tool_choice", "required"}}), "tool_choice", "needs tools");
    expect_400(chat("x", {{"tools", {{{"type", "function"}, {"function", {{"name", "bad name!"}}}}}}}), "tools[0].function.name", "letters");
    expect_400({{"messages", {{{"role", "tool"}, {"content", "x"}}}}}, "messages[0].tool_call_id", "tool_call_id");
    // The server still answers.
    server_->post("/v1/chat/completions", chat("Hi", {{"max_tokens", 2}}).dump(), 200);
}

}  // namespace
}  // namespace twinfer
