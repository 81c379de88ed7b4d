#include "server/openai_api.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include "structured/json_schema.hpp"

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
    // double(hi) may round up: double(LLONG_MAX) is 2^63, which no long long holds.
    constexpr double two_to_63 = 9223372036854775808.0;
    if (x < double(lo) || x > double(hi) || x >= two_to_63) throw out_of_range();
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
    std::shared_ptr<const structured::Grammar> grammar;   // response_format json_object / json_schema
};

// A SchemaError as the client hears it: 400 naming the construct, its path in `param`.
ApiError schema_error(const structured::SchemaError& e, const std::string& field) {
    return ApiError(400, "'" + field + e.where + "': " + e.what(), "invalid_request_error", field + e.where, "invalid_schema");
}

// response_format: text (nothing to enforce), json_object, or json_schema {name, schema, strict}.
std::shared_ptr<const structured::Grammar> response_format_grammar(const json& body) {
    const json* format = field(body, "response_format");
    if (!format) return nullptr;
    if (!format->is_object() || !format->contains("type") || !(*format)["type"].is_string())
        throw bad_field("response_format", "must be an object with a string 'type'");
    const std::string type = (*format)["type"].get<std::string>();
    if (type == "text") return nullptr;
    if (type == "json_object") return std::make_shared<structured::Grammar>(structured::Grammar{structured::any_json_object(), "", ""});
    if (type != "json_schema")
        throw bad_field("response_format.type", "must be \"text\", \"json_object\" or \"json_schema\", got " + dump((*format)["type"]));
    const json* spec = field(*format, "json_schema");
    if (!spec || !spec->is_object()) throw bad_field("response_format.json_schema", "an object {name, schema, strict} is required");
    if (const json* name = field(*spec, "name"); name && !name->is_string())
        throw bad_field("response_format.json_schema.name", "must be a string");
    const bool strict = bool_field(*spec, "strict").value_or(false);
    const json* schema = field(*spec, "schema");
    try {
        // No schema: any JSON value, as OpenAI takes it.
        return std::make_shared<structured::Grammar>(
            structured::Grammar{structured::compile_json_schema(schema ? *schema : json::object(), {.strict = strict}), "", ""});
    } catch (const structured::SchemaError& e) {
        throw schema_error(e, "response_format.json_schema.schema");
    }
}

// echo: a completion that echoes its prompt may ask for no tokens (max_tokens 0: the prompt scored).
CommonFields common_fields(const json& body, const ApiContext& context, bool echo = false) {
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
    const long long fewest = echo ? 0 : 1;
    c.max_tokens = integer_field(body, "max_completion_tokens", fewest, static_cast<long long>(context.n_ctx));
    if (const auto legacy = integer_field(body, "max_tokens", fewest, static_cast<long long>(context.n_ctx)); legacy && !c.max_tokens)
        c.max_tokens = legacy;
    refuse_unsupported(body, "functions", "the deprecated function calls: use tools");
    refuse_unsupported(body, "function_call", "the deprecated function calls: use tool_choice");
    c.grammar = response_format_grammar(body);
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
            s.grammar = c.grammar;
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

constexpr size_t max_tools = 64;

// A message as the chat template gets it: role (developer as system), content as a string (text
// parts joined), an assistant's tool_calls with their arguments as JSON objects (templates write
// them with tojson, as transformers passes them), a tool message's tool_call_id.
json template_message(const json& m, size_t index) {
    const std::string where = "messages[" + std::to_string(index) + "]";
    if (!m.is_object()) throw bad_field(where, "must be an object");
    const json* role = field(m, "role");
    if (!role || !role->is_string()) throw bad_field(where + ".role", "must be a string");
    const std::string r = role->get<std::string>();
    if (r != "system" && r != "developer" && r != "user" && r != "assistant" && r != "tool")
        throw bad_field(where + ".role", "'" + r + "' is not a role (system, developer, user, assistant, tool)");
    json out = {{"role", r == "developer" ? "system" : r}, {"content", message_content(m, index)}};
    if (const json* name = field(m, "name")) {
        if (!name->is_string()) throw bad_field(where + ".name", "must be a string");
        out["name"] = *name;
    }
    if (r == "tool") {
        const json* id = field(m, "tool_call_id");
        if (!id || !id->is_string()) throw bad_field(where + ".tool_call_id", "a tool message needs the string id of the call it answers");
        out["tool_call_id"] = *id;
    }
    if (const json* calls = field(m, "tool_calls")) {
        if (r != "assistant") throw bad_field(where + ".tool_calls", "only assistant messages carry tool calls");
        if (!calls->is_array()) throw bad_field(where + ".tool_calls", "must be an array of tool calls");
        json converted = json::array();
        for (size_t i = 0; i < calls->size(); ++i) {
            const std::string at = where + ".tool_calls[" + std::to_string(i) + "]";
            const json& call = (*calls)[i];
            const json* function = call.is_object() ? field(call, "function") : nullptr;
            if (!function || !function->is_object()) throw bad_field(at, "must be {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}");
            if (const json* type = field(call, "type"); type && *type != "function") throw bad_field(at + ".type", "must be \"function\"");
            const json* name = field(*function, "name");
            const json* arguments = field(*function, "arguments");
            if (!name || !name->is_string()) throw bad_field(at + ".function.name", "must be a string");
            if (!arguments || !arguments->is_string()) throw bad_field(at + ".function.arguments", "must be a string (JSON)");
            const json parsed = json::parse(arguments->get<std::string>(), nullptr, false);
            const json* id = field(call, "id");
            if (id && !id->is_string()) throw bad_field(at + ".id", "must be a string");
            converted.push_back({{"id", id ? *id : json("")},
                                 {"type", "function"},
                                 {"function", {{"name", *name}, {"arguments", parsed.is_discarded() ? *arguments : parsed}}}});
        }
        out["tool_calls"] = std::move(converted);
    }
    return out;
}

bool valid_function_name(const std::string& name) {
    return !name.empty() && name.size() <= 64 &&
           std::all_of(name.begin(), name.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; });
}

