#include "engine/chat_session.hpp"

#include <fstream>

#include <nlohmann/json.hpp>

namespace twinfer {

std::vector<ChatMessage> ChatSession::conversation() const {
    std::vector<ChatMessage> all;
    if (!system_prompt_.empty()) all.push_back({"system", system_prompt_});
    all.insert(all.end(), messages_.begin(), messages_.end());
    return all;
}

GenerationResult ChatSession::reply(InferenceEngine& engine, const std::string& user_message, const GenerateOptions& options,
                                    const TextCallback& on_text) {
    messages_.push_back({"user", user_message});
    GenerationResult result;
    try {
        const std::string prompt = engine.render_chat(conversation(), /*add_generation_prompt=*/true);
        const auto ids = engine.tokenize(prompt, /*add_special=*/true, /*parse_special=*/true);
        result = engine.generate(ids, options, on_text);
    } catch (...) {
        messages_.pop_back();  // the turn did not happen
        throw;
    }
    messages_.push_back({"assistant", result.text});
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
    std::ofstream out(path);
    out << j.dump(2) << "\n";
    if (!out) throw std::runtime_error("cannot write chat history to " + path.string());
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
