#include "server/openai_api.hpp"

#include <cmath>
#include <limits>

namespace twinfer::server {
namespace {

constexpr size_t max_stop_strings = 16;
constexpr size_t max_stop_length = 256;
constexpr size_t max_logit_bias_entries = 1024;
constexpr size_t max_top_logprobs = 20;

ApiError bad_field(const std::string& field, const std::string& message) {
    return ApiError(400, "'" + field + "': " + message, "invalid_request_error", field, "invalid_value");
}

// A field's value, or null when absent or null (OpenAI treats both as "not given").
const json* field(const json& body, const char* name) {
    const auto it = body.find(name);
    return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::optional<bool> bool_field(const json& body, const char* name) {
    const json* v = field(body, name);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) throw bad_field(name, "must be a boolean, got " + std::string(v->type_name()));
    return v->get<bool>();
}

// A number in [lo, hi] (finite). Integers are numbers too.
std::optional<double> number_field(const json& body, const char* name, double lo, double hi) {
    const json* v = field(body, name);
    if (!v) return std::nullopt;
    if (!v->is_number()) throw bad_field(name, "must be a number, got " + std::string(v->type_name()));
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi)
        throw bad_field(name, dump(*v) + " is out of range (" + dump(lo) + " to " + dump(hi) + ")");
    return x;
}

// An integer in [lo, hi]; a float with an integral value (2.0) is one, 2.5 is not.
std::optional<long long> integer_field(const json& body, const char* name, long long lo, long long hi) {
    const json* v = field(body, name);
    if (!v) return std::nullopt;
    if (!v->is_number()) throw bad_field(name, "must be an integer, got " + std::string(v->type_name()));
    const auto out_of_range = [&] {
        return bad_field(name, dump(*v) + " is out of range (" + std::to_string(lo) + " to " + std::to_string(hi) + ")");
    };
    if (v->is_number_unsigned()) {
        if (v->get<unsigned long long>() > static_cast<unsigned long long>(hi) ||
            (lo > 0 && v->get<unsigned long long>() < static_cast<unsigned long long>(lo)))
            throw out_of_range();
        return static_cast<long long>(v->get<unsigned long long>());
    }
    if (v->is_number_integer()) {
        const long long x = v->get<long long>();
        if (x < lo || x > hi) throw out_of_range();
        return x;
    }
    const double x = v->get<double>();
    if (!std::isfinite(x) || std::floor(x) != x) throw bad_field(name, "must be an integer, got " + dump(*v));
    if (x < double(lo) || x > double(hi)) throw out_of_range();
    return static_cast<long long>(x);
}

// A feature this server does not implement: refused, never silently ignored.
void refuse_unsupported(const json& body, const char* name, const std::string& what) {
    if (field(body, name)) throw ApiError(400, "'" + std::string(name) + "' is not supported by this server yet (" + what + ")",
                                          "invalid_request_error", name, "unsupported_parameter");
}

std::vector<std::string> stop_strings(const json& body) {
    const json* v = field(body, "stop");
    if (!v) return {};
    std::vector<std::string> stops;
    if (v->is_string()) stops.push_back(v->get<std::string>());
    else if (v->is_array()) {
        if (v->size() > max_stop_strings) throw bad_field("stop", "at most " + std::to_string(max_stop_strings) + " stop strings");
        for (const json& s : *v) {
            if (!s.is_string()) throw bad_field("stop", "must be a string or an array of strings");
            stops.push_back(s.get<std::string>());
        }
    } else {
        throw bad_field("stop", "must be a string or an array of strings, got " + std::string(v->type_name()));
    }
    for (const std::string& s : stops)
        if (s.empty() || s.size() > max_stop_length)
            throw bad_field("stop", "each stop string must be 1 to " + std::to_string(max_stop_length) + " bytes");
    return stops;
}

// The fields chat and completions share: sampling, stop, n, stream, seed, logit bias.
struct CommonFields {
    SamplingParams sampling;
    std::vector<std::string> stop;
    size_t n = 1;
    bool stream = false;
    bool include_usage = false;
    bool ignore_eos = false;
    std::optional<long long> max_tokens;
    std::optional<uint64_t> seed;
};

CommonFields common_fields(const json& body, const ApiContext& context) {
    if (const json* model = field(body, "model"); model && !model->is_string())
        throw bad_field("model", "must be a string, got " + std::string(model->type_name()));
    CommonFields c;
    const size_t n_vocab = context.engine.config().n_vocab;
    // OpenAI's defaults: temperature 1, top_p 1, no top-k or min-p cut, no penalties.
    c.sampling.temperature = static_cast<float>(number_field(body, "temperature", 0.0, 2.0).value_or(1.0));
    c.sampling.top_p = static_cast<float>(number_field(body, "top_p", 0.0, 1.0).value_or(1.0));
    c.sampling.top_k = static_cast<int>(integer_field(body, "top_k", 0, static_cast<long long>(n_vocab)).value_or(0));
    c.sampling.min_p = static_cast<float>(number_field(body, "min_p", 0.0, 1.0).value_or(0.0));
    c.sampling.presence_penalty = static_cast<float>(number_field(body, "presence_penalty", -2.0, 2.0).value_or(0.0));
    c.sampling.frequency_penalty = static_cast<float>(number_field(body, "frequency_penalty", -2.0, 2.0).value_or(0.0));
    c.sampling.repeat_penalty = static_cast<float>(number_field(body, "repeat_penalty", 0.01, 10.0).value_or(1.0));
    c.sampling.repeat_last_n = static_cast<int>(integer_field(body, "repeat_last_n", -1, static_cast<long long>(context.n_ctx)).value_or(64));
    if (const auto seed = integer_field(body, "seed", std::numeric_limits<long long>::min(), std::numeric_limits<long long>::max()))
        c.seed = static_cast<uint64_t>(*seed);
    if (const json* bias = field(body, "logit_bias")) {
        if (!bias->is_object()) throw bad_field("logit_bias", "must be an object of token ids to numbers");
        if (bias->size() > max_logit_bias_entries)
            throw bad_field("logit_bias", "at most " + std::to_string(max_logit_bias_entries) + " entries");
        for (const auto& [key, value] : bias->items()) {
            size_t used = 0;
            long long id = -1;
            try {
                id = std::stoll(key, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used != key.size() || id < 0 || static_cast<size_t>(id) >= n_vocab)
                throw bad_field("logit_bias", "'" + key + "' is not a token id of this model (0 to " + std::to_string(n_vocab - 1) + ")");
            if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() < -100 || value.get<double>() > 100)
                throw bad_field("logit_bias", "the bias of token " + key + " must be a number from -100 to 100");
            c.sampling.logit_bias[static_cast<Token>(id)] = value.get<float>();
        }
    }
    c.stop = stop_strings(body);
    c.n = static_cast<size_t>(integer_field(body, "n", 1, static_cast<long long>(context.max_choices)).value_or(1));
    c.stream = bool_field(body, "stream").value_or(false);
    if (const json* options = field(body, "stream_options")) {
        if (!options->is_object()) throw bad_field("stream_options", "must be an object");
        if (!c.stream) throw bad_field("stream_options", "is only allowed with stream: true");
        c.include_usage = bool_field(*options, "include_usage").value_or(false);
    }
    c.ignore_eos = bool_field(body, "ignore_eos").value_or(false);
    c.max_tokens = integer_field(body, "max_completion_tokens", 1, static_cast<long long>(context.n_ctx));
    if (const auto legacy = integer_field(body, "max_tokens", 1, static_cast<long long>(context.n_ctx)); legacy && !c.max_tokens)
        c.max_tokens = legacy;
    refuse_unsupported(body, "tools", "tool calls");
    refuse_unsupported(body, "tool_choice", "tool calls");
    refuse_unsupported(body, "functions", "function calls");
    refuse_unsupported(body, "function_call", "function calls");
    if (const json* format = field(body, "response_format")) {
        if (!format->is_object() || !format->contains("type") || !(*format)["type"].is_string())
            throw bad_field("response_format", "must be an object with a string 'type'");
        if ((*format)["type"] != "text")
            throw ApiError(400, "'response_format' of type " + dump((*format)["type"]) +
                                    " is not supported by this server yet (structured output); only \"text\"",
                           "invalid_request_error", "response_format", "unsupported_parameter");
    }
    return c;
}

// The request's choices: each prompt n times, with the shared fields; checks the context.
GenerationRequest make_request(Endpoint endpoint, const std::vector<std::vector<Token>>& prompts, const CommonFields& c,
                               size_t default_max_tokens, bool logprobs, size_t top_logprobs, const ApiContext& context) {
    GenerationRequest request;
    request.endpoint = endpoint;
    request.n = c.n;
    request.stream = c.stream;
    request.include_usage = c.include_usage;
    request.logprobs = logprobs;
    request.top_logprobs = top_logprobs;
    if (prompts.size() * c.n > context.max_choices)
        throw ApiError(400, std::to_string(prompts.size()) + " prompts x n = " + std::to_string(c.n) + " is more than the " +
                                std::to_string(context.max_choices) + " choices one request may ask for",
                       "invalid_request_error", "n", "invalid_value");
    const std::string what = endpoint == Endpoint::ChatCompletions ? "messages" : "prompt";
    for (const auto& prompt : prompts) {
        if (prompt.empty()) throw ApiError(400, "the " + what + " gave no tokens", "invalid_request_error", what, "invalid_value");
        if (prompt.size() >= context.n_ctx)
            throw ApiError(400, "This model's maximum context length is " + std::to_string(context.n_ctx) + " tokens. However, your " +
                                    what + " resulted in " + std::to_string(prompt.size()) + " tokens, which leaves no room for a completion.",
                           "invalid_request_error", what, "context_length_exceeded");
        const size_t room = context.n_ctx - prompt.size();
        if (c.max_tokens && static_cast<size_t>(*c.max_tokens) > room)
            throw ApiError(400, "This model's maximum context length is " + std::to_string(context.n_ctx) + " tokens. However, you requested " +
                                    std::to_string(prompt.size() + *c.max_tokens) + " tokens (" + std::to_string(prompt.size()) + " in the " +
                                    what + ", " + std::to_string(*c.max_tokens) + " in the completion). Please reduce the " + what +
                                    " or the completion length.",
                           "invalid_request_error", "max_tokens", "context_length_exceeded");
        for (size_t i = 0; i < c.n; ++i) {
            SequenceParams s;
            s.prompt = prompt;
            s.sampling = c.sampling;
            // A seed makes a request reproducible; choice i draws from seed + i so the n differ.
            if (c.seed) s.sampling.seed = *c.seed + i;
            s.max_tokens = c.max_tokens ? static_cast<size_t>(*c.max_tokens) : std::min(default_max_tokens, room);
            s.stop = c.stop;
            s.ignore_eos = c.ignore_eos;
            s.logprobs = logprobs;
            s.top_logprobs = top_logprobs;
            request.choices.push_back(std::move(s));
        }
    }
    return request;
}

// A message's content: a string, or an array of text parts joined.
std::string message_content(const json& message, size_t index) {
    const std::string where = "messages[" + std::to_string(index) + "].content";
    const json* content = field(message, "content");
    if (!content) return {};
    if (content->is_string()) return content->get<std::string>();
    if (!content->is_array()) throw bad_field(where, "must be a string or an array of content parts");
    std::string text;
    for (const json& part : *content) {
        if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") || !part["text"].is_string())
            throw ApiError(400, "'" + where + "': only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
                           "invalid_request_error", where, "unsupported_content");
        text += part["text"].get<std::string>();
    }
    return text;
}

json logprob_entry(const Tokenizer& tokenizer, Token id, double logprob) {
    const std::string piece = tokenizer.token_to_piece(id);
    json bytes = json::array();
    for (unsigned char b : piece) bytes.push_back(int(b));
    return {{"token", piece}, {"logprob", logprob}, {"bytes", bytes}};
}

// Chat's logprobs: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}.
json chat_logprobs(const std::vector<const SequenceEvent*>& tokens, const Tokenizer& tokenizer) {
    json content = json::array();
    for (const SequenceEvent* e : tokens) {
        json entry = logprob_entry(tokenizer, *e->token, *e->logprob);
        entry["top_logprobs"] = json::array();
        for (const TokenLogprob& t : e->top_logprobs) entry["top_logprobs"].push_back(logprob_entry(tokenizer, t.id, t.logprob));
        content.push_back(std::move(entry));
    }
    return {{"content", content}, {"refusal", nullptr}};
}

// Completions' logprobs: parallel arrays, top_logprobs as {token: logprob} objects.
json completion_logprobs(const std::vector<const SequenceEvent*>& tokens, const Tokenizer& tokenizer, size_t text_offset) {
    json out = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()}, {"text_offset", json::array()}};
    for (const SequenceEvent* e : tokens) {
        const std::string piece = tokenizer.token_to_piece(*e->token);
        out["tokens"].push_back(piece);
        out["token_logprobs"].push_back(*e->logprob);
        json top = json::object();
        for (const TokenLogprob& t : e->top_logprobs) top[tokenizer.token_to_piece(t.id)] = t.logprob;
        out["top_logprobs"].push_back(top);
        out["text_offset"].push_back(text_offset);
        text_offset += piece.size();
    }
    return out;
}