// tools and tool_choice; null where the request has no tools or tool_choice is "none".
std::shared_ptr<const ToolSet> parse_tools(const json& body) {
    const json* tools = field(body, "tools");
    const json* choice = field(body, "tool_choice");
    if (const json* parallel = field(body, "parallel_tool_calls"); parallel && !parallel->is_boolean())
        throw bad_field("parallel_tool_calls", "must be a boolean");
    if (!tools) {
        if (choice && *choice != "none") throw bad_field("tool_choice", "needs tools");
        return nullptr;
    }
    if (!tools->is_array() || tools->empty() || tools->size() > max_tools)
        throw bad_field("tools", "must be an array of 1 to " + std::to_string(max_tools) + " tools");
    auto set = std::make_shared<ToolSet>();
    for (size_t i = 0; i < tools->size(); ++i) {
        const std::string where = "tools[" + std::to_string(i) + "]";
        const json& tool = (*tools)[i];
        if (!tool.is_object() || tool.value("type", json()) != "function")
            throw bad_field(where, "must be {\"type\": \"function\", \"function\": {...}}");
        const json* function = field(tool, "function");
        if (!function || !function->is_object()) throw bad_field(where + ".function", "must be an object {name, description, parameters}");
        const json* name = field(*function, "name");
        if (!name || !name->is_string() || !valid_function_name(name->get<std::string>()))
            throw bad_field(where + ".function.name", "must be 1 to 64 letters, digits, '_' or '-'");
        if (const json* description = field(*function, "description"); description && !description->is_string())
            throw bad_field(where + ".function.description", "must be a string");
        ToolFunction f{.name = name->get<std::string>(), .parameters = json{{"type", "object"}}};
        f.strict = bool_field(*function, "strict").value_or(false);
        if (const json* parameters = field(*function, "parameters")) {
            if (!parameters->is_object()) throw bad_field(where + ".function.parameters", "must be a JSON Schema object");
            f.parameters = *parameters;
        }
        try {
            f.arguments = std::make_shared<structured::Grammar>(
                structured::Grammar{structured::compile_json_schema(f.parameters, {.strict = f.strict}), "", ""});
        } catch (const structured::SchemaError& e) {
            throw schema_error(e, where + ".function.parameters");
        }
        for (const ToolFunction& other : set->functions)
            if (other.name == f.name) throw bad_field(where + ".function.name", "'" + f.name + "' names two tools");
        set->functions.push_back(std::move(f));
    }
    if (!choice || *choice == "auto") set->choice = ToolChoice::Auto;
    else if (*choice == "none") return nullptr;
    else if (*choice == "required") set->choice = ToolChoice::Required;
    else if (choice->is_object() && choice->value("type", json()) == "function" && choice->contains("function") &&
             (*choice)["function"].is_object() && (*choice)["function"].value("name", json()).is_string()) {
        set->choice = ToolChoice::Named;
        set->named = (*choice)["function"]["name"].get<std::string>();
        if (std::none_of(set->functions.begin(), set->functions.end(), [&](const ToolFunction& f) { return f.name == set->named; }))
            throw bad_field("tool_choice", "names '" + set->named + "', which is not among the tools");
    } else {
        throw bad_field("tool_choice", "must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}");
    }
    return set;
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

// The bytes a token adds to a choice's text: a control token (a BOS the tokenizer added) none.
size_t text_bytes(const Tokenizer& tokenizer, Token id) { return tokenizer.is_control(id) ? 0 : tokenizer.token_to_piece(id).size(); }

// Completions' logprobs: parallel arrays, top_logprobs as {token: logprob} objects. With echo the
// prompt's tokens come first, the first with null logprobs (nothing comes before it), as OpenAI's
// completions and vLLM report them; text_offset counts from the start of the choice's text
// (text_offset: where `tokens` begin in it), where a control token takes no room.
json completion_logprobs(const std::vector<const SequenceEvent*>& tokens, const Tokenizer& tokenizer, size_t text_offset,
                         const SequenceParams* echoed = nullptr, const std::vector<ScoredToken>& prompt_scores = {}) {
    json out = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()}, {"text_offset", json::array()}};
    size_t offset = 0;
    const auto add = [&](Token id, json logprob, const std::vector<TokenLogprob>* top_logprobs) {
        const std::string piece = tokenizer.token_to_piece(id);
        out["tokens"].push_back(piece);
        out["token_logprobs"].push_back(std::move(logprob));
        json top = top_logprobs ? json::object() : json(nullptr);
        if (top_logprobs)
            for (const TokenLogprob& t : *top_logprobs) top[tokenizer.token_to_piece(t.id)] = t.logprob;
        out["top_logprobs"].push_back(std::move(top));
        out["text_offset"].push_back(offset);
        offset += text_bytes(tokenizer, id);
    };
    if (echoed) {
        add(echoed->prompt.front(), nullptr, nullptr);
        for (const ScoredToken& t : prompt_scores) add(t.id, t.logprob, &t.top_logprobs);
    }
    offset = text_offset;
    for (const SequenceEvent* e : tokens) add(*e->token, *e->logprob, &e->top_logprobs);
    return out;
}

