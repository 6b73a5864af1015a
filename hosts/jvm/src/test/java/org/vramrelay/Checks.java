package org.vramrelay;

/** The checks the JVM tests print and count: one line per check, a summary and exit status at the end. */
final class Checks {
    private static int failures;

    private Checks() {}

    /** Prints {@code what} as passed or failed, and counts a failure. */
    static void check(boolean ok, String what) {
        System.out.println((ok ? "ok   " : "FAIL ") + what);
        if (!ok) {
            failures++;
        }
    }

    /** Runs {@code call}, expecting a RelaException with {@code code}; returns its message. */
    static String expect(int code, String what, Runnable call) {
        try {
            call.run();
            check(false, what + ": no exception");
            return "";
        } catch (RelaException e) {
            check(e.code() == code, what + ": code " + e.code() + " (want " + code + "): " + e.getMessage());
            return e.getMessage();
        }
    }

    /** Prints the summary and exits 1 if any check failed. */
    static void finish() {
        if (failures > 0) {
            System.out.println(failures + " checks failed");
            System.exit(1);
        }
        System.out.println("all checks passed");
    }
}
