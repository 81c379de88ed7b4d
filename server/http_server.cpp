#include "server/http_server.hpp"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <sstream>

#include "format/mapped_file_guard.hpp"
#include "server/chat_page_html.hpp"
#include "server/client_connection.hpp"
#include "server/openai_api.hpp"

namespace twinfer::server {

// httplib's server with a longer accept queue: 0.11 listens with a backlog of 5, and a burst of
// clients connecting at once overflows it (the kernel then drops their handshakes, and some
// clients fail to read a response). listen() again on a listening socket only resizes the queue.
class ListeningServer : public httplib::Server {
public:
    void set_backlog(int backlog) {
        if (svr_sock_ != INVALID_SOCKET && ::listen(svr_sock_, backlog) != 0)
            throw std::runtime_error("cannot resize the listening socket's queue to " + std::to_string(backlog));
    }
};

namespace {

constexpr int listen_backlog = 1024;

// How often a handler that waits on the scheduler looks at its client: a client that went away is
// noticed within this and its sequence cancelled.
constexpr std::chrono::milliseconds client_poll{50};

void send_error(httplib::Response& res, const ApiError& error) {
    res.status = error.status;
    res.set_content(dump(error_body(error)), "application/json");
}

void send_json(httplib::Response& res, const json& body) { res.set_content(dump(body), "application/json"); }

// Constant-time comparison: the time taken says nothing of how much of a key was right.
bool same_secret(const std::string& a, const std::string& b) {
    unsigned char diff = a.size() == b.size() ? 0 : 1;
    for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
    return diff == 0;
}

long long unix_seconds() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The metrics label of a path: the routes by name, anything else as "other" (a client must not
// grow the label set).
std::string route_label(const std::string& path) {
    for (const char* route : {"/", "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/tokenize", "/detokenize", "/metrics"})
        if (path == route) return route;
    return "other";
}

void apply_event(ChoiceResult& result, SequenceEvent& event) {
    result.text += event.text;
    if (!event.prompt_scores.empty()) result.prompt_scores = std::move(event.prompt_scores);
    if (event.token) result.tokens.push_back(event);
    if (event.finish) {
        result.finish = event.finish;
        result.error = event.error;
        result.prompt_tokens = event.prompt_tokens;
        result.cached_tokens = event.cached_tokens;
        result.completion_tokens = event.completion_tokens;
    }
}

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path.string());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

HttpServer::HttpServer(ServerOptions options) : options_(std::move(options)), http_(std::make_unique<ListeningServer>()) {
    if (options_.model_id.empty()) options_.model_id = options_.backend.model.filename().string();
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::start() {
    const size_t threads = options_.http_threads ? options_.http_threads
                                                 : options_.scheduler.n_slots + options_.scheduler.max_queue + 8;
    http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http_->set_payload_max_length(options_.max_body_bytes);
    add_routes();
    if (options_.port == 0) {
        port_ = http_->bind_to_any_port(options_.host);
        if (port_ < 0) throw std::runtime_error("cannot listen on " + options_.host + " (any port)");
    } else {
        if (!http_->bind_to_port(options_.host, options_.port))
            throw std::runtime_error("cannot listen on " + options_.host + ":" + std::to_string(options_.port) +
                                     " (in use, or not an address of this machine)");
        port_ = options_.port;
    }
    static_cast<ListeningServer&>(*http_).set_backlog(listen_backlog);
    listener_ = std::thread([this] { http_->listen_after_bind(); });
    loader_ = std::thread([this] { load_model(); });
}

void HttpServer::load_model() {
    try {
        InferenceEngine engine = InferenceEngine::load(options_.backend);
        std::optional<ChatTemplate> override_template;
        if (!options_.chat_template_file.empty()) override_template.emplace(read_file(options_.chat_template_file));
        const std::lock_guard lock(state_mutex_);
        engine_.emplace(std::move(engine));
        chat_template_override_ = std::move(override_template);
        scheduler_ = std::make_unique<Scheduler>(*engine_, options_.scheduler, metrics_);
        state_ = State::Ready;
    } catch (const std::exception& e) {
        const std::lock_guard lock(state_mutex_);
        load_error_ = e.what();
        state_ = State::Failed;
    }
    state_changed_.notify_all();
}

bool HttpServer::wait_until_loaded() {
    std::unique_lock lock(state_mutex_);
    state_changed_.wait(lock, [&] { return state_ != State::Loading; });
    return state_ == State::Ready;
}

std::string HttpServer::load_error() const {
    const std::lock_guard lock(state_mutex_);
    return load_error_;
}

void HttpServer::stop() {
    if (!listener_.joinable()) return;
    http_->stop();
    if (loader_.joinable()) loader_.join();
    // Ends every sequence (their handlers return) before the listener waits for its threads.
    if (scheduler_) scheduler_->stop();
    listener_.join();
}

void HttpServer::add_routes() {
    httplib::Server& http = *http_;

    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
        if (!options_.cors_origin.empty()) {
            res.set_header("Access-Control-Allow-Origin", options_.cors_origin);
            res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
            res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
            if (req.method == "OPTIONS") {
                res.status = 204;
                return httplib::Server::HandlerResponse::Handled;
            }
        }
        return httplib::Server::HandlerResponse::Unhandled;
    });