std::string object_name(const GenerationRequest& request, bool chunk) {
    if (request.endpoint == Endpoint::Completions) return "text_completion";
    return chunk ? "chat.completion.chunk" : "chat.completion";
}

// The tool calls a finished chat choice's text is, if the request has tools and it is.
std::optional<std::vector<ToolCall>> tool_calls_of(const GenerationRequest& request, const std::string& text,
                                                   std::optional<FinishReason> finish) {
    if (!request.tools || finish != FinishReason::Stop) return std::nullopt;
    return parse_tool_calls(text, *request.tools);
}

json tool_calls_json(const std::vector<ToolCall>& calls, bool streamed) {
    json out = json::array();
    for (size_t i = 0; i < calls.size(); ++i) {
        json call = {{"id", calls[i].id}, {"type", "function"}, {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments}}}};
        if (streamed) call["index"] = i;   // a delta's calls say which call they extend
        out.push_back(std::move(call));
    }
    return out;
}

json chunk_of(const GenerationRequest& request, const ResponseHeader& header, json choice) {
    json out = {{"id", header.id}, {"object", object_name(request, true)}, {"created", header.created}, {"model", header.model},
                {"system_fingerprint", nullptr}, {"choices", json::array({std::move(choice)})}};
    if (request.include_usage) out["usage"] = nullptr;
    return out;
}

// A streamed chunk for one event (text or finish of a choice); null when there is nothing to
// send. first: the choice's first chunk (chat sends the role then). text_offset: where the event's
// token begins in the choice's text (completions' logprobs), moved past it.
json completion_chunk(const GenerationRequest& request, const ResponseHeader& header, const SequenceEvent& event, bool first,
                      size_t& text_offset, const Tokenizer& tokenizer) {
    const bool has_token = event.token.has_value() && request.logprobs && event.logprob;
    const bool echo_first = first && request.endpoint == Endpoint::Completions && !request.echo.empty();
    if (echo_first) text_offset = request.echo[event.choice].size();
    const size_t token_offset = text_offset;
    if (event.token) text_offset += text_bytes(tokenizer, *event.token);
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
    } else if (echo_first) {
        // The prompt goes out first, with its tokens' logprobs when they are asked for.
        const std::string& echoed = request.echo[event.choice];
        choice["text"] = echoed + event.text;
        choice["logprobs"] = request.logprobs ? completion_logprobs(tokens, tokenizer, token_offset, &request.choices[event.choice],
                                                                    event.prompt_scores)
                                              : json(nullptr);
    } else {
        choice["text"] = event.text;
        choice["logprobs"] = has_token ? completion_logprobs(tokens, tokenizer, token_offset) : json(nullptr);
    }
    return chunk_of(request, header, std::move(choice));
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
    } catch (const json::exception& e) {   // parse_error, and out_of_range for a number beyond double (1e400)
        throw ApiError(400, std::string("the body is not valid JSON: ") + e.what(), "invalid_request_error", "", "invalid_json");
    }
    if (!parsed.is_object())
        throw ApiError(400, "the body must be a JSON object, got " + std::string(parsed.type_name()), "invalid_request_error", "",
                       "invalid_json");
    return parsed;
}

