// Chat template engine, the conversation side: the real templates of tests/tokenizer/templates
// are parsed once; the input is a conversation rendered through one of them. Input layout:
//   byte 0: the template (modulo their count), bit 7 add_generation_prompt;
//   the rest: NUL-separated fields role, content, role, content, ..., bos, eos (missing ones
//   empty). Message text reaches filters (trim, tojson, slicing) and string tests with any bytes.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_data.hpp"
#include "tokenizer/chat_template.hpp"

using namespace twinfer;

namespace {

std::vector<ChatTemplate>& templates() {
    static std::vector<ChatTemplate> parsed;
    return parsed;
}

std::vector<std::string> split_fields(std::string_view bytes) {
    std::vector<std::string> fields;
    size_t begin = 0;
    for (size_t end; (end = bytes.find('\0', begin)) != std::string_view::npos; begin = end + 1)
        fields.emplace_back(bytes.substr(begin, end - begin));
    fields.emplace_back(bytes.substr(begin));
    return fields;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const std::filesystem::path dir = "tests/tokenizer/templates";
    for (const auto& path : fuzz::sorted_files(dir, ".jinja")) {
        std::ifstream in(path, std::ios::binary);
        std::ostringstream text;
        text << in.rdbuf();
        templates().emplace_back(text.str());
    }
    if (templates().empty()) {
        std::cerr << "chat_messages_fuzz: no template found in " << dir << " (set TWINFER_REPO)\n";
        std::abort();
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const ChatTemplate& chat_template = templates()[(data[0] & 0x7f) % templates().size()];
    const bool add_generation_prompt = data[0] & 0x80;
    std::vector<std::string> fields = split_fields(std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
    fields.resize(std::max<size_t>(fields.size() + fields.size() % 2, 2));  // pairs, then bos/eos
    const std::string eos = fields.back(), bos = fields[fields.size() - 2];
    std::vector<ChatMessage> messages;
    for (size_t i = 0; i + 3 < fields.size(); i += 2) messages.push_back({fields[i], fields[i + 1]});
    try {
        (void)chat_template.apply(messages, add_generation_prompt, bos, eos);
    } catch (const ChatTemplateError&) {  // raise_exception: roles out of order, ...
    }
    return 0;
}