    // Errors httplib answers itself (413 body too large, 404 no route, 400 bad HTTP) get an
    // OpenAI error object too; a handler's own errors already have their body.
    http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        const std::string message = res.status == 413 ? "the request body is too large"
                                    : res.status == 404 ? "no route " + req.method + " " + req.path
                                                        : "bad request (HTTP " + std::to_string(res.status) + ")";
        send_error(res, ApiError(res.status, message, "invalid_request_error", "", res.status == 413 ? "body_too_large" : ""));
        return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr error) {
        try {
            std::rethrow_exception(error);
        } catch (const ApiError& e) {
            send_error(res, e);
        } catch (const std::exception& e) {
            send_error(res, ApiError(500, std::string("internal error: ") + e.what(), "server_error", "", "internal_error"));
        } catch (...) {
            send_error(res, ApiError(500, "internal error", "server_error", "", "internal_error"));
        }
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
        metrics_.count_request(route_label(req.path), res.status);
    });

    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
        const std::lock_guard lock(state_mutex_);
        if (state_ == State::Ready) {
            // The model file truncated or rewritten under its mapping: every pass fails until a restart.
            if (const std::string problem = mapped_files_problem(); !problem.empty())
                return send_error(res, ApiError(503, problem + ": restart the server to load it again", "server_error", "", "model_file_changed"));
            return send_json(res, {{"status", "ok"}});
        }
        if (state_ == State::Loading) return send_error(res, ApiError(503, "the model is loading", "server_error", "", "model_loading"));
        send_error(res, ApiError(500, "the model failed to load: " + load_error_, "server_error", "", "model_load_failed"));
    });
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(chat_page_html.data(), chat_page_html.size(), "text/html; charset=utf-8");
    });
    http.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
        admit(req, Need::Key);
        res.set_content(metrics_.prometheus(), "text/plain; version=0.0.4");
    });
    http.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
        admit(req, Need::KeyAndModel);
        send_json(res, {{"object", "list"},
                        {"data", json::array({{{"id", options_.model_id}, {"object", "model"}, {"created", unix_seconds()},
                                               {"owned_by", "twinfer"}, {"meta", {{"n_ctx", scheduler_->n_ctx()},
                                                                                  {"n_vocab", engine_->config().n_vocab},
                                                                                  {"backend", engine_->backend_name()}}}}})}});
    });
    http.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
        admit(req, Need::KeyAndModel);
        const json body = parse_body(req.body);
        const auto content = body.find("content");
        if (content == body.end() || !content->is_string())
            throw ApiError(400, "'content': a string is required", "invalid_request_error", "content", "invalid_value");
        const auto flag = [&](const char* name, bool fallback) {
            const auto it = body.find(name);
            if (it == body.end() || it->is_null()) return fallback;
            if (!it->is_boolean()) throw ApiError(400, "'" + std::string(name) + "' must be a boolean", "invalid_request_error", name, "invalid_value");
            return it->get<bool>();
        };
        send_json(res, {{"tokens", engine_->tokenize(content->get<std::string>(), flag("add_special", false), flag("parse_special", true))}});
    });
    http.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
        admit(req, Need::KeyAndModel);
        const json body = parse_body(req.body);
        const auto tokens = body.find("tokens");
        if (tokens == body.end() || !tokens->is_array())
            throw ApiError(400, "'tokens': an array of token ids is required", "invalid_request_error", "tokens", "invalid_value");
        const size_t n_vocab = engine_->config().n_vocab;
        std::vector<Token> ids;
        for (const json& id : *tokens) {
            if (!id.is_number_integer() || id.get<long long>() < 0 || id.get<unsigned long long>() >= n_vocab)
                throw ApiError(400, "'tokens': ids must be integers from 0 to " + std::to_string(n_vocab - 1) + ", got " + dump(id),
                               "invalid_request_error", "tokens", "invalid_value");
            ids.push_back(static_cast<Token>(id.get<long long>()));
        }
        send_json(res, {{"content", engine_->tokenizer().decode(ids)}});
    });

    const auto generation = [this](Endpoint endpoint) {
        return [this, endpoint](const httplib::Request& req, httplib::Response& res) {
            admit(req, Need::KeyAndModel);
            const json body = parse_body(req.body);
            const ChatTemplate* chat_template = nullptr;
            if (chat_template_override_) chat_template = &*chat_template_override_;
            else if (endpoint == Endpoint::ChatCompletions) {
                try {
                    chat_template = &engine_->chat_template();
                } catch (const ChatTemplateError&) {
                    chat_template = nullptr;   // parse_chat_request answers 400
                }
            }
            const ApiContext context{*engine_, chat_template, scheduler_->n_ctx(), options_.max_choices};
            auto request = std::make_shared<GenerationRequest>(endpoint == Endpoint::ChatCompletions ? parse_chat_request(body, context)
                                                                                                     : parse_completion_request(body, context));
            const auto deadline = Clock::now() + options_.request_timeout;
            for (SequenceParams& choice : request->choices) choice.deadline = deadline;
            const ResponseHeader header{(endpoint == Endpoint::ChatCompletions ? "chatcmpl-" : "cmpl-") + std::to_string(unix_seconds()) +
                                            "-" + std::to_string(next_id_++),
                                        unix_seconds(), options_.model_id};
            std::shared_ptr<RequestChannel> channel;
            try {
                channel = scheduler_->submit(request->choices);
            } catch (const QueueFull& e) {
                throw ApiError(503, e.what(), "server_error", "", "queue_full");
            }
            if (!request->stream) return respond_whole(req, res, *request, header, channel);
            respond_stream(res, request, header, channel);
        };
    };
    http.Post("/v1/chat/completions", generation(Endpoint::ChatCompletions));
    http.Post("/v1/completions", generation(Endpoint::Completions));
}