std::string object_name(const GenerationRequest& request, bool chunk) {
    if (request.endpoint == Endpoint::Completions) return "text_completion";
    return chunk ? "chat.completion.chunk" : "chat.completion";
}

}  // namespace

json error_body(const ApiError& error) {
    return {{"error",
             {{"message", error.what()},
              {"type", error.type},
              {"param", error.param.empty() ? json(nullptr) : json(error.param)},
              {"code", error.code.empty() ? json(nullptr) : json(error.code)}}}};
}

std::string dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

json parse_body(const std::string& body) {
    json parsed;
    try {
        parsed = json::parse(body);
    } catch (const json::parse_error& e) {
        throw ApiError(400, std::string("the body is not valid JSON: ") + e.what(), "invalid_request_error", "", "invalid_json");
    }
    if (!parsed.is_object())
        throw ApiError(400, "the body must be a JSON object, got " + std::string(parsed.type_name()), "invalid_request_error", "",
                       "invalid_json");
    return parsed;
}

GenerationRequest parse_chat_request(const json& body, const ApiContext& context) {
    const CommonFields common = common_fields(body, context);
    const json* messages = field(body, "messages");
    if (!messages) throw ApiError(400, "'messages' is required", "invalid_request_error", "messages", "missing_required_parameter");
    if (!messages->is_array() || messages->empty()) throw bad_field("messages", "must be a non-empty array of messages");
    std::vector<ChatMessage> chat;
    for (size_t i = 0; i < messages->size(); ++i) {
        const json& m = (*messages)[i];
        if (!m.is_object()) throw bad_field("messages[" + std::to_string(i) + "]", "must be an object");
        const json* role = field(m, "role");
        if (!role || !role->is_string()) throw bad_field("messages[" + std::to_string(i) + "].role", "must be a string");
        const std::string r = role->get<std::string>();
        if (r != "system" && r != "developer" && r != "user" && r != "assistant")
            throw ApiError(400, "'messages[" + std::to_string(i) + "].role': '" + r +
                                    "' is not supported (system, developer, user, assistant; tool messages need tool calls, not implemented yet)",
                           "invalid_request_error", "messages[" + std::to_string(i) + "].role", "invalid_value");
        refuse_unsupported(m, "tool_calls", "tool calls");
        // The templates know system, user and assistant; OpenAI's newer "developer" is a system message.
        chat.push_back({r == "developer" ? "system" : r, message_content(m, i)});
    }
    bool logprobs = bool_field(body, "logprobs").value_or(false);
    const auto top = integer_field(body, "top_logprobs", 0, max_top_logprobs);
    if (top && !logprobs) throw bad_field("top_logprobs", "needs logprobs: true");
    if (!context.chat_template)
        throw ApiError(400, "this model has no chat template: use /v1/completions, or start the server with --chat-template-file",
                       "invalid_request_error", "messages", "no_chat_template");
    std::string text;
    try {
        const Tokenizer& tokenizer = context.engine.tokenizer();
        const auto piece = [&](std::optional<Token> t) { return t ? tokenizer.token_to_piece(*t) : std::string(); };
        text = context.chat_template->apply(chat, /*add_generation_prompt=*/true, piece(tokenizer.bos()), piece(tokenizer.eos()));
    } catch (const ChatTemplateError& e) {
        throw ApiError(400, std::string("the chat template refused these messages: ") + e.what(), "invalid_request_error", "messages",
                       "chat_template_error");
    }
    const std::vector<std::vector<Token>> prompts{context.engine.tokenize(text, /*add_special=*/true, /*parse_special=*/true)};
    return make_request(Endpoint::ChatCompletions, prompts, common, context.n_ctx, logprobs, top.value_or(0), context);
}

