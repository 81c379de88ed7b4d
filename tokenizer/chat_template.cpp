#include "tokenizer/chat_template.hpp"

#include "tokenizer/jinja.hpp"

namespace twinfer {

ChatTemplate::ChatTemplate(std::string source)
    : source_(std::move(source)), parsed_(std::make_unique<const jinja::Template>(jinja::parse(source_))) {}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

namespace {

// A JSON value as the template sees it, as Python's json.loads would give it to jinja2.
jinja::Value from_json(const nlohmann::json& value, int depth) {
    if (depth > jinja::limits::nesting)
        throw ChatTemplateError("the messages nest deeper than " + std::to_string(jinja::limits::nesting) + " levels");
    switch (value.type()) {
    case nlohmann::json::value_t::null: return jinja::None{};
    case nlohmann::json::value_t::boolean: return value.get<bool>();
    case nlohmann::json::value_t::number_integer: return value.get<std::int64_t>();
    case nlohmann::json::value_t::number_unsigned:
        if (value.get<std::uint64_t>() > std::uint64_t(INT64_MAX)) return value.get<double>();
        return std::int64_t(value.get<std::uint64_t>());
    case nlohmann::json::value_t::number_float: return value.get<double>();
    case nlohmann::json::value_t::string: return value.get<std::string>();
    case nlohmann::json::value_t::array: {
        std::vector<jinja::Value> items;
        for (const auto& item : value) items.push_back(from_json(item, depth + 1));
        return jinja::Value::list(std::move(items));
    }
    case nlohmann::json::value_t::object: {
        jinja::DictItems items;
        for (const auto& [key, item] : value.items()) items.emplace_back(key, from_json(item, depth + 1));
        return jinja::Value::dict(std::move(items));
    }
    default: throw ChatTemplateError("a message holds a value of type " + std::string(value.type_name()) + ", which JSON has not");
    }
}

std::string render(const jinja::Template& parsed, jinja::Value messages, jinja::Value tools, bool add_generation_prompt,
                   const std::string& bos_token, const std::string& eos_token,
                   const std::map<std::string, std::string>& extra_variables, const std::optional<std::tm>& now) {
    std::map<std::string, jinja::Value> globals;
    for (const auto& [name, value] : extra_variables) globals[name] = value;
    globals["messages"] = std::move(messages);
    if (!tools.is_undefined()) globals["tools"] = std::move(tools);
    globals["add_generation_prompt"] = add_generation_prompt;
    globals["bos_token"] = bos_token;
    globals["eos_token"] = eos_token;
    return jinja::render(parsed, globals, now);
}

}  // namespace

std::string ChatTemplate::apply(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                const std::string& bos_token, const std::string& eos_token,
                                const std::map<std::string, std::string>& extra_variables) const {
    std::vector<jinja::Value> message_values;
    message_values.reserve(messages.size());
    for (const auto& m : messages)
        message_values.push_back(jinja::Value::dict({{"role", m.role}, {"content", m.content}}));
    return render(*parsed_, jinja::Value::list(std::move(message_values)), jinja::Undefined{"tools"}, add_generation_prompt,
                  bos_token, eos_token, extra_variables, now_);
}

std::string ChatTemplate::apply_json(const nlohmann::json& messages, const nlohmann::json& tools, bool add_generation_prompt,
                                     const std::string& bos_token, const std::string& eos_token) const {
    return render(*parsed_, from_json(messages, 0), tools.is_null() ? jinja::Value(jinja::Undefined{"tools"}) : from_json(tools, 0),
                  add_generation_prompt, bos_token, eos_token, {}, now_);
}

}  // namespace twinfer