// In the route's handler, not before routing: httplib has read the body by then. An answer given
// before the body is read would leave it on a kept-alive connection, to be parsed as the client's
// next request. The chat page (it holds no secret and asks for the key itself) and /health (for
// load balancers) are open to all.
void HttpServer::admit(const httplib::Request& req, Need need) const {
    if (!options_.api_key.empty()) {
        const std::string header = req.get_header_value("Authorization");
        const std::string prefix = "Bearer ";
        if (header.rfind(prefix, 0) != 0 || !same_secret(header.substr(prefix.size()), options_.api_key))
            throw ApiError(401, header.empty() ? "no API key given (Authorization: Bearer KEY)" : "incorrect API key",
                           "invalid_request_error", "", "invalid_api_key");
    }
    if (need == Need::Key) return;
    const std::lock_guard lock(state_mutex_);
    if (state_ == State::Loading) throw ApiError(503, "the model is loading", "server_error", "", "model_loading");
    if (state_ == State::Failed)
        throw ApiError(500, "the model failed to load: " + load_error_, "server_error", "", "model_load_failed");
}

void HttpServer::respond_whole(const httplib::Request& req, httplib::Response& res, const GenerationRequest& request,
                               const ResponseHeader& header, const std::shared_ptr<RequestChannel>& channel) {
    const std::optional<ClientConnection> client = ClientConnection::find(req.local_addr, req.local_port, req.remote_addr, req.remote_port);
    std::vector<ChoiceResult> results(request.choices.size());
    size_t finished = 0;
    std::vector<SequenceEvent> events;
    while (finished < results.size()) {
        events.clear();
        channel->wait_take(events, client_poll);
        for (SequenceEvent& e : events) {
            if (e.finish) ++finished;
            apply_event(results[e.choice], e);
        }
        if (finished < results.size() && client && client->closed()) {
            channel->cancel();   // nobody will read the answer: stop computing it
            throw ApiError(499, "the client closed the connection", "invalid_request_error", "", "client_closed");
        }
    }
    for (const ChoiceResult& r : results) {
        if (r.finish == FinishReason::Timeout || r.finish == FinishReason::Error || r.finish == FinishReason::OutOfMemory)
            throw finish_error(*r.finish, r.error);
        if (r.finish == FinishReason::Cancelled) throw ApiError(503, "the server is shutting down", "server_error", "", "shutting_down");
    }
    send_json(res, completion_response(request, header, results, engine_->tokenizer()));
}