GenerationRequest parse_completion_request(const json& body, const ApiContext& context) {
    const CommonFields common = common_fields(body, context);
    if (bool_field(body, "echo").value_or(false)) throw ApiError(400, "'echo' is not supported by this server yet", "invalid_request_error", "echo", "unsupported_parameter");
    refuse_unsupported(body, "suffix", "insertion");
    if (const auto best_of = integer_field(body, "best_of", 1, static_cast<long long>(context.max_choices)); best_of && size_t(*best_of) != common.n)
        throw ApiError(400, "'best_of' other than n is not supported by this server yet", "invalid_request_error", "best_of", "unsupported_parameter");
    const json* prompt = field(body, "prompt");
    if (!prompt) throw ApiError(400, "'prompt' is required", "invalid_request_error", "prompt", "missing_required_parameter");
    const size_t n_vocab = context.engine.config().n_vocab;
    const auto token_ids = [&](const json& ids) {
        std::vector<Token> out;
        for (const json& id : ids) {
            if (!id.is_number_integer() || id.get<long long>() < 0 || id.get<unsigned long long>() >= n_vocab)
                throw bad_field("prompt", "token ids must be integers from 0 to " + std::to_string(n_vocab - 1) + ", got " + dump(id));
            out.push_back(static_cast<Token>(id.get<long long>()));
        }
        return out;
    };
    const auto text_ids = [&](const json& text) { return context.engine.tokenize(text.get<std::string>(), true, false); };
    std::vector<std::vector<Token>> prompts;
    if (prompt->is_string()) prompts.push_back(text_ids(*prompt));
    else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number()) prompts.push_back(token_ids(*prompt));
    else if (prompt->is_array() && !prompt->empty()) {
        for (const json& p : *prompt) {
            if (p.is_string()) prompts.push_back(text_ids(p));
            else if (p.is_array()) prompts.push_back(token_ids(p));
            else throw bad_field("prompt", "must be a string, an array of strings, or token ids");
        }
    } else {
        throw bad_field("prompt", "must be a string, an array of strings, or token ids");
    }
    if (prompts.size() > context.max_choices)
        throw bad_field("prompt", "at most " + std::to_string(context.max_choices) + " prompts in one request");
    // Completions' logprobs is the number of alternatives (OpenAI allows 0 to 5; here up to 20).
    const auto logprobs = integer_field(body, "logprobs", 0, max_top_logprobs);
    constexpr size_t openai_completion_default_max_tokens = 16;
    return make_request(Endpoint::Completions, prompts, common, openai_completion_default_max_tokens, logprobs.has_value(),
                        static_cast<size_t>(logprobs.value_or(0)), context);
}

