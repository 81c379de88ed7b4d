#pragma once
// The HTTP front of `twinfer serve` (cpp-httplib, Debian's libcpp-httplib): routes, API key,
// CORS, limits, server-sent events. Each connection has a thread of httplib's pool; a handler
// turns the body into a GenerationRequest, submits it to the Scheduler and relays its events; it
// never touches the model, so HTTP threads never wait on each other.
#include <atomic>
#include <condition_variable>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "engine/backend.hpp"
#include "server/metrics.hpp"
#include "server/openai_api.hpp"
#include "server/scheduler.hpp"

namespace httplib {
class Server;
struct Request;
struct Response;
}

namespace twinfer::server {

struct ServerOptions {
    std::string host = "127.0.0.1";
    int port = 8080;                          // 0: any free port (port() says which)
    BackendOptions backend;
    SchedulerOptions scheduler;
    std::string api_key;                      // empty: no key asked
    std::filesystem::path chat_template_file; // empty: the model's template
    std::string cors_origin;                  // empty: no CORS headers (browsers refuse other origins)
    std::string model_id;                     // /v1/models' id; empty: the model file's name
    size_t max_body_bytes = 4u << 20;
    size_t max_choices = 16;                  // prompts x n of one request
    std::chrono::seconds request_timeout{600};
    size_t http_threads = 0;                  // 0: slots + queue + 8 (every waiting request holds a thread)
};

class HttpServer {
public:
    explicit HttpServer(ServerOptions options);
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    // Binds the address (throws std::runtime_error if it cannot), then serves on a thread of its
    // own and loads the model on another: /health answers 503 until the model is ready.
    void start();
    int port() const { return port_; }
    // Blocks until the model is loaded (true) or failed to load (false, load_error() says why).
    bool wait_until_loaded();
    std::string load_error() const;
    void stop();

private:
    void load_model();
    void add_routes();
    // Throws the ApiError (401, 503 while loading, 500 if the load failed) that refuses a request.
    enum class Need { Key, KeyAndModel };
    void admit(const httplib::Request& req, Need need) const;
    // A non-streamed answer: waits for every choice, cancelling them if the client goes away.
    void respond_whole(const httplib::Request& req, httplib::Response& res, const GenerationRequest& request,
                       const ResponseHeader& header, const std::shared_ptr<RequestChannel>& channel);
    // A streamed answer: server-sent events as the tokens come, ending with data: [DONE].
    void respond_stream(httplib::Response& res, const std::shared_ptr<const GenerationRequest>& request,
                        const ResponseHeader& header, const std::shared_ptr<RequestChannel>& channel);

    ServerOptions options_;
    Metrics metrics_;
    std::unique_ptr<httplib::Server> http_;
    int port_ = 0;
    std::thread listener_, loader_;

    mutable std::mutex state_mutex_;
    std::condition_variable state_changed_;
    enum class State { Loading, Ready, Failed } state_ = State::Loading;
    std::string load_error_;
    std::optional<InferenceEngine> engine_;
    std::optional<ChatTemplate> chat_template_override_;
    std::unique_ptr<Scheduler> scheduler_;
    std::atomic<uint64_t> next_id_{0};
};

}  // namespace twinfer::server
