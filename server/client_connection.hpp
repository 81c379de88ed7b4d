#pragma once
// Whether the client of an HTTP request is still there, for a handler that waits on the model.
// cpp-httplib 0.11 gives a handler the request's addresses but not its socket; the socket is the
// one of this process whose local and remote address and port are the request's (a TCP connection
// is its 4-tuple), and it stays open while the handler runs.
#include <optional>
#include <string>

namespace twinfer::server {

class ClientConnection {
public:
    // The request's socket, found by its addresses; none if no socket matches (then closed() is
    // never known and the request runs to its end).
    static std::optional<ClientConnection> find(const std::string& local_addr, int local_port, const std::string& remote_addr,
                                                int remote_port);
    // The peer closed its side (or the connection broke). Does not block.
    bool closed() const;

private:
    explicit ClientConnection(int fd) : fd_(fd) {}
    int fd_;
};

}  // namespace twinfer::server
