package org.vramrelay;

/**
 * A failed call. {@link #code()} is the node's ERROR code (positive; a wrong token is 6,
 * AUTH_FAILED; an unknown buffer 10, NO_SUCH_BUFFER; see docs/PROTOCOL.md) or a negative local
 * code ({@link #TIMEOUT}, {@link #UNKNOWN_HANDLE}, ...), the same values as rela.h's RELA_ERR_*.
 */
public class RelaException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** An argument is invalid (null, negative, not a handle the node gave out). */
    public static final int INVALID_ARGUMENT = -1;
    /** The client is closed, or a model id was not loaded through this client. */
    public static final int UNKNOWN_HANDLE = -2;
    /** The transport failed: the connection was refused, reset or closed by the node. */
    public static final int IO = -3;
    /** The node did not answer within a deadline; the connection is closed. */
    public static final int TIMEOUT = -4;
    /** The connection was closed by an earlier fatal error. */
    public static final int CLOSED = -5;
    /** The node broke the protocol. */
    public static final int PROTOCOL = -6;
    /** The node requires a token and none was given. */
    public static final int TOKEN_REQUIRED = -7;
    /** The host name could not be resolved. */
    public static final int RESOLVE = -8;
    /** The native library failed unexpectedly (a bug). */
    public static final int PANIC = -11;
    /** Any other failure inside the native library. */
    public static final int INTERNAL = -12;

    /**
     * TLS failed: the node's certificate is not trusted (not the pinned fingerprint, changed
     * since first use, or vouched for by no CA of the file), or the handshake failed.
     */
    public static final int TLS = -13;
    /** The node's code for a rejected token. */
    public static final int AUTH_FAILED = 6;
    /** The node's code for a handle that names no buffer of the session. */
    public static final int NO_SUCH_BUFFER = 10;

    private final int code;

    /**
     * Creates the exception (the native library does).
     *
     * @param code the wire error code, or a negative local code
     * @param message what went wrong
     */
    public RelaException(int code, String message) {
        super(message);
        this.code = code;
    }

    /** @return the wire error code (positive) or a negative local code */
    public int code() {
        return code;
    }
}
