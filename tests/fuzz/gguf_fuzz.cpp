// GGUF reader: the input is a whole file image. Whatever the reader accepts is then used the way
// a model load uses it (typed getters, dequantization, hyper-parameters, vocabulary), so a value
// the parser let through cannot crash a consumer either. Only the documented error types are
// caught: any other exception escaping (std::length_error, std::bad_alloc, ...) is a finding.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "format/ggml_type.hpp"
#include "format/gguf.hpp"
#include "format/quant.hpp"
#include "models/model_config.hpp"
#include "tokenizer/tokenizer.hpp"

using namespace twinfer;

namespace {

// Every typed getter on every key: the ones that do not match the stored type must fail with a
// FormatError naming the key, the others must return the value.
void read_metadata(const gguf::File& file) {
    const auto attempt = [](auto&& get) {
        try {
            (void)get();
        } catch (const gguf::FormatError&) {
        }
    };
    for (const auto& entry : file.metadata()) {
        const std::string& key = entry.first;
        attempt([&] { return file.get_string(key); });
        attempt([&] { return file.get_uint(key); });
        attempt([&] { return file.get_int(key); });
        attempt([&] { return file.get_float(key); });
        attempt([&] { return file.get_bool(key); });
        attempt([&] { return file.get_string_array(key); });
        attempt([&] { return file.get_float_array(key); });
        attempt([&] { return file.get_int_array(key); });
    }
}

void dequantize_tensors(const gguf::File& file) {
    for (const gguf::TensorInfo& t : file.tensors()) {
        if (!type_traits(t.type).supported) continue;
        std::vector<float> values(t.n_elements);
        dequantize(t.type, t.data, values);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::optional<gguf::File> parsed;
    try {
        parsed.emplace(gguf::File::parse(std::as_bytes(std::span(data, size)), "fuzz.gguf"));
    } catch (const gguf::FormatError&) {
        return 0;
    }
    const gguf::File& file = *parsed;
    read_metadata(file);
    dequantize_tensors(file);
    try {
        ModelConfig::from_gguf(file).validate();
    } catch (const std::runtime_error&) {  // gguf::FormatError, or an unsupported architecture
    }
    if (file.has("tokenizer.ggml.model")) {
        try {
            const Tokenizer tokenizer = Tokenizer::from_gguf(file);
            const std::vector<Token> ids = tokenizer.encode("Hello world! <s> 123", true, true);
            (void)tokenizer.decode(ids);
        } catch (const TokenizerError&) {
        } catch (const gguf::FormatError&) {
        }
    }
    return 0;
}
