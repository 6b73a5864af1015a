/*
 * A tour of the C ABI (include/rela.h) against a running node:
 *
 *   example HOST PORT [TOKEN_FILE] [DISCOVERY_PORT]
 *
 * Connects (with the token in TOKEN_FILE, if given), prints the device, round trips data
 * through a buffer, fills, copies, adds two vectors on the node, shows how a failure reads
 * (a handle the node never gave out), prints the session's stats, asks the discovery port
 * (if given) and closes. Exits 0 when every step did what it should, 1 otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rela.h"

/* Prints the failure of `what` and leaves. */
static void die(const char *what, int32_t status) {
    fprintf(stderr, "%s failed: %s (%d): %s\n", what, rela_status_name(status), status,
            rela_last_error_message());
    exit(1);
}

#define CHECK(call)                         \
    do {                                    \
        int32_t status_ = (call);           \
        if (status_ != RELA_OK) {           \
            die(#call, status_);            \
        }                                   \
    } while (0)

/* Reads the whole (small) token file; returns its length. */
static size_t read_token(const char *path, uint8_t *token, size_t room) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    size_t n = fread(token, 1, room, f);
    fclose(f);
    /* A trailing newline is not part of the token (vram-relay serve --token-file trims it). */
    while (n > 0 && (token[n - 1] == '\n' || token[n - 1] == '\r')) {
        n--;
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s HOST PORT [TOKEN_FILE] [DISCOVERY_PORT]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    uint16_t port = (uint16_t)atoi(argv[2]);
    uint8_t token[256];
    size_t token_len = argc > 3 ? read_token(argv[3], token, sizeof token) : 0;

    RelaConnectOptions options = {0};
    options.request_timeout_ms = 10000;
    RelaClient client = 0;
    CHECK(rela_connect(host, port, token_len ? token : NULL, token_len, &options, &client));

    RelaDeviceInfo info;
    CHECK(rela_device_info(client, &info));
    printf("device: %s (%s), backend %u, %llu of %llu bytes free\n", info.name, info.vendor,
           (unsigned)info.backend, (unsigned long long)info.free, (unsigned long long)info.total);

    uint64_t micros = 0;
    CHECK(rela_ping(client, &micros));
    printf("ping: %llu us\n", (unsigned long long)micros);

    /* 1 MiB of a byte pattern in and out. */
    enum { LEN = 1 << 20, N = 256 };
    uint8_t *data = malloc(LEN), *back = malloc(LEN);
    if (!data || !back) {
        return 1;
    }
    for (size_t i = 0; i < LEN; i++) {
        data[i] = (uint8_t)(i * 31 + 7);
    }
    RelaBuffer buf;
    CHECK(rela_alloc(client, LEN, &buf));
    CHECK(rela_write(client, buf, 0, data, LEN));
    CHECK(rela_read(client, buf, 0, back, LEN));
    if (memcmp(data, back, LEN) != 0) {
        fprintf(stderr, "read back differs from what was written\n");
        return 1;
    }
    printf("round trip: %d bytes\n", LEN);

    /* Fill a range, copy it to a second buffer, read it there. */
    RelaBuffer copy;
    CHECK(rela_alloc(client, 4096, &copy));
    CHECK(rela_fill(client, buf, 1000, 100, 0x5a));
    CHECK(rela_copy(client, buf, 1000, copy, 0, 100));
    CHECK(rela_read(client, copy, 0, back, 101));
    for (int i = 0; i < 100; i++) {
        if (back[i] != 0x5a) {
            fprintf(stderr, "fill/copy: byte %d is %u\n", i, back[i]);
            return 1;
        }
    }
    if (back[100] != 0) {
        fprintf(stderr, "fill/copy: byte 100 should still be 0\n");
        return 1;
    }
    printf("fill and copy: ok\n");

    /* out = a + b on the node, N floats each. */
    float a[N], b[N], out[N];
    for (int i = 0; i < N; i++) {
        a[i] = (float)i;
        b[i] = (float)(2 * i) - 100.0f;
    }
    RelaBuffer ba, bb, bo;
    CHECK(rela_alloc(client, sizeof a, &ba));
    CHECK(rela_alloc(client, sizeof b, &bb));
    CHECK(rela_alloc(client, sizeof out, &bo));
    CHECK(rela_write(client, ba, 0, (const uint8_t *)a, sizeof a));
    CHECK(rela_write(client, bb, 0, (const uint8_t *)b, sizeof b));
    RelaKernel add = {0};
    add.kernel = RELA_KERNEL_ADD;
    add.a = ba;
    add.b = bb;
    add.out = bo;
    add.n = N;
    CHECK(rela_dispatch(client, &add));
    CHECK(rela_read(client, bo, 0, (uint8_t *)out, sizeof out));
    for (int i = 0; i < N; i++) {
        if (out[i] != a[i] + b[i]) {
            fprintf(stderr, "add: out[%d] = %f, want %f\n", i, out[i], a[i] + b[i]);
            return 1;
        }
    }
    printf("dispatch ADD: ok\n");

    /* How a failure reads: the node never gave out this handle. */
    int32_t status = rela_free(client, 0xdead);
    printf("free(0xdead): %s (%d): %s\n", rela_status_name(status), status, rela_last_error_message());
    if (status != 10 /* NO_SUCH_BUFFER */) {
        return 1;
    }

    RelaStats stats;
    CHECK(rela_stats(client, &stats));
    printf("stats: %u buffers, %llu bytes held, %llu bytes in, %llu bytes out\n", stats.buffers,
           (unsigned long long)stats.used, (unsigned long long)stats.bytes_in,
           (unsigned long long)stats.bytes_out);
    if (stats.buffers != 5) {
        return 1;
    }

    if (argc > 4) {
        char target[64];
        snprintf(target, sizeof target, "%s:%s", host, argv[4]);
        RelaNodeList *list = NULL;
        CHECK(rela_discover(target, 3000, token_len ? token : NULL, token_len, &list));
        size_t found = rela_node_list_len(list);
        for (size_t i = 0; i < found; i++) {
            const RelaNode *node = rela_node_list_get(list, i);
            printf("discovered: %s, %s, auth %s, signature %s\n", node->addr, node->device,
                   node->auth_required ? "required" : "off", node->verified ? "verified" : "unchecked");
        }
        rela_node_list_free(list);
        if (found != 1) {
            fprintf(stderr, "discovery found %zu nodes, want 1\n", found);
            return 1;
        }
    }

    CHECK(rela_free(client, buf));
    CHECK(rela_close(client));
    /* The handle is gone now. */
    if (rela_ping(client, NULL) != RELA_ERR_UNKNOWN_HANDLE) {
        return 1;
    }
    free(data);
    free(back);
    printf("ok\n");
    return 0;
}