GenerationRequest parse_chat_request(const json& body, const ApiContext& context) {
    CommonFields common = common_fields(body, context);
    const json* messages = field(body, "messages");
    if (!messages) throw ApiError(400, "'messages' is required", "invalid_request_error", "messages", "missing_required_parameter");
    if (!messages->is_array() || messages->empty()) throw bad_field("messages", "must be a non-empty array of messages");
    json chat = json::array();
    for (size_t i = 0; i < messages->size(); ++i) chat.push_back(template_message((*messages)[i], i));
    bool logprobs = bool_field(body, "logprobs").value_or(false);
    const auto top = integer_field(body, "top_logprobs", 0, max_top_logprobs);
    if (top && !logprobs) throw bad_field("top_logprobs", "needs logprobs: true");
    if (!context.chat_template)
        throw ApiError(400, "this model has no chat template: use /v1/completions, or start the server with --chat-template-file",
                       "invalid_request_error", "messages", "no_chat_template");
    const std::shared_ptr<const ToolSet> tools = parse_tools(body);
    if (tools) {
        if (!template_writes_hermes_tool_calls(context.chat_template->source()))
            throw ApiError(400, "this model's chat template does not write tool calls in the <tool_call> format this server reads; "
                                "start the server with --chat-template-file and a template that does",
                           "invalid_request_error", "tools", "unsupported_parameter");
        if (common.grammar)
            throw ApiError(400, "'response_format' other than text together with tools is not supported by this server",
                           "invalid_request_error", "response_format", "unsupported_parameter");
        if (tools->choice == ToolChoice::Required || tools->choice == ToolChoice::Named) {
            try {
                common.grammar = tool_call_grammar(*tools);
            } catch (const structured::SchemaError& e) {
                throw ApiError(400, std::string("the tools' schemas together: ") + e.what(), "invalid_request_error", "tools", "invalid_schema");
            }
        }
    }
    std::string text;
    try {
        const Tokenizer& tokenizer = context.engine.tokenizer();
        const auto piece = [&](std::optional<Token> t) { return t ? tokenizer.token_to_piece(*t) : std::string(); };
        text = context.chat_template->apply_json(chat, tools ? (*field(body, "tools")) : json(), /*add_generation_prompt=*/true,
                                                 piece(tokenizer.bos()), piece(tokenizer.eos()));
    } catch (const ChatTemplateError& e) {
        throw ApiError(400, std::string("the chat template refused these messages: ") + e.what(), "invalid_request_error", "messages",
                       "chat_template_error");
    }
    const std::vector<std::vector<Token>> prompts{context.engine.tokenize(text, /*add_special=*/true, /*parse_special=*/true)};
    GenerationRequest request = make_request(Endpoint::ChatCompletions, prompts, common, context.n_ctx, logprobs, top.value_or(0), context);
    request.tools = tools;
    return request;
}

