package org.vramrelay;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Arrays;

/**
 * The JNI path's costs: java org.vramrelay.Bench HOST PORT TOKEN_FILE. Prints the median PING
 * round trip and the best of five 64 MiB writes and reads (byte[] and direct ByteBuffer), in
 * the format of hosts/jni/examples/baseline.rs, which measures the Rust client the same way.
 */
public final class Bench {
    private static final int MIB = 1 << 20;
    private static final int SIZE = 64 * MIB;
    private static final int PINGS = 2000;
    private static final int RUNS = 5;

    private Bench() {}

    public static void main(String[] args) throws Exception {
        byte[] token = new String(Files.readAllBytes(Paths.get(args[2])), StandardCharsets.UTF_8)
                .trim()
                .getBytes(StandardCharsets.UTF_8);
        try (RelaClient c = RelaClient.connect(args[0], Integer.parseInt(args[1]), token)) {
            for (int i = 0; i < 200; i++) {
                c.ping(); // warm up the JIT and the connection
            }
            long[] rtt = new long[PINGS];
            for (int i = 0; i < PINGS; i++) {
                long t = System.nanoTime();
                c.ping();
                rtt[i] = System.nanoTime() - t;
            }
            Arrays.sort(rtt);
            System.out.printf("ping p50 %.1f us%n", rtt[PINGS / 2] / 1e3);

            long buf = c.alloc(SIZE);
            byte[] data = new byte[SIZE];
            for (int i = 0; i < SIZE; i++) {
                data[i] = (byte) (i * 31);
            }
            ByteBuffer direct = ByteBuffer.allocateDirect(SIZE);
            direct.put(data).flip();
            double wArr = Double.MAX_VALUE, rArr = Double.MAX_VALUE;
            double wDir = Double.MAX_VALUE, rDir = Double.MAX_VALUE;
            for (int run = 0; run < RUNS; run++) {
                long t = System.nanoTime();
                c.write(buf, 0, data);
                wArr = Math.min(wArr, (System.nanoTime() - t) / 1e9);
                t = System.nanoTime();
                byte[] back = c.read(buf, 0, SIZE);
                rArr = Math.min(rArr, (System.nanoTime() - t) / 1e9);
                if (back[SIZE - 1] != data[SIZE - 1]) {
                    throw new IllegalStateException("read back differs");
                }
                direct.clear();
                t = System.nanoTime();
                c.write(buf, 0, direct);
                wDir = Math.min(wDir, (System.nanoTime() - t) / 1e9);
                direct.clear();
                t = System.nanoTime();
                c.read(buf, 0, direct);
                rDir = Math.min(rDir, (System.nanoTime() - t) / 1e9);
            }
            System.out.printf("write 64 MiB byte[] %.0f MiB/s%n", 64 / wArr);
            System.out.printf("read 64 MiB byte[] %.0f MiB/s%n", 64 / rArr);
            System.out.printf("write 64 MiB direct %.0f MiB/s%n", 64 / wDir);
            System.out.printf("read 64 MiB direct %.0f MiB/s%n", 64 / rDir);
            c.free(buf);
        }
    }
}
