package org.vramrelay;

import static org.vramrelay.Checks.check;
import static org.vramrelay.Checks.expect;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Arrays;

/**
 * The JVM API over TLS against a live node serving TLS: java org.vramrelay.RelaTlsTest HOST PORT
 * TOKEN_FILE FINGERPRINT KNOWN_NODES_FILE. A pinned session moves data; colons in the
 * fingerprint are accepted; another fingerprint, a plaintext session, a missing CA file and a
 * malformed fingerprint are refused with their codes; trust on first use remembers the node.
 * Exits 0 when every check passed.
 */
public final class RelaTlsTest {
    private RelaTlsTest() {}

    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        byte[] token = new String(Files.readAllBytes(Paths.get(args[2])), StandardCharsets.UTF_8)
                .trim()
                .getBytes(StandardCharsets.UTF_8);
        String fingerprint = args[3];
        String knownNodes = args[4];

        try (RelaClient c = RelaClient.connect(host, port, token, RelaClient.Tls.pinned(fingerprint), 10_000)) {
            check(c.ping() >= 0, "pinned: ping");
            byte[] data = "over TLS".getBytes(StandardCharsets.UTF_8);
            long buf = c.alloc(data.length);
            c.write(buf, 0, data);
            check(Arrays.equals(c.read(buf, 0, data.length), data), "pinned: round trip");
        }
        StringBuilder colons = new StringBuilder();
        for (int i = 0; i < fingerprint.length(); i += 2) {
            colons.append(i == 0 ? "" : ":").append(fingerprint, i, i + 2);
        }
        try (RelaClient c = RelaClient.connect(host, port, token, RelaClient.Tls.pinned(colons.toString()), 10_000)) {
            check(c.ping() >= 0, "pinned with colons: ping");
        }
        for (int i = 0; i < 2; i++) {
            try (RelaClient c = RelaClient.connect(host, port, token, RelaClient.Tls.firstUse(knownNodes), 10_000)) {
                check(c.ping() >= 0, "trust on first use, session " + (i + 1));
            }
        }
        String stored = new String(Files.readAllBytes(Paths.get(knownNodes)), StandardCharsets.UTF_8);
        check(stored.contains(fingerprint), "the known-nodes file holds the fingerprint");

        char last = fingerprint.charAt(fingerprint.length() - 1);
        String other = fingerprint.substring(0, fingerprint.length() - 1) + (last == '0' ? '1' : '0');
        String m = expect(RelaException.TLS, "another fingerprint",
                () -> RelaClient.connect(host, port, token, RelaClient.Tls.pinned(other), 10_000).close());
        check(m.contains("not the pinned"), "another-fingerprint message: " + m);
        expect(RelaException.INVALID_ARGUMENT, "a malformed fingerprint",
                () -> RelaClient.connect(host, port, token, RelaClient.Tls.pinned("abcd"), 10_000).close());
        expect(RelaException.TLS, "a missing CA file",
                () -> RelaClient.connect(host, port, token, RelaClient.Tls.ca("/nonexistent/ca.pem"), 10_000)
                        .close());
        expect(RelaException.INVALID_ARGUMENT, "a null Tls",
                () -> RelaClient.connect(host, port, token, null, 10_000).close());
        try {
            RelaClient.connect(host, port, token, 3_000).close();
            check(false, "plaintext against a TLS node: connected");
        } catch (RelaException e) {
            check(true, "plaintext against a TLS node is refused: code " + e.code() + ": " + e.getMessage());
        }
        Checks.finish();
    }
}
