// What OpenSSL's own TLS 1.3 costs on this machine, with no .NET in the way: CHANNELS connections over loopback, each
// moving its share of the bytes in 1 MiB writes (the engine's buffer size), first in plaintext, then over TLS 1.3 with
// AES-128-GCM (the suite vfio-mig prefers), both ends in this one process as in `vfio-mig bench --null`. Prints each
// run's throughput and CPU time per byte, and the medians' TLS/plaintext ratio: the figure to hold `bench --null --tls`
// against (docs/performance.md, TLS). A baseline for measurement, not a test; certificates are made in memory and the
// peer's is not checked (a handshake per connection, nothing to do with the bulk cost measured here).
//
// Usage: tls_loopback [CHANNELS [MIB_TOTAL [REPEAT]]]   (defaults 6, 2048, 3)
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFFER_BYTES (1 << 20)
#define MAX_CHANNELS 64

struct run {
    int tls;
    long long bytes_per_channel;
    int listener;
    unsigned short port;
    SSL_CTX *server, *client;
};

static void die(const char *what)
{
    fprintf(stderr, "tls_loopback: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static double seconds(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

// The socket options of vfio-mig's connections: 8 MiB buffers, no Nagle.
static void tune(int fd)
{
    int size = 8 << 20, one = 1;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// The TLS handshake on a connected socket, as the server (accept) or the client (connect).
static SSL *secure(SSL_CTX *ctx, int fd, int server)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl || !SSL_set_fd(ssl, fd) || (server ? SSL_accept(ssl) : SSL_connect(ssl)) <= 0) die("TLS handshake");
    return ssl;
}

static void *receiver(void *arg)
{
    struct run *r = arg;
    int fd = accept(r->listener, NULL, NULL);
    if (fd < 0) die("accept");
    tune(fd);
    char *buffer = malloc(BUFFER_BYTES);
    SSL *ssl = r->tls ? secure(r->server, fd, 1) : NULL;
    for (long long got = 0; got < r->bytes_per_channel;) {
        int n = ssl ? SSL_read(ssl, buffer, BUFFER_BYTES) : (int)read(fd, buffer, BUFFER_BYTES);
        if (n <= 0) die("receive");
        got += n;
    }
    if (ssl) SSL_free(ssl);
    close(fd);
    free(buffer);
    return NULL;
}

static void *sender(void *arg)
{
    struct run *r = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(r->port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    tune(fd);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0) die("connect");
    char *buffer = malloc(BUFFER_BYTES);
    memset(buffer, 0x5a, BUFFER_BYTES);
    SSL *ssl = r->tls ? secure(r->client, fd, 0) : NULL;
    for (long long sent = 0; sent < r->bytes_per_channel;) {
        int want = (int)(r->bytes_per_channel - sent < BUFFER_BYTES ? r->bytes_per_channel - sent : BUFFER_BYTES);
        int n = ssl ? SSL_write(ssl, buffer, want) : (int)write(fd, buffer, want);
        if (n <= 0) die("send");
        sent += n;
    }
    if (ssl) SSL_free(ssl);
    close(fd);
    free(buffer);
    return NULL;
}

static SSL_CTX *context(const SSL_METHOD *method)
{
    SSL_CTX *ctx = SSL_CTX_new(method);
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) || !SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256"))
        die("TLS context");
    return ctx;
}

static SSL_CTX *server_context(void)
{
    SSL_CTX *ctx = context(TLS_server_method());
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    if (!key || !cert) die("key");
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_set_pubkey(cert, key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC, (const unsigned char *)"tls-baseline", -1, -1, 0);
    X509_set_issuer_name(cert, X509_get_subject_name(cert));
    if (!X509_sign(cert, key, EVP_sha256()) || !SSL_CTX_use_certificate(ctx, cert) || !SSL_CTX_use_PrivateKey(ctx, key))
        die("certificate");
    SSL_CTX_set_num_tickets(ctx, 0);
    X509_free(cert);
    EVP_PKEY_free(key);
    return ctx;
}

// One run: wall seconds and CPU seconds (both ends).
static void measure(struct run *r, int channels, double *wall, double *cpu)
{
    struct sockaddr_in at = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t length = sizeof at;
    r->listener = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(r->listener, (struct sockaddr *)&at, sizeof at) != 0 || listen(r->listener, MAX_CHANNELS) != 0
        || getsockname(r->listener, (struct sockaddr *)&at, &length) != 0)
        die("listen");
    r->port = ntohs(at.sin_port);
    pthread_t threads[2 * MAX_CHANNELS];
    double cpu0 = cpu_seconds(), wall0 = seconds(CLOCK_MONOTONIC);
    for (int i = 0; i < channels; i++) {
        pthread_create(&threads[i], NULL, receiver, r);
        pthread_create(&threads[channels + i], NULL, sender, r);
    }
    for (int i = 0; i < 2 * channels; i++) pthread_join(threads[i], NULL);
    *wall = seconds(CLOCK_MONOTONIC) - wall0;
    *cpu = cpu_seconds() - cpu0;
    close(r->listener);
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int channels = argc > 1 ? atoi(argv[1]) : 6;
    long long total_mib = argc > 2 ? atoll(argv[2]) : 2048;
    int repeat = argc > 3 ? atoi(argv[3]) : 3;
    if (channels < 1 || channels > MAX_CHANNELS || total_mib < channels || repeat < 1 || repeat > 99) {
        fprintf(stderr, "usage: tls_loopback [CHANNELS (1-%d) [MIB_TOTAL [REPEAT]]]\n", MAX_CHANNELS);
        return 2;
    }
    struct run r = { .bytes_per_channel = (total_mib << 20) / channels, .server = server_context(), .client = context(TLS_client_method()) };
    double bytes = (double)r.bytes_per_channel * channels, rate[2][99];
    printf("%s, %d channels, %lld MiB per run, 1 MiB writes, both ends in one process on %ld CPUs\n",
           OpenSSL_version(OPENSSL_VERSION), channels, total_mib, sysconf(_SC_NPROCESSORS_ONLN));
    for (int i = 0; i < repeat; i++)
        for (int tls = 0; tls < 2; tls++) {
            double wall, cpu;
            r.tls = tls;
            measure(&r, channels, &wall, &cpu);
            rate[tls][i] = bytes * 8 / wall / 1e6;
            printf("%-9s %8.0f Mbit/s, %.3f ns of CPU per byte\n", tls ? "TLS" : "plaintext", rate[tls][i], cpu * 1e9 / bytes);
        }
    qsort(rate[0], repeat, sizeof(double), by_value);
    qsort(rate[1], repeat, sizeof(double), by_value);
    printf("median: plaintext %.0f Mbit/s, TLS %.0f Mbit/s, TLS/plaintext %.3f\n",
           rate[0][repeat / 2], rate[1][repeat / 2], rate[1][repeat / 2] / rate[0][repeat / 2]);
    return 0;
}
