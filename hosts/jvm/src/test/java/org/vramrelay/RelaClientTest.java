package org.vramrelay;

import static org.vramrelay.Checks.check;
import static org.vramrelay.Checks.expect;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Arrays;

/**
 * The JVM API against a live node: java org.vramrelay.RelaClientTest HOST PORT TOKEN_FILE
 * [EMBEDDING_MODEL] [LANGUAGE_MODEL] (an empty EMBEDDING_MODEL skips the embeddings).
 * Exits 0 when every check passed; prints each failure and exits 1 otherwise.
 */
public final class RelaClientTest {
    private static String host;
    private static int port;

    private RelaClientTest() {}

    /** Connects, waiting while the node turns this address away after a failed AUTH (BUSY, 17). */
    private static RelaClient connect(byte[] token) throws InterruptedException {
        for (int i = 0; ; i++) {
            try {
                return RelaClient.connect(host, port, token, 10_000);
            } catch (RelaException e) {
                if (e.code() != 17 || i == 50) {
                    throw e;
                }
                Thread.sleep(50);
            }
        }
    }

    private static byte[] pattern(int seed, int len) {
        byte[] b = new byte[len];
        int x = seed * 0x9E3779B9 | 1;
        for (int i = 0; i < len; i++) {
            x ^= x << 13;
            x ^= x >>> 17;
            x ^= x << 5;
            b[i] = (byte) x;
        }
        return b;
    }

    public static void main(String[] args) throws Exception {
        host = args[0];
        port = Integer.parseInt(args[1]);
        byte[] token = new String(Files.readAllBytes(Paths.get(args[2])), StandardCharsets.UTF_8)
                .trim()
                .getBytes(StandardCharsets.UTF_8);
        String model = args.length > 3 && !args[3].isEmpty() ? args[3] : null;
        String llm = args.length > 4 ? args[4] : null;

        // Errors at connect time.
        String m = expect(RelaException.AUTH_FAILED, "wrong token", () -> {
            try {
                connect("not the token".getBytes(StandardCharsets.UTF_8)).close();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });
        check(m.equals("the node rejected the token"), "wrong-token message: " + m);
        expect(RelaException.TOKEN_REQUIRED, "no token", () -> {
            try {
                connect(null).close();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });
        expect(RelaException.IO, "nothing listening", () -> RelaClient.connect("127.0.0.1", 1, null, 2000));

        RelaClient kept;
        try (RelaClient c = connect(token)) {
            kept = c;
            check(c.ping() >= 0, "ping");

            // byte[] round trip, at an offset, across several frames.
            byte[] data = pattern(1, 3 << 20);
            long buf = c.alloc(4 << 20);
            c.write(buf, 4096, data);
            check(Arrays.equals(c.read(buf, 4096, data.length), data), "byte[] write and read, 3 MiB");
            check(Arrays.equals(c.read(buf, 0, 16), new byte[16]), "fresh memory reads as zeros");

            // Direct ByteBuffers: position to limit, positions advance.
            ByteBuffer out = ByteBuffer.allocateDirect(1 << 20);
            out.put(pattern(2, 1 << 20)).flip();
            out.position(100);
            c.write(buf, 0, out);
            check(out.position() == out.limit(), "direct write advances the position");
            ByteBuffer in = ByteBuffer.allocateDirect((1 << 20) + 10);
            in.position(10);
            c.read(buf, 0, in);
            check(in.position() == in.limit(), "direct read advances the position");
            byte[] want = Arrays.copyOfRange(pattern(2, 1 << 20), 100, 1 << 20);
            byte[] got = new byte[want.length];
            in.position(10);
            in.get(got);
            check(Arrays.equals(got, want), "direct write and read, 1 MiB");
            // A heap ByteBuffer works too (through a copy).
            ByteBuffer heap = ByteBuffer.allocate(64);
            c.read(buf, 0, heap);
            check(Arrays.equals(heap.array(), Arrays.copyOfRange(want, 0, 64)), "heap ByteBuffer read");

            // Errors on a live session, which goes on afterwards.
            m = expect(RelaException.NO_SUCH_BUFFER, "unknown buffer", () -> c.free(0xdeadL));
            check(m.contains("NO_SUCH_BUFFER"), "unknown-buffer message: " + m);
            expect(11, "out of bounds", () -> c.write(buf, (4 << 20) - 2, new byte[8]));
            expect(RelaException.INVALID_ARGUMENT, "negative size", () -> c.alloc(-5));
            expect(RelaException.INVALID_ARGUMENT, "handle out of range", () -> c.free(1L << 40));
            expect(RelaException.INVALID_ARGUMENT, "null data", () -> c.write(buf, 0, (byte[]) null));
            expect(RelaException.UNKNOWN_HANDLE, "model never loaded", () -> c.unloadModel(3));
            check(c.ping() >= 0, "the session goes on after errors");
            c.free(buf);

            if (model != null) {
                long id = c.loadModel(model);
                float[][] v = c.embed(id, "The cat sits on the mat.", "A feline rests on a rug.", "Tax law.");
                check(v.length == 3 && v[0].length == 384, "embed: 3 vectors of 384");
                check(dot(v[0], v[1]) > dot(v[0], v[2]) + 0.2f, "the paraphrase is closer");
                check(Math.abs(dot(v[0], v[0]) - 1f) < 1e-3f, "L2-normalized");
                c.unloadModel(id);
                expect(RelaException.UNKNOWN_HANDLE, "embed after unload", () -> c.embed(id, "x"));
            } else {
                System.out.println("skip embed: no model name given");
            }
            if (llm != null) {
                long id = c.loadModel(llm);
                StringBuilder streamed = new StringBuilder();
                String text = c.generate(id, "The capital of France is", 12, false, streamed::append);
                check(text.equals(streamed.toString()) && text.contains("Paris"), "generate: " + text);
                // An exception from the callback cancels and comes back to the caller.
                try {
                    c.generate(id, "Write a long story.", 200, true, piece -> {
                        throw new IllegalStateException("enough");
                    });
                    check(false, "callback exception: none thrown");
                } catch (IllegalStateException e) {
                    check(e.getMessage().equals("enough"), "callback exception propagates");
                }
                check(c.ping() >= 0, "the session goes on after a cancelled generation");
                expect(RelaException.INVALID_ARGUMENT, "maxTokens 0", () -> c.generate(id, "x", 0, false, null));
                c.unloadModel(id);
            } else {
                System.out.println("skip generate: no language model given");
            }
        }
        m = expect(RelaException.UNKNOWN_HANDLE, "call after close", kept::ping);
        check(m.contains("no open client"), "closed-client message: " + m);
        kept.close(); // a second close does nothing

        Checks.finish();
    }

    private static float dot(float[] a, float[] b) {
        float s = 0;
        for (int i = 0; i < a.length; i++) {
            s += a[i] * b[i];
        }
        return s;
    }
}
