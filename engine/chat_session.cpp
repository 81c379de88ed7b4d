#include "engine/chat_session.hpp"

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "format/atomic_file.hpp"

namespace twinfer {

std::vector<ChatMessage> ChatSession::with_system_prompt(std::span<const ChatMessage> messages) const {
    std::vector<ChatMessage> all;
    if (!system_prompt_.empty()) all.push_back({"system", system_prompt_});
    all.insert(all.end(), messages.begin(), messages.end());
    return all;
}

std::vector<ChatMessage> ChatSession::conversation() const { return with_system_prompt(messages_); }

GenerationResult ChatSession::reply(InferenceEngine& engine, const std::string& user_message, const GenerateOptions& options,
                                    const TextCallback& on_text) {
    std::vector<ChatMessage> kept = messages_;   // the session changes only once the turn has happened
    kept.push_back({"user", user_message});
    const auto prompt_ids = [&] {
        const std::string prompt = engine.render_chat(with_system_prompt(kept), /*add_generation_prompt=*/true);
        return engine.tokenize(prompt, /*add_special=*/true, /*parse_special=*/true);
    };
    const size_t n_ctx = engine.n_ctx();
    const size_t answer_room = std::min(options.max_tokens < 0 ? n_ctx : static_cast<size_t>(options.max_tokens), n_ctx / 2);
    auto ids = prompt_ids();
    size_t dropped = 0;
    // A turn is a user message and its answer; the new message always stays.
    while (ids.size() + answer_room > n_ctx && kept.size() >= 3) {
        kept.erase(kept.begin(), kept.begin() + 2);
        ++dropped;
        ids = prompt_ids();
    }
    const GenerationResult result = engine.generate(ids, options, on_text);
    messages_ = std::move(kept);
    messages_.push_back({"assistant", result.text});
    dropped_turns = dropped;
    last = result.stats;
    totals.prompt_tokens += result.stats.prompt_tokens;
    totals.reused_tokens += result.stats.reused_tokens;
    totals.generated_tokens += result.stats.generated_tokens;
    totals.prompt_seconds += result.stats.prompt_seconds;
    totals.generation_seconds += result.stats.generation_seconds;
    return result;
}

void ChatSession::save(const std::filesystem::path& path) const {
    nlohmann::json j;
    j["system_prompt"] = system_prompt_;
    j["messages"] = nlohmann::json::array();
    for (const auto& m : messages_) j["messages"].push_back({{"role", m.role}, {"content", m.content}});
    write_file_atomically(path, j.dump(2) + "\n");
}

void ChatSession::load(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read chat history " + path.string());
    nlohmann::json j;
    try {
        in >> j;
    } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error(path.string() + ": not valid JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains("messages") || !j["messages"].is_array())
        throw std::runtime_error(path.string() + ": expected an object with a \"messages\" array");
    std::vector<ChatMessage> messages;
    for (const auto& m : j["messages"]) {
        if (!m.is_object() || !m.contains("role") || !m.contains("content") || !m["role"].is_string() || !m["content"].is_string())
            throw std::runtime_error(path.string() + ": each message needs string \"role\" and \"content\"");
        messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    messages_ = std::move(messages);
    if (j.contains("system_prompt") && j["system_prompt"].is_string()) system_prompt_ = j["system_prompt"].get<std::string>();
}

}  // namespace twinfer
