#include "server/client_connection.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

namespace twinfer::server {
namespace {

// An address and port as cpp-httplib writes them (inet_ntop; IPv4-mapped IPv6 as such).
bool same_endpoint(const sockaddr_storage& address, const std::string& host, int port) {
    char text[INET6_ADDRSTRLEN] = {};
    int actual_port = -1;
    if (address.ss_family == AF_INET) {
        const auto& a = reinterpret_cast<const sockaddr_in&>(address);
        inet_ntop(AF_INET, &a.sin_addr, text, sizeof text);
        actual_port = ntohs(a.sin_port);
    } else if (address.ss_family == AF_INET6) {
        const auto& a = reinterpret_cast<const sockaddr_in6&>(address);
        inet_ntop(AF_INET6, &a.sin6_addr, text, sizeof text);
        actual_port = ntohs(a.sin6_port);
    } else {
        return false;
    }
    return actual_port == port && host == text;
}

}  // namespace

std::optional<ClientConnection> ClientConnection::find(const std::string& local_addr, int local_port, const std::string& remote_addr,
                                                       int remote_port) {
    DIR* fds = opendir("/proc/self/fd");
    if (!fds) return std::nullopt;
    std::optional<ClientConnection> found;
    while (const dirent* entry = readdir(fds)) {
        char* end = nullptr;
        const long fd = std::strtol(entry->d_name, &end, 10);
        if (*end != '\0' || fd < 0 || fd == dirfd(fds)) continue;
        struct stat info {};
        if (fstat(int(fd), &info) != 0 || !S_ISSOCK(info.st_mode)) continue;
        sockaddr_storage local{}, remote{};
        socklen_t local_size = sizeof local, remote_size = sizeof remote;
        if (getsockname(int(fd), reinterpret_cast<sockaddr*>(&local), &local_size) != 0 ||
            getpeername(int(fd), reinterpret_cast<sockaddr*>(&remote), &remote_size) != 0)
            continue;
        if (same_endpoint(local, local_addr, local_port) && same_endpoint(remote, remote_addr, remote_port)) {
            found = ClientConnection(int(fd));
            break;
        }
    }
    closedir(fds);
    return found;
}

bool ClientConnection::closed() const {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return true;
    // Readable: either the client sent more (a pipelined request: still there) or end of stream.
    char byte;
    const ssize_t n = recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0;
}

}  // namespace twinfer::server