json usage_object(const GenerationRequest& request, const std::vector<ChoiceResult>& choices) {
    // Each prompt counts once however many samples (n) it had, as OpenAI counts; its cached
    // tokens are those its first sample reused.
    size_t prompt_tokens = 0, cached = 0, completion = 0;
    for (size_t i = 0; i < choices.size(); ++i) {
        if (i % request.n == 0) prompt_tokens += choices[i].prompt_tokens, cached += choices[i].cached_tokens;
        completion += choices[i].completion_tokens;
    }
    return {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion},
            {"total_tokens", prompt_tokens + completion},
            {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

json completion_response(const GenerationRequest& request, const ResponseHeader& header, const std::vector<ChoiceResult>& choices,
                         const Tokenizer& tokenizer) {
    json out = {{"id", header.id}, {"object", object_name(request, false)}, {"created", header.created}, {"model", header.model},
                {"system_fingerprint", nullptr}};
    json list = json::array();
    for (size_t i = 0; i < choices.size(); ++i) {
        const ChoiceResult& c = choices[i];
        std::vector<const SequenceEvent*> tokens;
        for (const SequenceEvent& e : c.tokens) tokens.push_back(&e);
        json choice = {{"index", i}, {"finish_reason", std::string(finish_reason_name(c.finish.value_or(FinishReason::Length)))}};
        if (request.endpoint == Endpoint::ChatCompletions) {
            choice["message"] = {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}};
            choice["logprobs"] = request.logprobs ? chat_logprobs(tokens, tokenizer) : json(nullptr);
        } else {
            choice["text"] = c.text;
            choice["logprobs"] = request.logprobs ? completion_logprobs(tokens, tokenizer, 0) : json(nullptr);
        }
        list.push_back(std::move(choice));
    }
    out["choices"] = std::move(list);
    out["usage"] = usage_object(request, choices);
    return out;
}

json completion_chunk(const GenerationRequest& request, const ResponseHeader& header, const SequenceEvent& event, bool first,
                      const Tokenizer& tokenizer) {
    const bool has_token = event.token.has_value() && request.logprobs && event.logprob;
    if (event.text.empty() && !event.finish && !has_token && !first) return nullptr;
    json choice = {{"index", event.choice},
                   {"finish_reason", event.finish ? json(std::string(finish_reason_name(*event.finish))) : json(nullptr)}};
    std::vector<const SequenceEvent*> tokens;
    if (has_token) tokens.push_back(&event);
    if (request.endpoint == Endpoint::ChatCompletions) {
        json delta = json::object();
        if (first) delta["role"] = "assistant";
        if (!event.text.empty() || first) delta["content"] = event.text;
        choice["delta"] = std::move(delta);
        choice["logprobs"] = has_token ? chat_logprobs(tokens, tokenizer) : json(nullptr);
    } else {
        choice["text"] = event.text;
        choice["logprobs"] = has_token ? completion_logprobs(tokens, tokenizer, 0) : json(nullptr);
    }
    json out = {{"id", header.id}, {"object", object_name(request, true)}, {"created", header.created}, {"model", header.model},
                {"system_fingerprint", nullptr}, {"choices", json::array({std::move(choice)})}};
    if (request.include_usage) out["usage"] = nullptr;
    return out;
}

json usage_chunk(const GenerationRequest& request, const ResponseHeader& header, const std::vector<ChoiceResult>& choices) {
    return {{"id", header.id}, {"object", object_name(request, true)}, {"created", header.created}, {"model", header.model},
            {"system_fingerprint", nullptr}, {"choices", json::array()}, {"usage", usage_object(request, choices)}};
}

ApiError finish_error(FinishReason reason, const std::string& message) {
    if (reason == FinishReason::Timeout) return ApiError(504, message, "timeout_error", "", "timeout");
    return ApiError(500, message.empty() ? "the request was cancelled" : message, "server_error", "", "internal_error");
}

}  // namespace twinfer::server
