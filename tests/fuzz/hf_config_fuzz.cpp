// Hugging Face config.json: the input is the file's text. Whatever JSON parses must either give a
// consistent ModelConfig or fail with a std::runtime_error naming the key; a nlohmann exception
// escaping from ModelConfig (a type or range error on a hostile value) is a finding.
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "models/model_config.hpp"

using namespace twinfer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const nlohmann::json config = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded()) return 0;
    try {
        ModelConfig::from_hf_config(config);
    } catch (const std::runtime_error&) {
    }
    return 0;
}
