// The Hermes tool-call format: which texts are calls (each naming a tool, arguments valid under its
// schema) and which stay content; the stream holding text back only while it may be a call.
#include <gtest/gtest.h>

#include "server/tool_calls.hpp"

namespace twinfer::server {
namespace {

using nlohmann::json;

ToolSet weather_tools(ToolChoice choice) {
    ToolSet set;
    set.choice = choice;
    const json parameters = {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}, {"required", {"city"}}, {"additionalProperties", false}};
    set.functions.push_back({.name = "get_weather", .parameters = parameters,
                             .arguments = std::make_shared<structured::Grammar>(structured::Grammar{structured::compile_json_schema(parameters), "", ""})});
    return set;
}

TEST(ToolCalls, ValidCallsAreParsed) {
    const ToolSet tools = weather_tools(ToolChoice::Auto);
    const auto one = parse_tool_calls("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", tools);
    ASSERT_TRUE(one);
    ASSERT_EQ(one->size(), 1u);
    EXPECT_EQ((*one)[0].name, "get_weather");
    EXPECT_EQ(json::parse((*one)[0].arguments), json({{"city", "Paris"}}));
    EXPECT_EQ((*one)[0].id.size(), 5u + 24u);
    const auto two = parse_tool_calls(" <tool_call>{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"A\\\"}\"}</tool_call>\n"
                                      "<tool_call>{\"arguments\": {\"city\": \"B\"}, \"name\": \"get_weather\"}</tool_call>\n",
                                      tools);
    ASSERT_TRUE(two);
    EXPECT_EQ(two->size(), 2u);
    EXPECT_NE((*two)[0].id, (*two)[1].id);
}

TEST(ToolCalls, AnythingElseIsContent) {
    const ToolSet tools = weather_tools(ToolChoice::Auto);
    for (const char* text : {"", "Sunny.", "Let me check. <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"P\"}}</tool_call>",
                             "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>",                 // not a tool
                             "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"town\": \"P\"}}</tool_call>",   // invalid arguments
                             "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": 3}}</tool_call>",
                             "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"P\"}}",            // not closed
                             "<tool_call>{\"name\": \"get_weather\"</tool_call>",
                             "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"P\"}}</tool_call> and more"})
        EXPECT_FALSE(parse_tool_calls(text, tools)) << text;
}

TEST(ToolCalls, StreamHoldsBackOnlyWhatMayBeACall) {
    ToolCallStream text(/*always_hold=*/false);
    EXPECT_EQ(text.push("\n<tool"), "");
    EXPECT_EQ(text.push("box"), "\n<toolbox");   // no longer a call: everything so far goes out
    EXPECT_EQ(text.push(" more"), " more");
    EXPECT_FALSE(text.held_all());
    ToolCallStream call(false);
    EXPECT_EQ(call.push("<tool_call>\n{\"name\""), "");
    EXPECT_TRUE(call.held_all());
    EXPECT_EQ(call.release(), "<tool_call>\n{\"name\"");
    ToolCallStream constrained(/*always_hold=*/true);
    EXPECT_EQ(constrained.push("anything"), "");
    EXPECT_EQ(constrained.text(), "anything");
}

TEST(ToolCalls, RequiredGrammarIsOneCallOfATool) {
    ToolSet tools = weather_tools(ToolChoice::Required);
    structured::JsonMatcher m(tool_call_grammar(tools));
    EXPECT_FALSE(m.can_feed("Sure"));
    EXPECT_FALSE(m.can_feed("<tool_call>\n{\"name\": \"get_time\""));
    EXPECT_TRUE(m.feed("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"));
    EXPECT_TRUE(m.finished());
}

}  // namespace
}  // namespace twinfer::server
