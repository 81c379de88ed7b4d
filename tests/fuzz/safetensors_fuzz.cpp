// safetensors reader: the input is a whole file image. Every tensor of an accepted file is read
// as float64 where its dtype allows, so offsets the parser let through are proven in bounds.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "format/safetensors.hpp"

using namespace twinfer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::optional<safetensors::File> file;
    try {
        file.emplace(safetensors::File::parse(std::as_bytes(std::span(data, size)), "fuzz.safetensors"));
    } catch (const safetensors::FormatError&) {
        return 0;
    }
    for (const safetensors::TensorInfo& t : file->tensors()) {
        if (file->find_tensor(t.name) != &t) __builtin_trap();  // lookup by name must find it
        try {
            (void)file->to_double(t);
        } catch (const safetensors::FormatError&) {  // a dtype that is not floating point
        }
    }
    return 0;
}
