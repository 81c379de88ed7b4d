// `twinfer serve`: the OpenAI-compatible HTTP server (server/, docs/serving.md). Listens first,
// loads the model while /health answers 503, serves until SIGINT or SIGTERM.
#include <pthread.h>
#include <signal.h>

#include <fstream>
#include <iostream>
#include <iterator>

#include "apps/commands.hpp"
#include "apps/options.hpp"
#include "server/http_server.hpp"

namespace twinfer::cli {
namespace {

struct ServeOptions {
    std::string host = "127.0.0.1";
    int port = 8080;
    int parallel = 4;
    int max_queue = 64;
    int prompt_chunk = 0;
    std::string decode_products = "single";
    int max_activation_mib = 0;
    int kv_memory_mib = 0;
    std::string api_key;
    std::string api_key_file;
    std::string chat_template_file;
    std::string cors_origin;
    std::string model_id;
    int timeout_seconds = 600;
    int max_body_kib = 4096;
    int max_choices = 16;
    int http_threads = 0;
};

// The key from --api-key or the first line of --api-key-file (a key on the command line shows in
// `ps`; a file does not).
std::string api_key(const ServeOptions& o) {
    if (o.api_key_file.empty()) return o.api_key;
    std::ifstream in(o.api_key_file);
    if (!in) throw UsageError("--api-key-file: cannot read " + o.api_key_file);
    std::string key;
    std::getline(in, key);
    while (!key.empty() && (key.back() == '\r' || key.back() == ' ')) key.pop_back();
    if (key.empty()) throw UsageError("--api-key-file: " + o.api_key_file + " holds no key on its first line");
    return key;
}

void run_serve(const ServeOptions& o) {
    const Settings& s = settings();
    server::ServerOptions options;
    options.backend = s.backend_options();
    options.backend.model = require_model(s);
    options.backend.max_workspace_bytes = static_cast<size_t>(o.max_activation_mib) << 20;
    options.backend.max_kv_bytes = static_cast<size_t>(o.kv_memory_mib) << 20;
    options.host = o.host;
    options.port = o.port;
    options.scheduler.n_slots = static_cast<size_t>(o.parallel);
    options.scheduler.max_queue = static_cast<size_t>(o.max_queue);
    options.scheduler.prompt_chunk = static_cast<size_t>(o.prompt_chunk);
    options.scheduler.decode_products = o.decode_products == "tiled" ? RowProducts::Tiled : RowProducts::Single;
    options.api_key = api_key(o);
    options.chat_template_file = o.chat_template_file;
    if (!o.chat_template_file.empty() && !std::filesystem::exists(o.chat_template_file))
        throw UsageError("--chat-template-file: " + o.chat_template_file + " does not exist");
    options.cors_origin = o.cors_origin;
    options.model_id = o.model_id;
    options.request_timeout = std::chrono::seconds(o.timeout_seconds);
    options.max_body_bytes = static_cast<size_t>(o.max_body_kib) << 10;
    options.max_choices = static_cast<size_t>(o.max_choices);
    options.http_threads = static_cast<size_t>(o.http_threads);

    // SIGINT and SIGTERM go to this thread's sigwait, not to whichever thread they hit: blocked
    // before any thread starts (threads inherit the mask).
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    server::HttpServer http(options);
    http.start();
    // The first line says where: scripts and tests read the port from it (--port 0).
    std::cout << "twinfer serve: listening on http://" << o.host << ":" << http.port() << std::endl;
    if (!http.wait_until_loaded()) {
        log("error", "the model failed to load: " + http.load_error());
        http.stop();
        throw std::runtime_error("the model failed to load: " + http.load_error());
    }
    log("info", "model loaded: " + options.backend.model.string() + " (" + std::to_string(o.parallel) + " slots)");
    int signal = 0;
    sigwait(&stop_signals, &signal);
    log("info", std::string("stopping (") + (signal == SIGINT ? "SIGINT" : "SIGTERM") + ")");
    http.stop();
}

}  // namespace

void register_serve(CLI::App& app) {
    static ServeOptions o;
    CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (docs/serving.md)");
    add_model_flags(*cmd, settings());
    add_ui_flags(*cmd, settings());
    cmd->add_option("--host", o.host, "address to listen on")->capture_default_str();
    cmd->add_option("--port", o.port, "port to listen on (0: any free port, printed on the first line)")
        ->check(allowed_values(0, 65535, "0 to 65535"))->capture_default_str();
    cmd->add_option("--parallel", o.parallel, "sequences decoded at once (KV-cache slots)")
        ->check(allowed_values(1, 256, "1 to 256"))->capture_default_str();
    cmd->add_option("--max-queue", o.max_queue, "sequences that may wait for a slot; beyond, requests get 503")
        ->check(allowed_values(0, 100000, "0 to 100000"))->capture_default_str();
    cmd->add_option("--prompt-chunk", o.prompt_chunk, "prompt tokens read per step between decode steps (0: 256 on the CPU, 512 on CUDA)")
        ->check(allowed_values(0, 65536, "0 to 65536"))->capture_default_str();
    cmd->add_option("--decode-products", o.decode_products,
                    "single: each decode row as `run` decodes it (best for few streams); tiled: all rows of a step in one product "
                    "(better from ~8 streams on the CPU)")
        ->check(CLI::IsMember({"single", "tiled"}))->capture_default_str();
    cmd->add_option("--max-activation-memory", o.max_activation_mib,
                    "MiB one pass's activation buffers may take (0: no limit); a step that needs more runs in smaller parts")
        ->check(allowed_values(0, 1 << 20, "0 to 1048576"))->capture_default_str();
    cmd->add_option("--kv-memory", o.kv_memory_mib,
                    "MiB of memory the KV cache's slots share (0: as much as the device has); idle slots' cached prefixes "
                    "make room first, then a sequence that cannot grow ends with an error")
        ->check(allowed_values(0, 1 << 24, "0 to 16777216"))->capture_default_str();
    auto* key = cmd->add_option("--api-key", o.api_key, "require Authorization: Bearer KEY (except /health)");
    cmd->add_option("--api-key-file", o.api_key_file, "the same, the key read from the first line of a file")->excludes(key);
    cmd->add_option("--chat-template-file", o.chat_template_file, "a Jinja chat template to use instead of the model's");
    cmd->add_option("--cors-origin", o.cors_origin, "allow browsers from this origin (e.g. http://localhost:3000, or *); off by default");
    cmd->add_option("--model-id", o.model_id, "the model's id in /v1/models and responses (default: the file's name)");
    cmd->add_option("--timeout", o.timeout_seconds, "seconds a request may take, queued and running")
        ->check(allowed_values(1, 86400, "1 to 86400"))->capture_default_str();
    cmd->add_option("--max-body", o.max_body_kib, "largest request body, KiB")->check(allowed_values(1, 1 << 20, "1 to 1048576"))->capture_default_str();
    cmd->add_option("--max-choices", o.max_choices, "most choices (prompts x n) in one request")
        ->check(allowed_values(1, 256, "1 to 256"))->capture_default_str();
    cmd->add_option("--http-threads", o.http_threads, "HTTP threads (0: parallel + max-queue + 8)")
        ->check(allowed_values(0, 100000, "0 to 100000"))->capture_default_str();
    cmd->callback([] { run_serve(o); });
}

}  // namespace twinfer::cli
