// Chat template engine, the template side: the input is the template text (from a model file,
// that is, from a stranger), rendered with a short conversation. Parse and render must end in
// output or a ChatTemplateError; the sandbox limits (tokenizer/jinja.hpp) bound time and memory.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/chat_template.hpp"

using namespace twinfer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::vector<ChatMessage> messages = {
        {"system", "You are terse."},
        {"user", "Hi!"},
        {"assistant", "Hello."},
        {"user", "2+2? {{ not a tag }}"},
    };
    try {
        const ChatTemplate chat_template(std::string(reinterpret_cast<const char*>(data), size));
        (void)chat_template.apply(messages, true, "<s>", "</s>", {{"date_string", "26 Jul 2024"}});
    } catch (const ChatTemplateError&) {
    }
    return 0;
}
