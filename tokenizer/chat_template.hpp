#pragma once
// Chat templates: the Jinja2 text a GGUF file carries in `tokenizer.chat_template`, rendered the
// way Hugging Face transformers renders it (jinja2 with trim_blocks and lstrip_blocks, tojson
// without HTML escaping, raise_exception, break/continue). Only the subset of Jinja that real chat
// templates use is implemented (tokenizer/jinja.hpp lists it); anything else is rejected with a
// ChatTemplateError naming the construct and its line, never rendered into a wrong prompt.
#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace twinfer {

struct ChatMessage {
    std::string role;
    std::string content;
};

struct ChatTemplateError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

namespace jinja {
struct Template;
}

class ChatTemplate {
public:
    // Parses once; throws ChatTemplateError naming the unsupported construct and its line.
    explicit ChatTemplate(std::string source);
    ~ChatTemplate();
    ChatTemplate(ChatTemplate&&) noexcept;
    ChatTemplate& operator=(ChatTemplate&&) noexcept;

    // Renders with the variables messages, add_generation_prompt, bos_token, eos_token, plus
    // extra_variables as strings (e.g. date_string). raise_exception(msg) in the template throws
    // ChatTemplateError(msg); so does any runtime error jinja2 would raise.
    std::string apply(std::span<const ChatMessage> messages, bool add_generation_prompt,
                      const std::string& bos_token, const std::string& eos_token,
                      const std::map<std::string, std::string>& extra_variables = {}) const;

    // The same, with messages as OpenAI-shaped JSON objects passed as they are (role, content,
    // and tool_calls, tool_call_id, name where given) and `tools` as the template's tools variable
    // (null: undefined, as for a caller with no tools). JSON nested deeper than the template
    // sandbox allows is a ChatTemplateError.
    std::string apply_json(const nlohmann::json& messages, const nlohmann::json& tools, bool add_generation_prompt,
                           const std::string& bos_token, const std::string& eos_token) const;

    const std::string& source() const { return source_; }

    // The local time strftime_now() formats: fixed by tests; unset, the time it is called.
    void set_now(const std::tm& now) { now_ = now; }

private:
    std::string source_;
    std::optional<std::tm> now_;
    std::unique_ptr<const jinja::Template> parsed_;
};

}  // namespace twinfer
