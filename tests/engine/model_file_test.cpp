// The model file truncated under a loaded InferenceEngine (format/mapped_file_guard.hpp, installed
// here as `twinfer` installs it): every kind of pass the commands make (generate for run and chat,
// forward for bench, evaluate_all and evaluate_as_generated for perplexity and verify) must throw
// ModelFileChanged naming the file and the change, never end the process with SIGBUS. Through the
// f32 model, which reads its weights from the file's mapping at every pass, and the f64 reference.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>

#include "common/test_data.hpp"
#include "engine/engine.hpp"
#include "format/mapped_file_guard.hpp"

namespace twinfer {
namespace {

namespace fs = std::filesystem;

void expect_model_file_changed(const std::function<void()>& pass, const std::string& message, const std::string& what) {
    try {
        pass();
        ADD_FAILURE() << what << ": no ModelFileChanged";
    } catch (const ModelFileChanged& e) {
        EXPECT_EQ(e.what(), message) << what;
    }
}

TEST(EngineModelFile, EveryPassFailsOnceTheFileIsTruncated) {
    const fs::path stories = test::third_party_testdata() / "models" / "stories260K.gguf";
    TWINFER_REQUIRE_FILE(stories);
    guard_mapped_files();
    for (const Precision precision : {Precision::F32, Precision::F64}) {
        SCOPED_TRACE(precision_name(precision));
        const fs::path model = test::scratch_dir() / "engine-cut.gguf";
        fs::copy_file(stories, model, fs::copy_options::overwrite_existing);
        const uintmax_t size = fs::file_size(model);
        BackendOptions options;
        options.model = model;
        options.precision = precision;
        options.device = DeviceChoice::CPU;
        options.n_threads = 2;
        auto engine = InferenceEngine::load(options);
        const auto ids = engine.tokenize("Once upon a time", true, false);
        GenerateOptions greedy;
        greedy.max_tokens = 4;
        greedy.sampling.temperature = 0;
        ASSERT_EQ(engine.generate(ids, greedy).tokens.size(), 4u);

        fs::resize_file(model, size / 2);
        const std::string message =
            model.string() + " was truncated from " + std::to_string(size) + " to " + std::to_string(size / 2) + " bytes after it was loaded";
        expect_model_file_changed([&] { engine.generate(ids, greedy); }, message, "generate");
        expect_model_file_changed([&] { engine.forward(ids); }, message, "forward");
        expect_model_file_changed([&] { engine.evaluate_all(ids); }, message, "evaluate_all");
        expect_model_file_changed([&] { engine.evaluate_as_generated(ids, 1, [](size_t, std::span<const double>) {}); }, message,
                                  "evaluate_as_generated");
    }
}

}  // namespace
}  // namespace twinfer
