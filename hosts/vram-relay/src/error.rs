//! The CLI's error type and its exit codes.

use std::fmt;

/// Exit status of a command that failed (connection, protocol, a failed conformance case, a
/// bad file).
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit status of bad usage: clap's own errors, and values the command itself refuses.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status of a conformance run that failed nothing but did not check what it was asked
/// to (see `rela_conformance::Verdict::Incomplete`).
pub(crate) const EXIT_INCOMPLETE: u8 = rela_conformance::EXIT_INCOMPLETE;

/// Why a command did not succeed, which decides its exit status.
#[derive(Debug)]
pub(crate) enum CliError {
    /// The command failed ([`EXIT_FAILED`]).
    Failed(String),
    /// A value the command refuses ([`EXIT_USAGE`]).
    Usage(String),
    /// A conformance run that checked less than asked ([`EXIT_INCOMPLETE`]).
    Incomplete(String),
    /// Whoever read stdout has gone away (`... | head`): the command stops quietly, status 0.
    ClosedPipe,
}

impl CliError {
    /// The process exit status for this error.
    pub(crate) const fn exit_code(&self) -> u8 {
        match self {
            Self::Failed(_) => EXIT_FAILED,
            Self::Usage(_) => EXIT_USAGE,
            Self::Incomplete(_) => EXIT_INCOMPLETE,
            Self::ClosedPipe => 0,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(m) | Self::Usage(m) | Self::Incomplete(m) => f.write_str(m),
            Self::ClosedPipe => f.write_str("stdout was closed"),
        }
    }
}

impl From<String> for CliError {
    fn from(m: String) -> Self {
        Self::Failed(m)
    }
}

impl From<&str> for CliError {
    fn from(m: &str) -> Self {
        Self::Failed(m.to_owned())
    }
}
