#pragma once
// A multi-turn conversation over an InferenceEngine: the messages, the system prompt, rendering
// through the model's chat template, and saving/loading the history as JSON.
#include <filesystem>
#include <string>
#include <vector>

#include "engine/engine.hpp"

namespace twinfer {

class ChatSession {
public:
    explicit ChatSession(std::string system_prompt = {}) : system_prompt_(std::move(system_prompt)) {}

    // Adds the user's message, generates the assistant's answer (streamed through on_text) and
    // records it. The engine reuses its cache for the part of the prompt it has already seen.
    // When the conversation leaves too little room for the answer (options.max_tokens, at most
    // half the context; half when unlimited), the oldest turns after the system prompt are
    // dropped for good (dropped_turns says how many). Throws ContextOverflow, nothing dropped,
    // when the message alone does not fit.
    GenerationResult reply(InferenceEngine& engine, const std::string& user_message, const GenerateOptions& options,
                           const TextCallback& on_text);

    void clear() { messages_.clear(); }
    void set_system_prompt(std::string s) { system_prompt_ = std::move(s); }
    const std::string& system_prompt() const { return system_prompt_; }
    const std::vector<ChatMessage>& messages() const { return messages_; }

    // The full message list the template sees (system prompt first, when set).
    std::vector<ChatMessage> conversation() const;

    // JSON: {"system_prompt": "...", "messages": [{"role": "...", "content": "..."}, ...]}, written
    // to a temporary file and renamed over `path`: a failure (a full disk) throws
    // std::system_error and leaves the old file as it was.
    void save(const std::filesystem::path& path) const;
    void load(const std::filesystem::path& path);  // throws naming the file and the problem

    // Totals over the session, for /stats.
    GenerationStats totals;
    GenerationStats last;
    size_t dropped_turns = 0;   // by the last reply

private:
    std::vector<ChatMessage> with_system_prompt(std::span<const ChatMessage> messages) const;

    std::string system_prompt_;
    std::vector<ChatMessage> messages_;
};

}  // namespace twinfer
