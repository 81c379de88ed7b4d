#include "tokenizer/chat_template.hpp"

#include "tokenizer/jinja.hpp"

namespace twinfer {

ChatTemplate::ChatTemplate(std::string source)
    : source_(std::move(source)), parsed_(std::make_unique<const jinja::Template>(jinja::parse(source_))) {}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::apply(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                const std::string& bos_token, const std::string& eos_token,
                                const std::map<std::string, std::string>& extra_variables) const {
    std::vector<jinja::Value> message_values;
    message_values.reserve(messages.size());
    for (const auto& m : messages)
        message_values.push_back(jinja::Value::dict({{"role", m.role}, {"content", m.content}}));
    std::map<std::string, jinja::Value> globals;
    for (const auto& [name, value] : extra_variables) globals[name] = value;
    globals["messages"] = jinja::Value::list(std::move(message_values));
    globals["add_generation_prompt"] = add_generation_prompt;
    globals["bos_token"] = bos_token;
    globals["eos_token"] = eos_token;
    return jinja::render(*parsed_, globals);
}

}  // namespace twinfer
