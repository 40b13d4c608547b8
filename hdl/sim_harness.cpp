// Simulated spine board: a Verilated top level whose UART pins are bridged to a TCP socket.
//
// Built by hdl/sim.py (`verilator --cc --exe --build`); `sim_ports.h`, written by sim.py next
// to the Verilog, includes the model header and names the top level's ports:
//
//   #define TOP_CLASS  V<top>       the Verilated class
//   #define PIN_CLK    clk          clock input
//   #define PIN_RST    rst          synchronous reset input (active high)
//   #define PIN_RX     <rx port>    UART receive pin of the design (the harness drives it)
//   #define PIN_TX     <tx port>    UART transmit pin of the design (the harness decodes it)
//
// Usage: harness --host 127.0.0.1 --port 0 --cpb 8 [--quiet]
//   Prints "spine-sim: listening on HOST:PORT" once the socket is bound (port 0 = any free
//   port), serves one TCP client at a time (others wait in the listen backlog), turns every
//   received byte into an 8N1 frame on the RX pin at `cpb` clocks per bit, decodes the TX pin
//   back into bytes for the client, keeps running when a client disconnects (the bytes it had
//   queued are dropped, like an unplugged cable) and exits on SIGINT/SIGTERM (on Linux also
//   when its parent process dies), printing one JSON line of statistics.

#include <arpa/inet.h>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <time.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <unistd.h>
#include <vector>

#include "sim_ports.h"
#include "verilated.h"

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int) { g_stop = 1; }

static double now_seconds() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK); }

// Drives 8N1 frames onto the design's RX pin.
struct UartDriver {
    int cpb;
    std::deque<uint8_t> queue;
    int bit = -1;        // -1 idle, 0 start, 1..8 data, 9 stop
    int count = 0;       // clocks left in the current bit
    uint16_t shift = 0;  // the frame being sent, LSB first: start, 8 data, stop
    int level() const { return bit < 0 ? 1 : (shift >> bit) & 1; }
    bool busy() const { return bit >= 0 || !queue.empty(); }
    // Advance one clock; returns the pin level for this clock.
    int step() {
        if (bit < 0) {
            if (queue.empty()) return 1;
            shift = (uint16_t)((1u << 9) | ((unsigned)queue.front() << 1));  // stop | data | start
            queue.pop_front();
            bit = 0;
            count = cpb;
        }
        int value = (shift >> bit) & 1;
        if (--count == 0) {
            count = cpb;
            if (++bit == 10) bit = -1;
        }
        return value;
    }
};

// Decodes 8N1 frames from the design's TX pin (samples every bit in its middle).
struct UartDecoder {
    int cpb;
    int bit = -1;  // -1 idle; 0 start; 1..8 data; 9 stop
    int count = 0;
    uint8_t value = 0;
    uint64_t framing_errors = 0;
    bool busy() const { return bit >= 0; }
    // Feed the pin level of one clock; returns a byte (0..255) or -1.
    int step(int pin) {
        if (bit < 0) {
            if (pin == 0) {  // falling edge: start bit begins
                bit = 0;
                count = cpb / 2;
            }
            return -1;
        }
        if (--count > 0) return -1;
        count = cpb;
        if (bit == 0) {
            if (pin != 0) { bit = -1; return -1; }  // glitch, not a start bit
            bit = 1;
            value = 0;
            return -1;
        }
        if (bit <= 8) {
            value |= (uint8_t)(pin << (bit - 1));
            ++bit;
            return -1;
        }
        bit = -1;  // stop bit
        if (pin != 1) { ++framing_errors; return -1; }
        return value;
    }
};

static int listen_on(const char* host, int port, int* bound_port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { perror("spine-sim: socket"); return -1; }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        struct hostent* he = gethostbyname(host);
        if (!he) { fprintf(stderr, "spine-sim: cannot resolve host %s\n", host); return -1; }
        memcpy(&addr.sin_addr, he->h_addr_list[0], sizeof addr.sin_addr);
    }
    if (bind(fd, (struct sockaddr*)&addr, sizeof addr) < 0) {
        fprintf(stderr, "spine-sim: cannot listen on %s:%d: %s\n", host, port, strerror(errno));
        return -1;
    }
    if (listen(fd, 4) < 0) { perror("spine-sim: listen"); return -1; }
    socklen_t len = sizeof addr;
    getsockname(fd, (struct sockaddr*)&addr, &len);
    *bound_port = ntohs(addr.sin_port);
    set_nonblocking(fd);
    return fd;
}

int main(int argc, char** argv) {
    const char* host = "127.0.0.1";
    int port = 0, cpb = 8;
    bool quiet = false;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--host" && i + 1 < argc) host = argv[++i];
        else if (arg == "--port" && i + 1 < argc) port = atoi(argv[++i]);
        else if (arg == "--cpb" && i + 1 < argc) cpb = atoi(argv[++i]);
        else if (arg == "--quiet") quiet = true;
        else if (arg.rfind("+verilator", 0) == 0) continue;
        else {
            fprintf(stderr, "spine-sim: unknown argument %s\n"
                    "usage: %s --host ADDR --port N --cpb CLOCKS_PER_BIT [--quiet]\n",
                    argv[i], argv[0]);
            return 2;
        }
    }
    if (cpb < 2) { fprintf(stderr, "spine-sim: --cpb must be >= 2\n"); return 2; }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