GenerationRequest parse_completion_request(const json& body, const ApiContext& context) {
    const bool echo = bool_field(body, "echo").value_or(false);
    const CommonFields common = common_fields(body, context, echo);
    refuse_unsupported(body, "suffix", "insertion");
    refuse_unsupported(body, "tools", "tool calls are for /v1/chat/completions");
    refuse_unsupported(body, "tool_choice", "tool calls are for /v1/chat/completions");
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
    std::vector<std::string> prompt_texts;   // what echo repeats: the prompt as given, or its ids' text
    const auto add = [&](const json& p) {
        if (p.is_string()) {
            prompts.push_back(text_ids(p));
            prompt_texts.push_back(p.get<std::string>());
        } else {
            prompts.push_back(token_ids(p));
            // The ids' text as generated text shows it: control tokens left out, so that each
            // logprobs entry's text_offset points into it.
            const Tokenizer& tokenizer = context.engine.tokenizer();
            std::string text;
            for (Token t : prompts.back())
                if (!tokenizer.is_control(t)) text += tokenizer.token_to_piece(t);
            prompt_texts.push_back(std::move(text));
        }
    };
    if (prompt->is_string() || (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number())) add(*prompt);
    else if (prompt->is_array() && !prompt->empty()) {
        for (const json& p : *prompt) {
            if (!p.is_string() && !p.is_array()) throw bad_field("prompt", "must be a string, an array of strings, or token ids");
            add(p);
        }
    } else {
        throw bad_field("prompt", "must be a string, an array of strings, or token ids");
    }
    if (prompts.size() > context.max_choices)
        throw bad_field("prompt", "at most " + std::to_string(context.max_choices) + " prompts in one request");
    // Completions' logprobs is the number of alternatives (OpenAI allows 0 to 5; here up to 20).
    const auto logprobs = integer_field(body, "logprobs", 0, max_top_logprobs);
    constexpr size_t openai_completion_default_max_tokens = 16;
    GenerationRequest request = make_request(Endpoint::Completions, prompts, common, openai_completion_default_max_tokens,
                                             logprobs.has_value(), static_cast<size_t>(logprobs.value_or(0)), context);
    if (echo) {
        for (SequenceParams& choice : request.choices) choice.score_prompt = request.logprobs;
        for (const std::string& text : prompt_texts)
            for (size_t i = 0; i < request.n; ++i) request.echo.push_back(text);
    }
    return request;
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
            if (const auto calls = tool_calls_of(request, c.text, c.finish)) {
                choice["message"]["content"] = nullptr;
                choice["message"]["tool_calls"] = tool_calls_json(*calls, false);
                choice["finish_reason"] = "tool_calls";
            }
            choice["logprobs"] = request.logprobs ? chat_logprobs(tokens, tokenizer) : json(nullptr);
        } else {
            const std::string echoed = request.echo.empty() ? std::string() : request.echo[i];
            choice["text"] = echoed + c.text;
            choice["logprobs"] = request.logprobs ? completion_logprobs(tokens, tokenizer, echoed.size(),
                                                                        request.echo.empty() ? nullptr : &request.choices[i], c.prompt_scores)
                                                  : json(nullptr);
        }
        list.push_back(std::move(choice));
    }
    out["choices"] = std::move(list);
    out["usage"] = usage_object(request, choices);
    return out;
}

ChoiceStream choice_stream(const GenerationRequest& request) {
    ChoiceStream stream;
    if (request.tools) stream.tool_calls.emplace(request.tools->choice != ToolChoice::Auto);
    return stream;
}

std::vector<json> stream_chunks(const GenerationRequest& request, const ResponseHeader& header, const SequenceEvent& event,
                                ChoiceStream& stream, const Tokenizer& tokenizer) {
    const bool first = !stream.started;
    stream.started = true;
    SequenceEvent shown = event;
    if (stream.tool_calls) {
        // With tools the text is held while it may be a call; a finished call goes out as one
        // delta with the whole call, then the finish.
        shown.text = stream.tool_calls->push(event.text);
        if (event.finish && stream.tool_calls->held_all()) {
            if (const auto calls = tool_calls_of(request, stream.tool_calls->text(), event.finish)) {
                json delta = {{"tool_calls", tool_calls_json(*calls, true)}};
                if (first) delta["role"] = "assistant", delta["content"] = nullptr;
                return {chunk_of(request, header, {{"index", event.choice}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}}),
                        chunk_of(request, header,
                                 {{"index", event.choice}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", "tool_calls"}})};
            }
            shown.text = stream.tool_calls->release() + shown.text;
        }
    }
    json chunk = completion_chunk(request, header, shown, first, stream.text_offset, tokenizer);
    return chunk.is_null() ? std::vector<json>{} : std::vector<json>{std::move(chunk)};
}

json usage_chunk(const GenerationRequest& request, const ResponseHeader& header, const std::vector<ChoiceResult>& choices) {
    return {{"id", header.id}, {"object", object_name(request, true)}, {"created", header.created}, {"model", header.model},
            {"system_fingerprint", nullptr}, {"choices", json::array()}, {"usage", usage_object(request, choices)}};
}

ApiError finish_error(FinishReason reason, const std::string& message) {
    if (reason == FinishReason::Timeout) return ApiError(504, message, "timeout_error", "", "timeout");
    // 503, not 500: the server lacks the memory for this request (its one token ran alone), it
    // did not break, and goes on serving others; the request may fit on a replica with more memory.
    if (reason == FinishReason::OutOfMemory) return ApiError(503, message, "server_error", "", "out_of_memory");
    return ApiError(500, message.empty() ? "the request was cancelled" : message, "server_error", "", "internal_error");
}

}  // namespace twinfer::server
