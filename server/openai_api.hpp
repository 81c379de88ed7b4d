#pragma once
// The OpenAI API's request and response shapes: a JSON body becomes GenerationRequest (every field
// type- and range-checked; anything else is an ApiError, HTTP 4xx), and the scheduler's events
// become chat.completion / text_completion objects and their streamed chunks.
// Reference: https://platform.openai.com/docs/api-reference/chat and .../completions.
#include <cstddef>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine.hpp"
#include "server/scheduler.hpp"
#include "server/tool_calls.hpp"

namespace twinfer::server {

using nlohmann::json;

// An error the client caused or must hear about, as OpenAI reports it:
// {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError : std::runtime_error {
    ApiError(int status, const std::string& message, std::string type = "invalid_request_error", std::string param = {},
             std::string code = {})
        : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)), code(std::move(code)) {}
    int status;
    std::string type;
    std::string param;   // the request field at fault, if one is
    std::string code;
};
json error_body(const ApiError& error);

enum class Endpoint { ChatCompletions, Completions };

// What a request asks for, validated: one SequenceParams per choice (prompts x n).
struct GenerationRequest {
    Endpoint endpoint = Endpoint::ChatCompletions;
    std::vector<SequenceParams> choices;   // choice i: prompt i / n, the (i % n)-th sample of it
    size_t n = 1;
    bool stream = false;
    bool include_usage = false;            // stream_options.include_usage
    bool logprobs = false;
    size_t top_logprobs = 0;
    // Completions with echo: choice i's text begins with echo[i], its prompt (with logprobs, its
    // prompt tokens' logprobs begin the choice's logprobs, the first token's null). Empty: no echo.
    std::vector<std::string> echo;
    // Chat with tools (and a tool_choice other than "none"): the text may be tool calls.
    std::shared_ptr<const ToolSet> tools;
};

// What parsing needs to know of the server.
struct ApiContext {
    const InferenceEngine& engine;
    const ChatTemplate* chat_template;     // --chat-template-file's, else the model's (may be null: none)
    size_t n_ctx;
    size_t max_choices;                    // prompts x n
};

GenerationRequest parse_chat_request(const json& body, const ApiContext& context);
GenerationRequest parse_completion_request(const json& body, const ApiContext& context);

// The body as JSON: an object, else ApiError 400.
json parse_body(const std::string& body);

// One choice's result, gathered from its events.
struct ChoiceResult {
    std::string text;
    std::vector<SequenceEvent> tokens;     // events with a token (their logprobs)
    std::vector<ScoredToken> prompt_scores;  // with SequenceParams::score_prompt
    std::optional<FinishReason> finish;
    std::string error;
    size_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
};

// The response builders. id: "chatcmpl-..." or "cmpl-..."; created: Unix seconds.
struct ResponseHeader {
    std::string id;
    long long created = 0;
    std::string model;
};
json completion_response(const GenerationRequest& request, const ResponseHeader& header,
                         const std::vector<ChoiceResult>& choices, const Tokenizer& tokenizer);
// What a stream has sent of one choice.
struct ChoiceStream {
    bool started = false;                     // the first chunk (chat: with the role) is out
    size_t text_offset = 0;                   // completions: the choice's text so far, in bytes of its tokens
    std::optional<ToolCallStream> tool_calls; // with tools: the text held while it may be a call
};
ChoiceStream choice_stream(const GenerationRequest& request);
// The streamed chunks for one event of a choice (text, or its finish): none, one, or for a tool
// call the call and then the finish.
std::vector<json> stream_chunks(const GenerationRequest& request, const ResponseHeader& header, const SequenceEvent& event,
                                ChoiceStream& stream, const Tokenizer& tokenizer);
// The last chunk of a stream with stream_options.include_usage: no choices, the usage.
json usage_chunk(const GenerationRequest& request, const ResponseHeader& header, const std::vector<ChoiceResult>& choices);
json usage_object(const GenerationRequest& request, const std::vector<ChoiceResult>& choices);

// FinishReason::Timeout / Error / OutOfMemory as the ApiError a client gets (504 / 500 / 503,
// code "out_of_memory").
ApiError finish_error(FinishReason reason, const std::string& message);

// json::dump that replaces invalid UTF-8 (a token's piece may be part of a character) instead of
// throwing.
std::string dump(const json& value);

}  // namespace twinfer::server
