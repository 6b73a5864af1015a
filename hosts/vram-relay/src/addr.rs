//! Node addresses as users type them: `HOST[:PORT]`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use rela_core::config::DEFAULT_SESSION_PORT;

/// A node's session address: a host name or IP literal, and a port (default 8765).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeAddr {
    host: String,
    port: u16,
}

impl NodeAddr {
    /// Parses `HOST`, `HOST:PORT`, `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`; a missing port
    /// is [`DEFAULT_SESSION_PORT`].
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Self { host: a.ip().to_string(), port: a.port() });
        }
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self { host: ip.to_string(), port: DEFAULT_SESSION_PORT });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => {
                let port = port.parse::<u16>().map_err(|_| format!("invalid port {port:?} in {s:?}"))?;
                (host, port)
            }
            None => (s, DEFAULT_SESSION_PORT),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
        if host.is_empty() || !host.chars().all(valid) {
            return Err(format!("{s:?} is not HOST[:PORT] (e.g. localhost:8765, 192.168.1.20)"));
        }
        Ok(Self { host: host.to_owned(), port })
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let ok = |s: &str| NodeAddr::parse(s).map(|a| a.to_string());
        assert_eq!(ok("127.0.0.1:9000").as_deref(), Ok("127.0.0.1:9000"));
        assert_eq!(ok("127.0.0.1").as_deref(), Ok("127.0.0.1:8765"));
        assert_eq!(ok("localhost").as_deref(), Ok("localhost:8765"));
        assert_eq!(ok("localhost:8799").as_deref(), Ok("localhost:8799"));
        assert_eq!(ok("gpu-box.lan").as_deref(), Ok("gpu-box.lan:8765"));
        assert_eq!(ok("::1").as_deref(), Ok("[::1]:8765"));
        assert_eq!(ok("[::1]").as_deref(), Ok("[::1]:8765"));
        assert_eq!(ok("[::1]:9000").as_deref(), Ok("[::1]:9000"));
        for bad in ["", ":8765", "host:port", "host:99999", "a b", "http://x"] {
            assert!(NodeAddr::parse(bad).is_err(), "{bad:?}");
        }
    }
}
