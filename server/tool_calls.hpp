#pragma once
// Tool calls in the Hermes format that Qwen2.5 and other ChatML templates use: the template lists
// the tools in the system prompt, the model answers
//     <tool_call>
//     {"name": "get_weather", "arguments": {"city": "Paris"}}
//     </tool_call>
// and the result comes back in a `tool` message. With tool_choice "required" or a named
// function the output is constrained to one such call (arguments by the function's parameters
// schema); with "auto" the model may write one, and text that is exactly tool calls, each naming
// a function with arguments valid under its schema, becomes message.tool_calls (anything else
// stays content).
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "structured/json_matcher.hpp"

namespace twinfer::server {

enum class ToolChoice { None, Auto, Required, Named };

struct ToolFunction {
    std::string name;
    nlohmann::json parameters;                                  // the request's schema ({"type": "object"} if none)
    std::shared_ptr<const structured::Grammar> arguments = {};  // checks arguments against it
    bool strict = false;
};

struct ToolSet {
    std::vector<ToolFunction> functions;
    ToolChoice choice = ToolChoice::Auto;
    std::string named;                                          // ToolChoice::Named: the function
};

constexpr std::string_view tool_call_open = "<tool_call>";
constexpr std::string_view tool_call_close = "</tool_call>";

// Whether a chat template renders `tools` and writes calls in this format.
bool template_writes_hermes_tool_calls(const std::string& source);

// The output of ToolChoice::Required (a call of any function) or Named (of that one).
std::shared_ptr<const structured::Grammar> tool_call_grammar(const ToolSet& tools);

struct ToolCall {
    std::string id;          // "call_" and 24 random letters and digits
    std::string name;
    std::string arguments;   // a JSON object, as text
};

// The calls `text` is made of (whitespace between and around), or nullopt where it is anything
// else: then it is the message's content.
std::optional<std::vector<ToolCall>> parse_tool_calls(const std::string& text, const ToolSet& tools);

// A streamed choice's text while it may be a tool call: held back until it can no longer start
// with <tool_call> (then streamed as content), or to the end (always_hold: a constrained call).
class ToolCallStream {
public:
    explicit ToolCallStream(bool always_hold) : always_hold_(always_hold) {}
    // What to stream now as content.
    std::string push(const std::string& text);
    // Everything the choice produced, and whether it was all held back (a tool call candidate).
    const std::string& text() const { return text_; }
    bool held_all() const { return holding_; }
    // The held text, now released as content.
    std::string release();

private:
    bool always_hold_;
    bool holding_ = true;
    std::string text_;
    std::string held_;
};

}  // namespace twinfer::server
