// ModelConfig::from_hf_config on hostile config.json values (found by tests/fuzz/hf_config_fuzz
// and UBSan, docs/reliability.md): an error naming the value, never a signed overflow.
#include "models/model_config.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>

namespace twinfer {
namespace {

TEST(ModelConfigHf, GptInnerWidthBeyondRangeIsAnError) {
    const auto config = nlohmann::json::parse(R"({"model_type": "gpt2", "vocab_size": 8, "n_positions": 8,
        "n_embd": 1073741824, "n_layer": 1, "n_head": 1, "layer_norm_epsilon": 1e-5})");
    try {
        ModelConfig::from_hf_config(config);
        FAIL() << "accepted an inner width of 4 x 2^30";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("n_inner"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace twinfer
