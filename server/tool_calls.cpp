#include "server/tool_calls.hpp"

#include <algorithm>
#include <random>

namespace twinfer::server {
namespace {

using nlohmann::json;

size_t skip_whitespace(std::string_view text, size_t at) {
    while (at < text.size() && (text[at] == ' ' || text[at] == '\n' || text[at] == '\t' || text[at] == '\r')) ++at;
    return at;
}

std::string new_call_id() {
    static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    thread_local std::mt19937_64 rng{std::random_device{}()};
    std::string id = "call_";
    for (int i = 0; i < 24; ++i) id += alphabet[rng() % (sizeof alphabet - 1)];
    return id;
}

}  // namespace

bool template_writes_hermes_tool_calls(const std::string& source) {
    return source.find("tools") != std::string::npos && source.find(tool_call_open) != std::string::npos;
}

std::shared_ptr<const structured::Grammar> tool_call_grammar(const ToolSet& tools) {
    // {"name": <the function>, "arguments": <its parameters>}, one alternative per function.
    json alternatives = json::array();
    bool strict = true;
    for (const ToolFunction& f : tools.functions) {
        if (tools.choice == ToolChoice::Named && f.name != tools.named) continue;
        alternatives.push_back({{"type", "object"},
                                {"properties", {{"name", {{"const", f.name}}}, {"arguments", f.parameters}}},
                                {"required", {"name", "arguments"}},
                                {"additionalProperties", false}});
        strict = strict && f.strict;
    }
    const json schema = alternatives.size() == 1 ? alternatives.front() : json{{"anyOf", alternatives}};
    return std::make_shared<structured::Grammar>(structured::Grammar{structured::compile_json_schema(schema, {.strict = strict}),
                                                                     std::string(tool_call_open) + "\n", "\n" + std::string(tool_call_close)});
}

std::optional<std::vector<ToolCall>> parse_tool_calls(const std::string& text, const ToolSet& tools) {
    std::vector<ToolCall> calls;
    size_t at = skip_whitespace(text, 0);
    while (at < text.size()) {
        if (text.compare(at, tool_call_open.size(), tool_call_open) != 0) return std::nullopt;
        at += tool_call_open.size();
        const size_t end = text.find(tool_call_close, at);
        if (end == std::string::npos) return std::nullopt;
        const json call = json::parse(text.begin() + std::ptrdiff_t(at), text.begin() + std::ptrdiff_t(end), nullptr, false);
        at = skip_whitespace(text, end + tool_call_close.size());
        if (!call.is_object() || !call.contains("name") || !call["name"].is_string() || !call.contains("arguments")) return std::nullopt;
        const auto function = std::find_if(tools.functions.begin(), tools.functions.end(),
                                           [&](const ToolFunction& f) { return f.name == call["name"].get<std::string>(); });
        if (function == tools.functions.end()) return std::nullopt;
        json arguments = call["arguments"];
        if (arguments.is_string()) arguments = json::parse(arguments.get<std::string>(), nullptr, false);   // some models quote them
        if (!arguments.is_object()) return std::nullopt;
        const std::string written = arguments.dump(-1, ' ', false, json::error_handler_t::replace);
        structured::JsonMatcher check(function->arguments);
        if (!check.feed(written) || !check.accepting()) return std::nullopt;
        calls.push_back({new_call_id(), function->name, written});
    }
    if (calls.empty()) return std::nullopt;
    return calls;
}

std::string ToolCallStream::push(const std::string& text) {
    text_ += text;
    if (!holding_) return text;
    held_ += text;
    if (always_hold_) return {};
    const std::string_view start = std::string_view(held_).substr(skip_whitespace(held_, 0));
    const bool may_be_call = start.size() <= tool_call_open.size() ? tool_call_open.starts_with(start) : start.starts_with(tool_call_open);
    if (may_be_call) return {};
    return release();
}

std::string ToolCallStream::release() {
    holding_ = false;
    return std::exchange(held_, {});
}

}  // namespace twinfer::server
