package org.vramrelay;

import java.nio.ByteBuffer;
import java.util.function.Consumer;

/**
 * A session with a vram-relay node: remote buffers, built-in kernels and models, over the
 * native library {@code rela_jni} (the Rust client behind it).
 *
 * <p>The library is loaded with {@code System.loadLibrary("rela_jni")}, or from the file named
 * by the system property {@code org.vramrelay.library} when it is set. Every failure throws a
 * {@link RelaException}. Calls on one client may come from several threads; they run one at a
 * time. Buffers and models live as long as the session: {@link #close()} (or
 * try-with-resources) frees and zeroes everything on the node.
 */
public final class RelaClient implements AutoCloseable {
    /** The system property that names the native library's file, overriding the library path. */
    public static final String LIBRARY_PROPERTY = "org.vramrelay.library";

    static {
        String path = System.getProperty(LIBRARY_PROPERTY);
        if (path != null && !path.isEmpty()) {
            System.load(path);
        } else {
            System.loadLibrary("rela_jni");
        }
    }

    private final long handle;
    private boolean closed;

    private RelaClient(long handle) {
        this.handle = handle;
    }

    /**
     * Connects, completes the handshake and, with a token, authenticates, with the default
     * deadlines (10 s to connect, 10 s for the handshake, 60 s for each step of a request).
     *
     * @param host a host name or an IP address
     * @param port the node's TCP port (8765 by default)
     * @param tokenOrNull the node's shared token, or null when it requires none
     * @return the connected client
     */
    public static RelaClient connect(String host, int port, byte[] tokenOrNull) {
        return connect(host, port, tokenOrNull, 0);
    }

    /**
     * {@link #connect(String, int, byte[])} with every deadline set to {@code timeoutMillis}
     * (0: the defaults).
     *
     * @param host a host name or an IP address
     * @param port the node's TCP port
     * @param tokenOrNull the node's shared token, or null
     * @param timeoutMillis the deadline for connecting, the handshake and each request step
     * @return the connected client
     */
    public static RelaClient connect(String host, int port, byte[] tokenOrNull, int timeoutMillis) {
        return connect(host, port, tokenOrNull, Tls.off(), timeoutMillis);
    }

    /**
     * {@link #connect(String, int, byte[], int)} over TLS when {@code tls} says so: the TLS
     * handshake first, the node's certificate trusted as {@code tls} says, then the session
     * (HELLO and AUTH inside TLS). An untrusted certificate or a failed handshake throws a
     * {@link RelaException} with code {@link RelaException#TLS}.
     *
     * @param host a host name or an IP address
     * @param port the node's TCP port
     * @param tokenOrNull the node's shared token, or null
     * @param tls plaintext, or how to trust the node's certificate
     * @param timeoutMillis the deadline for connecting, the handshake and each request step
     *     (0: the defaults)
     * @return the connected client
     */
    public static RelaClient connect(String host, int port, byte[] tokenOrNull, Tls tls, int timeoutMillis) {
        if (timeoutMillis < 0) {
            throw new RelaException(RelaException.INVALID_ARGUMENT, "timeoutMillis is negative");
        }
        if (tls == null) {
            throw new RelaException(RelaException.INVALID_ARGUMENT, "tls is null (Tls.off() for plaintext)");
        }
        return new RelaClient(nativeConnect(
                host, port, tokenOrNull, timeoutMillis, timeoutMillis, timeoutMillis, tls.mode, tls.argument));
    }

    /**
     * How a session is carried: plaintext, or TLS with one way of trusting the node's
     * certificate. On a shared network (a phone on public Wi-Fi) use TLS: the token keeps
     * strangers out, TLS keeps them from reading the tensors, prompts and outputs.
     */
    public static final class Tls {
        final int mode;
        final String argument;

        private Tls(int mode, String argument) {
            this.mode = mode;
            this.argument = argument;
        }

        /** @return plaintext TCP */
        public static Tls off() {
            return new Tls(0, null);
        }

        /**
         * Trusts only the certificate with this SHA-256 fingerprint: what {@code vram-relay
         * serve --tls} logs and discovery announces.
         *
         * @param fingerprint 64 hex digits, colons between bytes allowed
         * @return the option
         */
        public static Tls pinned(String fingerprint) {
            return new Tls(1, fingerprint);
        }

        /**
         * Trusts certificates that chain to a CA of this PEM file and name the host.
         *
         * @param caPemFile the path of the CA bundle
         * @return the option
         */
        public static Tls ca(String caPemFile) {
            return new Tls(2, caPemFile);
        }

        /**
         * Trusts the certificate a node presents the first time, and only that one after,
         * remembered per address in a file.
         *
         * @param knownNodesFileOrNull the file, or null for the default location
         * @return the option
         */
        public static Tls firstUse(String knownNodesFileOrNull) {
            return new Tls(3, knownNodesFileOrNull);
        }
    }

    /** @return the round-trip time of a PING, in microseconds */
    public long ping() {
        return nativePing(handle);
    }

    /**
     * Allocates a buffer on the node; fresh memory reads as zeros.
     *
     * @param size bytes
     * @return the buffer's handle
     */
    public long alloc(long size) {
        return nativeAlloc(handle, size);
    }

