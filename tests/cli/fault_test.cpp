// Faults a user meets, against the real `twinfer` binary: model files that are cut short, that
// lie about their layers or shapes, that are not files at all; a SIGTERM while generating; a chat
// history or config file that cannot be saved (a full disk, a read-only folder). Each must end in
// an exit code and a one-line message saying what is wrong, never a signal or a hang, and never
// a half-written file. The child runs under a deadline, so a hang fails the test instead of
// stalling the suite.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/capability.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/twinfer_process.hpp"
#include "common/test_data.hpp"
#include "format/gguf.hpp"

namespace twinfer::test {
namespace {

namespace fs = std::filesystem;

struct Outcome {
    int exit_code = -1;  // -1 unless the child exited
    int signal = 0;      // the signal that killed it, 0 if none
    bool hung = false;   // still running at the deadline (then killed)
    std::string out;
    std::string err;
};

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool has_output(const fs::path& p) {
    std::error_code ec;
    const auto size = fs::file_size(p, ec);
    return !ec && size > 0;
}

// How the child starts: what its stdin reads (a file, or a named pipe the test writes to), and
// what it does to itself before it runs twinfer (a limit, a signal disposition).
struct Child {
    fs::path stdin_path = "/dev/null";
    std::function<void()> before_exec;
};

// Runs `twinfer args` in a child. `during`, if given, runs once the child has started and is
// passed its pid and its stdout file. The child gets `deadline_s` seconds in all.
Outcome run_twinfer(const std::vector<std::string>& args, int deadline_s = 120,
                    const std::function<void(pid_t, const fs::path&)>& during = {}, const Child& child = {}) {
    static int counter = 0;
    const std::string id = std::to_string(counter++);
    const fs::path out = scratch_dir() / ("fault" + id + ".out"), err = scratch_dir() / ("fault" + id + ".err");
    const pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(out.c_str(), "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(127);
        if (!freopen(child.stdin_path.c_str(), "r", stdin)) _exit(127);   // a named pipe waits here for its writer
        if (child.before_exec) child.before_exec();
        exec_twinfer(args);
    }
    if (during) during(pid, out);
    Outcome o;
    int status = 0;
    pid_t done = 0;
    for (int i = 0; i < deadline_s * 10 && (done = waitpid(pid, &status, WNOHANG)) == 0; ++i) usleep(100 * 1000);
    if (done == 0) {
        o.hung = true;
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    if (WIFEXITED(status)) o.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) o.signal = WTERMSIG(status);
    o.out = slurp(out);
    o.err = slurp(err);
    return o;
}

std::string describe(const Outcome& o) {
    return "exit " + std::to_string(o.exit_code) + ", signal " + std::to_string(o.signal) + (o.hung ? " (hung, killed)" : "") +
           "\nstderr: " + o.err;
}

// A failure the user can read: exited (no signal, no hang) with `code`, one line on stderr in
// the CLI's error form, naming each of `parts`.
void expect_clean_error(const Outcome& o, int code, std::initializer_list<std::string> parts, const std::string& what) {
    EXPECT_FALSE(o.hung) << what << ": " << describe(o);
    EXPECT_EQ(o.signal, 0) << what << ": " << describe(o);
    EXPECT_EQ(o.exit_code, code) << what << ": " << describe(o);
    EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << what << ": " << describe(o);
    EXPECT_EQ(o.err.rfind("twinfer: error: ", 0), 0u) << what << ": " << describe(o);
    for (const auto& part : parts) EXPECT_NE(o.err.find(part), std::string::npos) << what << ": '" << part << "' not in: " << o.err;
}

fs::path stories() { return third_party_testdata() / "models" / "stories260K.gguf"; }

std::vector<std::string> run_args(const fs::path& model) { return {"run", "-m", model.string(), "-n", "4", "--temp", "0", "-p", "Once"}; }

// What to change in a copy of stories260K.
struct Edit {
    std::string architecture;                     // if set: general.architecture, and the llama.* keys renamed
    std::map<std::string, gguf::Value> metadata;  // then set (or replace) these keys
    std::string drop_tensor;                      // leave this tensor out
    std::string halve_tensor;                     // this tensor with its outermost dimension halved, and half its data
};

// Rewrites stories260K through gguf::Writer with `edit` applied: a well-formed file whose
// contents disagree with each other, which only the model loader can notice.
fs::path edited_stories(const std::string& name, const Edit& edit) {
    const gguf::File source = gguf::File::open(stories());
    gguf::Writer writer;
    for (const auto& [key, value] : source.metadata()) {
        if (edit.architecture.empty() || key.rfind("llama.", 0) != 0) writer.set(key, value);
        else writer.set(edit.architecture + key.substr(5), value);
    }
    if (!edit.architecture.empty()) writer.set_string("general.architecture", edit.architecture);
    for (const auto& [key, value] : edit.metadata) writer.set(key, value);
    for (const auto& t : source.tensors()) {
        if (t.name == edit.drop_tensor) continue;
        if (t.name != edit.halve_tensor) {
            writer.add_tensor(t.name, t.dims, t.type, t.data);
            continue;
        }
        std::vector<uint64_t> dims = t.dims;
        dims.back() /= 2;
        writer.add_tensor(t.name, dims, t.type, t.data.first(t.data.size() / 2));
    }
    const fs::path path = scratch_dir() / name;
    writer.write(path);
    return path;
}

// Root (CAP_DAC_OVERRIDE) writes into a read-only folder anyway. The child gives up the
// capabilities that bypass file permissions, for what it runs too (the bounding set), so the
// folder's mode decides as it does for any other user.
void give_up_permission_override() {
    prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0);
    prctl(PR_CAPBSET_DROP, CAP_DAC_READ_SEARCH, 0, 0, 0);
    prctl(PR_CAPBSET_DROP, CAP_FOWNER, 0, 0, 0);
}

// Whether the shell command `probe` still succeeds in a child that ran
// give_up_permission_override(): then file modes decide nothing for this user, and a test of them
// has nothing to test.
bool permissions_bypassed(const std::string& probe) {
    const pid_t pid = fork();
    if (pid == 0) {
        give_up_permission_override();
        execl("/bin/sh", "sh", "-c", ("exec 2>/dev/null; " + probe).c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

bool writable_anyway(const fs::path& dir) { return permissions_bypassed("echo x > '" + (dir / "probe").string() + "'"); }

class CliFaults : public ::testing::Test {
protected:
    void SetUp() override {
        if (!fs::exists(twinfer_binary())) FAIL() << "twinfer binary not found at " << twinfer_binary();
        TWINFER_REQUIRE_FILE(stories());
    }
};

TEST_F(CliFaults, TheUneditedCopyRuns) {
    // The edits below fail for what they change, not for the copying.
    const Outcome o = run_twinfer(run_args(edited_stories("copy.gguf", {})));
    EXPECT_EQ(o.exit_code, 0) << describe(o);
    EXPECT_FALSE(o.out.empty());
}

// Issue 20's `block_count` larger than the tensors present: the loader must name the first
// missing tensor, not read a layer that is not there, nor size much by the claimed count before
// it looks. Through the Llama model and, with the file relabelled qwen2 (the same tensor names),
// through TransformerModel, whose configuration holds a description of every layer. A small
// context keeps the KV cache, sized by block_count too, from failing first. 2^30, the largest
// block_count the config accepts, is refused before anything is sized by it (finding 9 of
// docs/reliability.md: it used to fail on the KV cache's 4096 GiB or a 2^30-entry layer table).
TEST_F(CliFaults, MoreLayersThanTensorsNamesTheMissingTensor) {
    const gguf::File source = gguf::File::open(stories());
    const uint64_t n_layer = source.get_uint("llama.block_count");
    for (const std::string architecture : {"llama", "qwen2"}) {
        for (const uint64_t claimed : {n_layer + 1, uint64_t{1} << 20, uint64_t{1} << 30}) {
            const std::string what = architecture + ", block_count " + std::to_string(claimed);
            const fs::path model = edited_stories(
                "layers.gguf", {.architecture = architecture,
                                .metadata = {{architecture + ".block_count", gguf::Value{static_cast<uint32_t>(claimed)}}}});
            auto args = run_args(model);
            args.insert(args.end(), {"-c", "16"});
            expect_clean_error(run_twinfer(args), 1, {"layers.gguf", "tensor blk." + std::to_string(n_layer) + ".", "is missing"}, what);
        }
    }
}

TEST_F(CliFaults, AMissingTensorIsNamed) {
    const fs::path model = edited_stories("dropped.gguf", {.drop_tensor = "blk.1.ffn_up.weight"});
    expect_clean_error(run_twinfer(run_args(model)), 1, {"dropped.gguf", "blk.1.ffn_up.weight", "is missing"}, "no blk.1.ffn_up");
}

// Ollama CVE-2026-7482's class: a tensor whose dimensions are consistent with its own bytes but
// smaller than the hyper-parameters say (half the vocabulary's embedding rows). A loader that
// trusted the hyper-parameters would read past the tensor.
TEST_F(CliFaults, ATensorSmallerThanTheHyperParametersSayIsRefused) {
    for (const std::string tensor : {"token_embd.weight", "blk.0.attn_q.weight", "blk.4.ffn_down.weight", "output_norm.weight"}) {
        const fs::path model = edited_stories("halved.gguf", {.halve_tensor = tensor});
        expect_clean_error(run_twinfer(run_args(model)), 1, {"halved.gguf", tensor, "dims"}, "halved " + tensor);
    }
}

// Byte offsets in stories260K where each part of the file lies.
struct Sections {
    uint64_t tensor_infos = 0;  // the first tensor info (its name's length)
    uint64_t data = 0;          // the data section
    uint64_t data_end = 0;      // the end of the last tensor's bytes (padding may follow)
};

Sections sections_of(const fs::path& path) {
    const gguf::File file = gguf::File::open(path);
    const std::string bytes = slurp(path);
    // The first tensor info is the first tensor's name behind its 8-byte length; the vocabulary
    // before it holds no tensor names.
    const std::string& name = file.tensors().front().name;
    std::string needle(8, '\0');
    const uint64_t length = name.size();
    std::memcpy(needle.data(), &length, 8);
    needle += name;
    const size_t at = bytes.find(needle);
    if (at == std::string::npos) throw std::runtime_error("no tensor info for " + name);
    uint64_t data_end = 0;
    for (const auto& t : file.tensors()) data_end = std::max(data_end, file.data_offset() + t.offset + t.n_bytes);
    return {at, file.data_offset(), data_end};
}

// A model cut short anywhere: in the fixed header, in the metadata, in the tensor infos, in the
// data, one byte short of the last tensor's end. The reader checks every length against the bytes left, so each is an
// error naming the file, never a read past the mapping.
TEST_F(CliFaults, ATruncatedModelIsAnErrorWhereverItIsCut) {
    const Sections s = sections_of(stories());
    ASSERT_LT(s.tensor_infos, s.data);
    const std::pair<const char*, uint64_t> cuts[] = {
        {"in the magic", 2},
        {"in the header counts", 20},
        {"in the metadata", s.tensor_infos / 2},
        {"at the first tensor info", s.tensor_infos + 4},
        {"in the tensor infos", (s.tensor_infos + s.data) / 2},
        {"at the data section", s.data},
        {"in the data", (s.data + s.data_end) / 2},
        {"one byte short of the last tensor", s.data_end - 1},
    };
    for (const auto& [where, length] : cuts) {
        const fs::path cut = scratch_dir() / "cut.gguf";
        fs::copy_file(stories(), cut, fs::copy_options::overwrite_existing);
        fs::resize_file(cut, length);
        const Outcome o = run_twinfer(run_args(cut));
        expect_clean_error(o, 1, {"cut.gguf"}, std::string("cut ") + where + " (" + std::to_string(length) + " bytes)");
        const bool says_why = o.err.find("truncated") != std::string::npos || o.err.find("past the end") != std::string::npos ||
                              o.err.find("not a GGUF file") != std::string::npos || o.err.find("exceeds") != std::string::npos ||
                              o.err.find("cannot fit") != std::string::npos;
        EXPECT_TRUE(says_why) << where << ": " << o.err;
    }
}

TEST_F(CliFaults, ADirectoryIsAUsageError) {
    const fs::path dir = scratch_dir() / "a-folder.gguf";
    fs::create_directories(dir);
    expect_clean_error(run_twinfer(run_args(dir)), 2, {"a-folder.gguf", "is a directory"}, "directory");
}

// /dev/zero maps to endless zeros: reading it as a model must stop at once ("not a regular
// file"), not parse zeros forever nor map an unbounded length.
TEST_F(CliFaults, ADeviceIsNotAModel) {
    expect_clean_error(run_twinfer(run_args("/dev/zero")), 1, {"/dev/zero", "not a regular file"}, "/dev/zero");
}

// A named pipe: open(2) for reading blocks until a writer comes, so the loader must not wait on
// it (no writer ever comes here).
TEST_F(CliFaults, ANamedPipeIsNotAModelAndDoesNotHang) {
    const fs::path fifo = scratch_dir() / "pipe.gguf";
    fs::remove(fifo);
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
    expect_clean_error(run_twinfer(run_args(fifo), 30), 1, {"pipe.gguf", "not a regular file"}, "fifo");
}

TEST_F(CliFaults, AnUnreadableModelSaysPermissionDenied) {
    const fs::path model = scratch_dir() / "locked.gguf";
    fs::copy_file(stories(), model, fs::copy_options::overwrite_existing);
    fs::permissions(model, fs::perms::none);
    // Root reads a mode-000 file anyway: the child gives up the capabilities that let it.
    if (permissions_bypassed("cat '" + model.string() + "' >/dev/null")) {
        fs::permissions(model, fs::perms::owner_read | fs::perms::owner_write);
        GTEST_SKIP() << "a mode-000 file is readable to this user (uid " << geteuid() << "), capabilities or not";
    }
    const Outcome o = run_twinfer(run_args(model), 120, {}, {"/dev/null", give_up_permission_override});
    fs::permissions(model, fs::perms::owner_read | fs::perms::owner_write);
    expect_clean_error(o, 1, {"locked.gguf", "Permission denied"}, "mode 000");
}

// SIGTERM while generating (a service manager stopping twinfer, a `timeout`): as Ctrl-C, the
// generation stops at the next token, the summary (or the JSON object) is printed, and the exit
// code is 128 + 15 = 143, as a shell reports a process that SIGTERM ended.
TEST_F(CliFaults, SigtermDuringGenerationStopsWithTheSummaryAndExit143) {
    const std::vector<std::string> endless = {"run", "-m", stories().string(), "-c", "100000", "-n", "100000", "--ignore-eos",
                                              "--temp", "0", "-p", "Once upon a time"};
    // Waits until the child streams text (it is generating), then sends SIGTERM.
    const auto terminate_when_generating = [](pid_t pid, const fs::path& out) {
        for (int i = 0; i < 600 && !has_output(out); ++i) usleep(100 * 1000);
        kill(pid, SIGTERM);
    };
    const Outcome streamed = run_twinfer(endless, 60, terminate_when_generating);
    EXPECT_FALSE(streamed.hung) << describe(streamed);
    EXPECT_EQ(streamed.signal, 0) << describe(streamed);
    EXPECT_EQ(streamed.exit_code, 143) << describe(streamed);
    EXPECT_FALSE(streamed.out.empty());
    EXPECT_EQ(std::count(streamed.err.begin(), streamed.err.end(), '\n'), 1) << streamed.err;
    EXPECT_NE(streamed.err.find("stop: cancelled"), std::string::npos) << streamed.err;

    // --json writes only at the end: SIGTERM a second after the start, once it is generating.
    auto json_args = endless;
    json_args.push_back("--json");
    const Outcome json = run_twinfer(json_args, 60, [](pid_t pid, const fs::path&) {
        usleep(1000 * 1000);
        kill(pid, SIGTERM);
    });
    EXPECT_FALSE(json.hung) << describe(json);
    EXPECT_EQ(json.exit_code, 143) << describe(json);
    const auto j = nlohmann::json::parse(json.out);
    EXPECT_EQ(j["stop_reason"], "cancelled");
    EXPECT_LT(j["ids"].size(), 100000u);
}

// --- Saving: the chat history (`chat --history`) and the config file (`/config save`) -----------

// stories260K with a chat template, so that `twinfer chat` runs on it (fast, even under ASan).
fs::path chat_model() {
    const std::string chat_template =
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    return edited_stories("chat.gguf", {.metadata = {{"tokenizer.chat_template", gguf::Value{chat_template}}}});
}

// A conversation in the form `chat --history` and /save write.
std::string history_json(const std::vector<std::pair<std::string, std::string>>& messages) {
    nlohmann::json j{{"system_prompt", ""}, {"messages", nlohmann::json::array()}};
    for (const auto& [role, content] : messages) j["messages"].push_back({{"role", role}, {"content", content}});
    return j.dump(2) + "\n";
}

// The messages of a saved conversation; fails the test if the file is not whole JSON (a reader
// must never see a half-written one).
nlohmann::json saved_messages(const fs::path& path) {
    try {
        return nlohmann::json::parse(slurp(path)).at("messages");
    } catch (const std::exception& e) {
        ADD_FAILURE() << path << " is not a whole conversation: " << e.what() << "\n" << slurp(path);
        return nlohmann::json::array();
    }
}

// Waits (at most 60 s) until the conversation in `path` holds `n` messages.
bool wait_for_messages(const fs::path& path, size_t n) {
    for (int i = 0; i < 600; ++i) {
        if (fs::exists(path) && saved_messages(path).size() == n) return true;
        usleep(100 * 1000);
    }
    return false;
}

// Waits (at most 60 s) until `out` holds more than `bytes` bytes: the child is writing.
bool wait_for_output(const fs::path& out, uintmax_t bytes) {
    std::error_code ec;
    for (int i = 0; i < 600; ++i) {
        if (fs::file_size(out, ec) > bytes && !ec) return true;
        usleep(100 * 1000);
    }
    return false;
}

std::vector<std::string> chat_args(const fs::path& history, const std::string& max_tokens = "16", const std::string& context = "4096") {
    return {"chat", "-m", chat_model().string(), "--temp", "0", "-n", max_tokens, "-c", context, "--history", history.string()};
}

fs::path text_file(const std::string& name, const std::string& text) {
    const fs::path path = scratch_dir() / name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
}

// A fresh folder holding only what the test puts there.
fs::path empty_folder(const std::string& name) {
    const fs::path dir = scratch_dir() / name;
    if (fs::exists(dir)) fs::permissions(dir, fs::perms::owner_all);
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

size_t entries(const fs::path& dir) { return static_cast<size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator())); }

// Full disk: writes past `limit` bytes fail part-way (RLIMIT_FSIZE, as `ulimit -f`; SIGXFSZ
// ignored, so write(2) returns EFBIG where a full disk returns ENOSPC).
Child with_file_size_limit(rlim_t limit, const fs::path& stdin_path = "/dev/null") {
    return {stdin_path, [limit] {
                signal(SIGXFSZ, SIG_IGN);
                const struct rlimit fsize = {limit, limit};
                if (setrlimit(RLIMIT_FSIZE, &fsize) != 0) _exit(126);
            }};
}

// Where the old file must survive and what the message must say.
void expect_old_file_kept(const Outcome& o, const fs::path& path, const std::string& old, const std::string& cause) {
    EXPECT_FALSE(o.hung) << describe(o);
    EXPECT_EQ(o.signal, 0) << describe(o);
    EXPECT_EQ(slurp(path), old) << path << " changed";
    EXPECT_EQ(entries(path.parent_path()), 1u) << "a temporary file was left in " << path.parent_path();
    EXPECT_NE(o.err.find("cannot save " + path.string() + " ("), std::string::npos) << o.err;
    EXPECT_NE(o.err.find("the old file is unchanged): " + cause), std::string::npos) << o.err;
}

// The baseline of the faults below: the history is written after each answer, and a second run
// continues it.
TEST_F(CliFaults, ChatHistoryIsSavedAfterEachAnswerAndContinued) {
    const fs::path dir = empty_folder("history-ok");
    const fs::path history = dir / "chat.json";
    const Outcome first = run_twinfer(chat_args(history), 120, {}, {text_file("two.in", "Hello\nTell me more\n")});
    ASSERT_EQ(first.exit_code, 0) << describe(first);
    const nlohmann::json two = saved_messages(history);
    ASSERT_EQ(two.size(), 4u) << slurp(history);
    EXPECT_EQ(two[0]["content"], "Hello");
    EXPECT_EQ(two[2]["content"], "Tell me more");
    EXPECT_EQ(two[3]["role"], "assistant");

    const Outcome second = run_twinfer(chat_args(history), 120, {}, {text_file("one.in", "Again\n")});
    ASSERT_EQ(second.exit_code, 0) << describe(second);
    EXPECT_NE(second.err.find("continuing the 4 messages of " + history.string()), std::string::npos) << second.err;
    const nlohmann::json three = saved_messages(history);
    ASSERT_EQ(three.size(), 6u);
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(three[i], two[i]) << i;
    EXPECT_EQ(three[4]["content"], "Again");
    EXPECT_EQ(entries(dir), 1u);
}

// A full disk while saving the history: the write of the temporary fails part-way. The old file
// stays byte for byte, the chat says so (a warning at the answer, an error naming what the file
// lacks at the end) and exits 1. The old conversation is longer than stdout and stderr will be,
// so the limit stops only the history.
TEST_F(CliFaults, AFullDiskWhileSavingTheChatHistoryKeepsTheOldFile) {
    const fs::path dir = empty_folder("history-full");
    const fs::path history = dir / "chat.json";
    std::string story;
    for (int i = 0; i < 100; ++i) story += "The cat sat. ";
    const std::string old = history_json({{"user", "Tell me a story."}, {"assistant", story}});
    std::ofstream(history, std::ios::binary) << old;
    const Outcome o = run_twinfer(chat_args(history), 120, {}, with_file_size_limit(old.size() + 16, text_file("full.in", "Hello\n")));
    expect_old_file_kept(o, history, old, "File too large");
    EXPECT_EQ(o.exit_code, 1) << describe(o);
    EXPECT_NE(o.err.find("twinfer: warn: cannot save " + history.string()), std::string::npos) << o.err;
    EXPECT_NE(o.err.find("twinfer: error: " + history.string() + " lacks the last 1 change(s) of the conversation"), std::string::npos)
        << o.err;
    EXPECT_FALSE(o.out.empty()) << "the answer was not shown";
}

// A folder the history cannot be written in (read-only, or a disk that refuses new files): the
// temporary cannot even be created.
TEST_F(CliFaults, AReadOnlyFolderKeepsTheOldChatHistory) {
    const fs::path dir = empty_folder("history-readonly");
    const fs::path history = dir / "chat.json";
    const std::string old = history_json({{"user", "Hi"}, {"assistant", "Hello there."}});
    std::ofstream(history, std::ios::binary) << old;
    fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
    if (writable_anyway(dir)) {
        fs::permissions(dir, fs::perms::owner_all);
        GTEST_SKIP() << "this process cannot give up the capabilities that write into a read-only folder";
    }
    const Outcome o = run_twinfer(chat_args(history), 120, {}, {text_file("readonly.in", "Hello\n"), give_up_permission_override});
    fs::permissions(dir, fs::perms::owner_all);
    expect_old_file_kept(o, history, old, "Permission denied");
    EXPECT_NE(o.err.find("(creating a temporary file in " + dir.string()), std::string::npos) << o.err;
    EXPECT_EQ(o.exit_code, 1) << describe(o);
}

// `/config save` on a full disk and into a read-only folder: an error line, the chat goes on, the
// old config file stays. (HOME is the scratch folder; the config is removed afterwards, as other
// tests read it.)
TEST_F(CliFaults, AConfigThatCannotBeSavedKeepsTheOldFile) {
    const fs::path dir = empty_folder(".config/twinfer");
    const fs::path config = dir / "config.toml";
    const std::string old = "# the old config\n" + std::string(2000, '#') + "\nlog_level = 'info'\n";
    std::ofstream(config, std::ios::binary) << old;
    const std::vector<std::string> args = {"chat", "-m", chat_model().string(), "--system-prompt", std::string(4000, 's')};
    const fs::path save = text_file("config.in", "/config save\n");

    const Outcome full = run_twinfer(args, 120, {}, with_file_size_limit(old.size() + 16, save));
    expect_old_file_kept(full, config, old, "File too large");
    EXPECT_NE(full.err.find("error: cannot save " + config.string()), std::string::npos) << full.err;
    EXPECT_EQ(full.exit_code, 0) << describe(full);

    fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
    if (!writable_anyway(dir)) {
        const Outcome readonly = run_twinfer(args, 120, {}, {save, give_up_permission_override});
        fs::permissions(dir, fs::perms::owner_all);
        expect_old_file_kept(readonly, config, old, "Permission denied");
    }
    fs::permissions(dir, fs::perms::owner_all);
    // Without a limit the same command replaces it.
    const Outcome saved = run_twinfer(args, 120, {}, {save});
    EXPECT_EQ(saved.exit_code, 0) << describe(saved);
    EXPECT_NE(slurp(config).find("system_prompt = '" + std::string(4000, 's') + "'"), std::string::npos);
    fs::remove_all(scratch_dir() / ".config");
}

// SIGTERM while chat generates: the answer stops as with Ctrl-C, the conversation is saved with
// every turn so far (the stopped one with the text it had), and the exit code is 143. Lines come
// through a named pipe, so the test decides when each arrives: the first answer is stopped with
// SIGINT (Ctrl-C), and saved; the second with SIGTERM.
TEST_F(CliFaults, SigtermDuringChatSavesTheHistoryAndExits143) {
    const fs::path dir = empty_folder("history-sigterm");
    const fs::path history = dir / "chat.json";
    std::ofstream(history, std::ios::binary) << history_json({{"user", "Hi"}, {"assistant", "Hello there."}});
    const fs::path lines = scratch_dir() / "sigterm.fifo";
    fs::remove(lines);
    ASSERT_EQ(mkfifo(lines.c_str(), 0600), 0) << std::strerror(errno);
    auto args = chat_args(history, "100000", "100000");
    args.push_back("--ignore-eos");
    bool second_answer_started = false;
    const Outcome o = run_twinfer(args, 120, [&](pid_t pid, const fs::path& out) {
        const int fd = ::open(lines.c_str(), O_WRONLY);
        const auto say = [fd](const std::string& line) { return ::write(fd, line.data(), line.size()) == ssize_t(line.size()); };
        if (say("Once upon a time\n") && wait_for_output(out, 0)) kill(pid, SIGINT);
        if (wait_for_messages(history, 4) && say("And then?\n")) {
            const uintmax_t before = fs::file_size(out);
            second_answer_started = wait_for_output(out, before + 32);
        }
        kill(pid, SIGTERM);
        ::close(fd);
    }, {lines});
    EXPECT_TRUE(second_answer_started) << describe(o);
    EXPECT_FALSE(o.hung) << describe(o);
    EXPECT_EQ(o.signal, 0) << describe(o);
    EXPECT_EQ(o.exit_code, 143) << describe(o);
    const nlohmann::json saved = saved_messages(history);
    ASSERT_EQ(saved.size(), 6u) << slurp(history);
    EXPECT_EQ(saved[1]["content"], "Hello there.");
    EXPECT_EQ(saved[2]["content"], "Once upon a time");
    EXPECT_EQ(saved[4]["content"], "And then?");
    EXPECT_EQ(saved[5]["role"], "assistant");
    EXPECT_FALSE(saved[3]["content"].get<std::string>().empty());
    EXPECT_FALSE(saved[5]["content"].get<std::string>().empty());
    // What the second answer printed before SIGTERM is what was saved of it.
    EXPECT_NE(o.out.find(saved[5]["content"].get<std::string>()), std::string::npos) << o.out;
    EXPECT_EQ(entries(dir), 1u);
}

// SIGTERM while chat waits for the next line: everything is saved already, it exits 143 at once.
TEST_F(CliFaults, SigtermWhileChatWaitsForALineExits143) {
    const fs::path dir = empty_folder("history-idle");
    const fs::path history = dir / "chat.json";
    const fs::path lines = scratch_dir() / "idle.fifo";
    fs::remove(lines);
    ASSERT_EQ(mkfifo(lines.c_str(), 0600), 0) << std::strerror(errno);
    const Outcome o = run_twinfer(chat_args(history), 120, [&](pid_t pid, const fs::path&) {
        const int fd = ::open(lines.c_str(), O_WRONLY);
        const std::string line = "Hello\n";
        if (::write(fd, line.data(), line.size()) == ssize_t(line.size())) wait_for_messages(history, 2);
        usleep(200 * 1000);   // most likely back at the read (a SIGTERM before it must end the same way)
        kill(pid, SIGTERM);
        ::close(fd);
    }, {lines});
    EXPECT_FALSE(o.hung) << describe(o);
    EXPECT_EQ(o.exit_code, 143) << describe(o);
    EXPECT_EQ(saved_messages(history).size(), 2u);
}

// --- The model file truncated under a running command (format/mapped_file_guard.hpp) ------------

// A copy of `model` for one child to load and the test to cut: the original must not change.
fs::path copy_to_cut(const fs::path& model, const std::string& name) {
    const fs::path copy = scratch_dir() / name;
    fs::copy_file(model, copy, fs::copy_options::overwrite_existing);
    return copy;
}

std::string truncated_message(const fs::path& model, uintmax_t from, uintmax_t to) {
    return model.string() + " was truncated from " + std::to_string(from) + " to " + std::to_string(to) + " bytes after it was loaded";
}

// `run` generating when its model is cut to half: the next pass reads past the new end (SIGBUS,
// which the guard turns into zeros) and fails with a line naming the file, exit 1, never the
// signal. The file is cut once text streams, so the model is loaded and generating, and 100,000
// tokens are far from done.
TEST_F(CliFaults, AModelTruncatedWhileRunGeneratesIsAnErrorNotSigbus) {
    const fs::path model = copy_to_cut(stories(), "run-cut.gguf");
    const uintmax_t size = fs::file_size(model);
    const std::vector<std::string> endless = {"run", "-m", model.string(), "-c", "100000", "-n", "100000", "--ignore-eos",
                                              "--temp", "0", "-p", "Once upon a time"};
    bool cut = false;
    const Outcome o = run_twinfer(endless, 60, [&](pid_t, const fs::path& out) {
        if (!wait_for_output(out, 0)) return;
        fs::resize_file(model, size / 2);
        cut = true;
    });
    ASSERT_TRUE(cut) << "no text came: " << describe(o);
    expect_clean_error(o, 1, {truncated_message(model, size, size / 2)}, "cut while generating");
    EXPECT_FALSE(o.out.empty());
}

// `chat` left open while its model is cut to nothing: the next answer fails, the chat ends with
// exit 1 and a line naming the file and the history file, which holds every turn before that
// answer. Lines come through a named pipe: the second is sent once the first answer is saved and
// the file cut, so the cut always falls between the two.
TEST_F(CliFaults, AModelTruncatedBetweenChatAnswersEndsTheChatWithTheHistorySaved) {
    const fs::path dir = empty_folder("history-model-cut");
    const fs::path history = dir / "chat.json";
    const fs::path model = copy_to_cut(chat_model(), "chat-cut.gguf");
    const uintmax_t size = fs::file_size(model);
    const fs::path lines = scratch_dir() / "model-cut.fifo";
    fs::remove(lines);
    ASSERT_EQ(mkfifo(lines.c_str(), 0600), 0) << std::strerror(errno);
    const std::vector<std::string> args = {"chat", "-m", model.string(), "--temp", "0", "-n", "16", "--history", history.string()};
    bool cut = false;
    const Outcome o = run_twinfer(args, 120, [&](pid_t, const fs::path&) {
        const int fd = ::open(lines.c_str(), O_WRONLY);
        const auto say = [fd](const std::string& line) { return ::write(fd, line.data(), line.size()) == ssize_t(line.size()); };
        if (say("Hello\n") && wait_for_messages(history, 2)) {
            fs::resize_file(model, 0);
            cut = true;
            say("Tell me more\n");
        }
        ::close(fd);
    }, {lines});
    ASSERT_TRUE(cut) << "the first answer was not saved: " << describe(o);
    EXPECT_FALSE(o.hung) << describe(o);
    EXPECT_EQ(o.signal, 0) << describe(o);
    EXPECT_EQ(o.exit_code, 1) << describe(o);
    EXPECT_NE(o.err.find("twinfer: error: " + truncated_message(model, size, 0) + "; the conversation up to the last answer is saved in " +
                         history.string() + "\n"),
              std::string::npos)
        << o.err;
    const nlohmann::json saved = saved_messages(history);
    ASSERT_EQ(saved.size(), 2u) << slurp(history);
    EXPECT_EQ(saved[0]["content"], "Hello");
    EXPECT_EQ(saved[1]["role"], "assistant");
    EXPECT_EQ(entries(dir), 1u);
}

}  // namespace
}  // namespace twinfer::test