#ifdef __linux__
    // Stop (SIGTERM) when the process that started us dies, so a crashed test or CLI never
    // leaves a simulation running.  A parent already gone (re-parented to init) also stops us.
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) g_stop = 1;
#endif

    int bound = 0;
    int lfd = listen_on(host, port, &bound);
    if (lfd < 0) return 1;

    VerilatedContext* context = new VerilatedContext;
    context->commandArgs(argc, argv);
    TOP_CLASS* top = new TOP_CLASS{context};
    top->PIN_RX = 1;
    top->PIN_RST = 1;
    for (int i = 0; i < 4; ++i) {
        top->PIN_CLK = 0; top->eval();
        top->PIN_CLK = 1; top->eval();
    }
    top->PIN_RST = 0;
    top->PIN_CLK = 0; top->eval();

    printf("spine-sim: listening on %s:%d (%d clocks per bit)\n", host, bound, cpb);
    fflush(stdout);

    UartDriver rx{cpb};
    UartDecoder tx{cpb};
    std::vector<uint8_t> out;  // decoded TX bytes not yet sent to the client
    int cfd = -1;
    uint64_t cycles = 0, bytes_in = 0, bytes_out = 0, clients = 0, dropped = 0;
    uint64_t last_activity = 0;
    const uint64_t IDLE_CYCLES = 1u << 22;
    uint64_t chunk = 256;
    const double start = now_seconds();
    uint8_t buf[65536];

    while (!g_stop) {
        for (uint64_t i = 0; i < chunk; ++i) {
            top->PIN_RX = rx.step();
            top->PIN_CLK = 1; top->eval();
            top->PIN_CLK = 0; top->eval();
            int byte = tx.step(top->PIN_TX);
            if (byte >= 0) {
                if (cfd >= 0) out.push_back((uint8_t)byte);
                else ++dropped;
                ++bytes_out;
            }
        }
        cycles += chunk;
        if (rx.busy() || tx.busy() || !out.empty()) last_activity = cycles;
        bool idle = cycles - last_activity > IDLE_CYCLES;
        chunk = idle ? 16384 : 256;  // fewer polls when the link is quiet

        struct pollfd fds[1];
        int nfds = 0;
        if (cfd < 0) {
            fds[0] = {lfd, POLLIN, 0};
        } else {
            short ev = POLLIN;
            if (!out.empty()) ev |= POLLOUT;
            fds[0] = {cfd, ev, 0};
        }
        nfds = 1;
        // Only throttle when nothing is happening: the design keeps running meanwhile.
        int timeout_ms = idle ? (cfd < 0 ? 20 : 1) : 0;
        int ready = poll(fds, nfds, timeout_ms);
        if (ready <= 0) continue;
        if (cfd < 0) {
            if (fds[0].revents & POLLIN) {
                int fd = accept(lfd, nullptr, nullptr);
                if (fd >= 0) {
                    set_nonblocking(fd);
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    cfd = fd;
                    ++clients;
                    last_activity = cycles;
                    if (!quiet) { fprintf(stderr, "spine-sim: client %llu connected\n",
                                          (unsigned long long)clients); }
                }
            }
            continue;
        }
        bool closed = false;
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = recv(cfd, buf, sizeof buf, 0);
            if (n > 0) {
                rx.queue.insert(rx.queue.end(), buf, buf + n);
                bytes_in += (uint64_t)n;
                last_activity = cycles;
            } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                closed = true;
            }
        }
        if (!closed && !out.empty() && (fds[0].revents & POLLOUT)) {
            ssize_t n = send(cfd, out.data(), out.size(), MSG_NOSIGNAL);
            if (n > 0) out.erase(out.begin(), out.begin() + n);
            else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                closed = true;
        }
        if (closed) {
            close(cfd);
            cfd = -1;
            dropped += rx.queue.size() + out.size();
            rx.queue.clear();  // an unplugged cable: queued bytes never arrive
            out.clear();
            if (!quiet) { fprintf(stderr, "spine-sim: client %llu disconnected\n",
                                  (unsigned long long)clients); }
        }
    }

    double seconds = now_seconds() - start;
    if (cfd >= 0) close(cfd);
    close(lfd);
    top->final();
    printf("{\"cycles\": %llu, \"seconds\": %.3f, \"cycles_per_s\": %.0f, \"bytes_in\": %llu, "
           "\"bytes_out\": %llu, \"clients\": %llu, \"dropped_bytes\": %llu, "
           "\"framing_errors\": %llu}\n",
           (unsigned long long)cycles, seconds, seconds > 0 ? cycles / seconds : 0.0,
           (unsigned long long)bytes_in, (unsigned long long)bytes_out,
           (unsigned long long)clients, (unsigned long long)dropped,
           (unsigned long long)tx.framing_errors);
    fflush(stdout);
    delete top;
    delete context;
    return 0;
}