    /**
     * Writes {@code data} into {@code buffer} at {@code offset}.
     *
     * @param buffer a handle from {@link #alloc(long)}
     * @param offset where in the buffer
     * @param data the bytes
     */
    public void write(long buffer, long offset, byte[] data) {
        nativeWrite(handle, buffer, offset, data);
    }

    /**
     * Writes the remaining bytes of {@code data} (position to limit) into {@code buffer} at
     * {@code offset}, and advances its position to its limit. A direct buffer is sent straight
     * from its memory; a heap buffer is copied first.
     *
     * @param buffer a handle from {@link #alloc(long)}
     * @param offset where in the buffer
     * @param data the bytes
     */
    public void write(long buffer, long offset, ByteBuffer data) {
        int position = data.position();
        int length = data.remaining();
        if (data.isDirect()) {
            nativeWriteDirect(handle, buffer, offset, data, position, length);
        } else {
            byte[] copy = new byte[length];
            data.duplicate().get(copy);
            nativeWrite(handle, buffer, offset, copy);
        }
        data.position(position + length);
    }

    /**
     * Reads {@code length} bytes of {@code buffer} from {@code offset}.
     *
     * @param buffer a handle from {@link #alloc(long)}
     * @param offset where in the buffer
     * @param length how many bytes
     * @return the bytes
     */
    public byte[] read(long buffer, long offset, int length) {
        return nativeRead(handle, buffer, offset, length);
    }

    /**
     * Fills {@code dst} from its position to its limit with bytes of {@code buffer} from
     * {@code offset}, and advances its position to its limit. A direct buffer is filled in
     * place; a heap buffer through a copy.
     *
     * @param buffer a handle from {@link #alloc(long)}
     * @param offset where in the buffer
     * @param dst where the bytes go
     */
    public void read(long buffer, long offset, ByteBuffer dst) {
        int position = dst.position();
        int length = dst.remaining();
        if (dst.isDirect()) {
            nativeReadDirect(handle, buffer, offset, dst, position, length);
            dst.position(position + length);
        } else {
            dst.put(nativeRead(handle, buffer, offset, length));
        }
    }

    /**
     * Frees a buffer; the node zeroes its memory.
     *
     * @param buffer a handle from {@link #alloc(long)}
     */
    public void free(long buffer) {
        nativeFree(handle, buffer);
    }

    /**
     * Loads a model from the node's repository (a node started with {@code --models}).
     *
     * @param name the model's name, such as {@code "all-MiniLM-L6-v2"}
     * @return the model's id in this session
     */
    public long loadModel(String name) {
        return nativeLoadModel(handle, name);
    }

    /**
     * Unloads a model loaded by {@link #loadModel(String)}.
     *
     * @param model the model's id
     */
    public void unloadModel(long model) {
        nativeUnloadModel(handle, model);
    }

    /**
     * Embeds texts with a loaded model: one L2-normalized vector per text.
     *
     * @param model the model's id
     * @param texts the texts
     * @return one {@code float[]} per text, in order
     */
    public float[][] embed(long model, String... texts) {
        return nativeEmbed(handle, model, texts);
    }

    /**
     * Generates text with a language model from {@link #loadModel(String)} (a {@code .gguf} file
     * on the node), greedily, passing each piece to {@code onText} as it arrives.
     *
     * @param model the model's id
     * @param prompt the prompt
     * @param maxTokens most tokens to generate (at least 1)
     * @param chat send the prompt as one user message through the model's chat template
     * @param onTextOrNull called with each piece of text; an exception it throws cancels the
     *     generation and is rethrown
     * @return the whole generated text
     */
    public String generate(long model, String prompt, int maxTokens, boolean chat, Consumer<String> onTextOrNull) {
        return nativeGenerate(handle, model, prompt, maxTokens, chat, onTextOrNull);
    }

    /**
     * Ends the session; the node frees and zeroes every buffer and model it held. Later calls
     * throw {@link RelaException} with {@link RelaException#UNKNOWN_HANDLE}; closing again does
     * nothing.
     */
    @Override
    public synchronized void close() {
        if (!closed) {
            closed = true;
            nativeClose(handle);
        }
    }

    private static native long nativeConnect(
            String host,
            int port,
            byte[] token,
            int connectMillis,
            int handshakeMillis,
            int requestMillis,
            int tlsMode,
            String tlsArgument);

    private static native long nativePing(long client);

    private static native long nativeAlloc(long client, long size);

    private static native void nativeFree(long client, long buffer);

    private static native void nativeWrite(long client, long buffer, long offset, byte[] data);

    private static native void nativeWriteDirect(
            long client, long buffer, long offset, ByteBuffer data, int position, int length);

    private static native byte[] nativeRead(long client, long buffer, long offset, int length);

    private static native void nativeReadDirect(
            long client, long buffer, long offset, ByteBuffer dst, int position, int length);

    private static native long nativeLoadModel(long client, String name);

    private static native void nativeUnloadModel(long client, long model);

    private static native float[][] nativeEmbed(long client, long model, String[] texts);

    private static native String nativeGenerate(
            long client, long model, String prompt, int maxTokens, boolean chat, Consumer<String> onText);

    private static native void nativeClose(long client);
}
