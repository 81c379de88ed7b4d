// Writes SmolLM2-shaped benchmark models: the Q4_1 SmolLM2 file dequantized and requantized
// with twinfer's quantizer, every matrix (token embeddings included) as F32 or as Q8_0, the 1-D
// tensors as F32, the metadata (tokenizer included) as it was.
//
//   build/tools/twinfer_make_bench_models models/SmolLM2-135M-Instruct.Q4_1.gguf models/SmolLM2-135M-Instruct
//     -> models/SmolLM2-135M-Instruct.F32.gguf, models/SmolLM2-135M-Instruct.Q8_0.gguf
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "format/gguf.hpp"
#include "format/quant.hpp"

using namespace twinfer;

namespace {

void write_as(const gguf::File& in, GGMLType matrix_type, const std::string& path) {
    gguf::Writer out;
    for (const auto& [key, value] : in.metadata())
        if (key != "general.alignment" && key != "general.file_type") out.set(key, value);
    out.set_u32("general.file_type", matrix_type == GGMLType::F32 ? 0 : 7);   // llama_ftype: ALL_F32, MOSTLY_Q8_0
    for (const gguf::TensorInfo& t : in.tensors()) {
        std::vector<float> values(t.n_elements);
        dequantize(t.type, t.data, values);
        const GGMLType type = t.dims.size() == 2 ? matrix_type : GGMLType::F32;
        std::vector<std::byte> bytes(row_size_bytes(type, values.size()));
        quantize(type, values, bytes);
        out.add_tensor(t.name, t.dims, type, bytes);
    }
    out.write(path);
    std::printf("wrote %s\n", path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s SOURCE.gguf OUTPUT_PREFIX\n", argv[0]);
        return 2;
    }
    try {
        const gguf::File in = gguf::File::open(argv[1]);
        write_as(in, GGMLType::F32, std::string(argv[2]) + ".F32.gguf");
        write_as(in, GGMLType::Q8_0, std::string(argv[2]) + ".Q8_0.gguf");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
