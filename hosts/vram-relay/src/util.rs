//! Small helpers shared by the commands: sizes, tokens, progress bars.

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::CliError;

/// `println!` for command output: a reader that has gone away (`vram-relay embed ... | head`)
/// ends the command quietly with status 0 instead of a panic. Use inside a function returning
/// `Result<_, CliError>`.
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::util::write_out(format_args!("{}\n", format_args!($($t)*)))?
    };
}
pub(crate) use outln;

/// Writes to stdout; a closed pipe is [`CliError::ClosedPipe`].
pub(crate) fn write_out(args: fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::ClosedPipe),
        Err(e) => Err(CliError::Failed(format!("cannot write to stdout: {e}"))),
    }
}

/// [`parse_size`] for sizes that must be at least one byte.
pub(crate) fn parse_nonzero_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("must be at least 1 byte".into()),
        n => Ok(n),
    }
}

/// Parses seconds (`2`, `0.5`) for a timeout: more than 0 and at most `max`.
pub(crate) fn parse_seconds(s: &str, max: f64) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 && v <= max {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("must be more than 0 and at most {max} seconds"))
    }
}

/// Parses `4096`, `64K`, `64KiB`, `16M`, `16MiB`, `1G`, `1GiB` (binary units).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("size {s:?} overflows"))
}

/// Formats bytes with a binary unit.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.2} {}", UNITS[u]) }
}

/// Reads a token from a file (trailing newline removed) or takes it as given.
pub(crate) fn load_token(token: Option<&str>, token_file: Option<&Path>) -> Result<Option<Vec<u8>>, String> {
    match (token, token_file) {
        (Some(_), Some(_)) => Err("give either a token or a token file, not both".into()),
        (Some(""), None) => Err("the token is empty".into()),
        (Some(t), None) => Ok(Some(t.as_bytes().to_vec())),
        (None, Some(p)) => {
            let mut bytes =
                std::fs::read(p).map_err(|e| format!("cannot read token file {}: {e}", p.display()))?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            if bytes.is_empty() {
                return Err(format!("token file {} is empty", p.display()));
            }
            Ok(Some(bytes))
        }
        (None, None) => Ok(None),
    }
}

/// Transfers at least this large get a progress bar.
pub(crate) const PROGRESS_THRESHOLD: u64 = 4 << 20;

/// A progress bar for a transfer of `total` bytes, hidden for small transfers and when stderr
/// is not a terminal.
pub(crate) fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if total < PROGRESS_THRESHOLD {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn checked_values() {
        assert_eq!(parse_nonzero_size("1"), Ok(1));
        assert!(parse_nonzero_size("0").unwrap_err().contains("at least 1 byte"));
        assert_eq!(parse_seconds("0.5", 60.0), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "61", "nan", "inf", "x"] {
            assert!(parse_seconds(bad, 60.0).is_err(), "{bad}");
        }
        assert!(parse_seconds("0", 60.0).unwrap_err().contains("more than 0"));
    }

    #[test]
    fn tokens() {
        assert_eq!(load_token(Some("abc"), None), Ok(Some(b"abc".to_vec())));
        assert!(load_token(Some(""), None).is_err());
        let dir = std::env::temp_dir().join(format!("vram-relay-token-{}", std::process::id()));
        std::fs::write(&dir, b"secret\n").unwrap();
        assert_eq!(load_token(None, Some(&dir)), Ok(Some(b"secret".to_vec())));
        assert!(load_token(Some("x"), Some(&dir)).is_err());
        std::fs::remove_file(&dir).unwrap();
    }
}