void HttpServer::respond_stream(httplib::Response& res, const std::shared_ptr<const GenerationRequest>& request,
                                const ResponseHeader& header, const std::shared_ptr<RequestChannel>& channel) {
    struct StreamState {
        std::vector<ChoiceResult> results;
        std::vector<ChoiceStream> streams;
        size_t finished = 0;
    };
    auto state = std::make_shared<StreamState>();
    state->results.resize(request->choices.size());
    state->streams.resize(request->choices.size(), choice_stream(*request));
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");   // a proxy in front must not hold the events back
    const Tokenizer& tokenizer = engine_->tokenizer();
    res.set_chunked_content_provider(
        "text/event-stream",
        [request, header, channel, state, &tokenizer](size_t, httplib::DataSink& sink) {
            std::vector<SequenceEvent> events;
            channel->wait_take(events, client_poll);
            if (!sink.is_writable()) {
                channel->cancel();
                return false;
            }
            std::string out;
            const auto send = [&](const json& value) { out += "data: " + dump(value) + "\n\n"; };
            for (SequenceEvent& e : events) {
                if (e.finish) ++state->finished;
                if (e.finish == FinishReason::Timeout || e.finish == FinishReason::Error || e.finish == FinishReason::OutOfMemory ||
                    e.finish == FinishReason::Cancelled) {
                    // The status line is sent: the error travels as an event, as llama-server does.
                    send(error_body(e.finish == FinishReason::Cancelled ? ApiError(503, "the server is shutting down", "server_error", "", "shutting_down")
                                                                         : finish_error(*e.finish, e.error)));
                } else {
                    for (const json& chunk : stream_chunks(*request, header, e, state->streams[e.choice], tokenizer)) send(chunk);
                }
                apply_event(state->results[e.choice], e);
            }
            const bool all_done = state->finished == state->results.size();
            if (all_done) {
                if (request->include_usage) send(usage_chunk(*request, header, state->results));
                out += "data: [DONE]\n\n";
            }
            if (!out.empty() && !sink.write(out.data(), out.size())) {
                channel->cancel();
                return false;
            }
            if (all_done) sink.done();
            return true;
        },
        [channel](bool success) {
            if (!success) channel->cancel();
        });
}

}  // namespace twinfer::server
