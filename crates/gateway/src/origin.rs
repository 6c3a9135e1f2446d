//! Which web pages may open a WebSocket to the gateway: the `Origin` check of the handshake.
//!
//! A browser lets any page open a WebSocket to any host, and sends the page's origin in the
//! `Origin` header; unlike `fetch`, no CORS check stops the page from reading what comes back.
//! A page on `https://evil.example` that got hold of a user's token (or, with cookies, needed
//! none) could otherwise read that user's messages. So a handshake with an `Origin` is
//! answered only for the origins of `gateway.allowed_origins`, and refused with HTTP 403
//! before any upgrade otherwise.
//!
//! Without the setting, only same-origin pages may connect: the `Origin`'s host and port equal
//! the request's `Host`. That is what a page served by the gateway itself (the demo at
//! `/demo`) needs, and nothing more; a deployment whose pages live elsewhere lists them.
//!
//! Requests without an `Origin` do not come from a page (browsers always send it on
//! WebSocket handshakes), so no foreign page can be behind them: servers, mobile apps and
//! command-line clients. `gateway.allow_missing_origin` (default true) lets them in.

use std::fmt;

use serde::Deserialize;

use crate::head::RequestHead;

/// One entry of `gateway.allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: any origin, `null` included.
    Any,
    /// `https://app.example.com`: that scheme, host and port.
    Exact(Origin),
    /// `https://*.example.com`: that scheme and port, and a host ending in `.example.com`
    /// with at least one label before it (not `example.com` itself).
    Subdomains { scheme: String, suffix: String, port: u16 },
}

/// A parsed web origin: lower-case scheme and host, and the port (the scheme's default when
/// left out).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> u16 {
    match scheme {
        "https" | "wss" => 443,
        _ => 80,
    }
}

/// Splits `host[:port]` (IPv6 literals in brackets); `None` for a bad port.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(authority[i + 1..].parse().ok()?)),
        _ => (authority, None),
    };
    (!host.is_empty()).then_some((host, port))
}

impl Origin {
    /// `scheme://host[:port]`, as browsers send it: no path, no user info.
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        let (scheme, authority) = text.split_once("://")?;
        if scheme.is_empty() || authority.contains(['/', '@', '?', '#']) {
            return None;
        }
        let (host, port) = split_authority(authority)?;
        Some(Self { port: port.unwrap_or(default_port(scheme)), scheme: scheme.into(), host: host.into() })
    }
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        if text.trim() == "*" {
            return Ok(Self::Any);
        }
        let bad = || {
            format!(
                "{text:?} is not an origin: write `scheme://host[:port]` (no path), \
                 `scheme://*.domain` for its subdomains, or `*` for any"
            )
        };
        if let Some((scheme, rest)) = text.trim().split_once("://*.") {
            let origin = Origin::parse(&format!("{scheme}://{rest}")).ok_or_else(bad)?;
            if origin.host.contains('*') {
                return Err(bad());
            }
            return Ok(Self::Subdomains {
                scheme: origin.scheme,
                suffix: format!(".{}", origin.host),
                port: origin.port,
            });
        }
        let origin = Origin::parse(text).ok_or_else(bad)?;
        if origin.host.contains('*') {
            return Err(bad());
        }
        Ok(Self::Exact(origin))
    }

    fn matches(&self, origin: &Origin) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(allowed) => allowed == origin,
            Self::Subdomains { scheme, suffix, port } => {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin.host.len() > suffix.len()
                    && origin.host.ends_with(suffix.as_str())
            }
        }
    }
}

/// `gateway.allowed_origins`, parsed when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct AllowedOrigins(Vec<Pattern>);

impl TryFrom<Vec<String>> for AllowedOrigins {
    type Error = String;

    fn try_from(list: Vec<String>) -> Result<Self, String> {
        list.iter().map(|entry| Pattern::parse(entry)).collect::<Result<_, _>>().map(Self)
    }
}

impl AllowedOrigins {
    /// Whether the list admits any origin (`*`).
    pub fn any(&self) -> bool {
        self.0.contains(&Pattern::Any)
    }
}

/// Why a handshake's origin was refused; its text is the body of the 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the `Origin` of a `/ws` request against `gateway.allowed_origins` (`allowed`) and
/// `gateway.allow_missing_origin` (`allow_missing`).
pub fn check(
    allowed: Option<&AllowedOrigins>,
    allow_missing: bool,
    head: &RequestHead,
) -> Result<(), Refused> {
    let Some(text) = head.origin.as_deref() else {
        return if allow_missing {
            Ok(())
        } else {
            Err(Refused("an Origin header is required (gateway.allow_missing_origin is false)".into()))
        };
    };
    let origin = Origin::parse(text);
    let list = allowed;
    let allowed = match (list, &origin) {
        (Some(list), _) if list.any() => true,
        (Some(list), Some(origin)) => list.0.iter().any(|p| p.matches(origin)),
        (None, Some(origin)) => same_origin(origin, head.host.as_deref()),
        (_, None) => false,
    };
    if allowed {
        return Ok(());
    }
    let which = if list.is_some() {
        "it is not in gateway.allowed_origins"
    } else {
        "it is not this host's own and gateway.allowed_origins is not set"
    };
    Err(Refused(format!("origin {text:?} may not connect: {which}")))
}

/// Whether `origin` names the host the request was sent to (`Host`), on the same port.
fn same_origin(origin: &Origin, host: Option<&str>) -> bool {
    let Some((host, port)) = host
        .map(str::to_ascii_lowercase)
        .as_deref()
        .and_then(|h| split_authority(h).map(|(name, port)| (name.to_string(), port)))
    else {
        return false;
    };
    host == origin.host && port.unwrap_or(default_port(&origin.scheme)) == origin.port
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(origin: Option<&str>, host: &str) -> RequestHead {
        let mut raw = format!("GET /ws HTTP/1.1\r\nHost: {host}\r\n");
        if let Some(origin) = origin {
            raw.push_str(&format!("Origin: {origin}\r\n"));
        }
        raw.push_str("\r\n");
        crate::head::parse_request_head(raw.as_bytes()).unwrap().unwrap()
    }

    /// `gateway.allowed_origins` and `gateway.allow_missing_origin`.
    struct Config(Option<AllowedOrigins>, bool);

    fn config(allowed: Option<&[&str]>, allow_missing: bool) -> Config {
        let list = allowed.map(|list| {
            AllowedOrigins::try_from(list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        });
        Config(list, allow_missing)
    }

    fn check(config: &Config, head: &RequestHead) -> Result<(), Refused> {
        super::check(config.0.as_ref(), config.1, head)
    }

    /// Without `allowed_origins`, only the gateway's own host and port may connect.
    #[test]
    fn by_default_only_the_same_origin_connects() {
        let config = config(None, true);
        let ok = |origin: &str, host: &str| check(&config, &head(Some(origin), host)).is_ok();
        assert!(ok("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(ok("https://Chat.Example.com", "chat.example.com"));
        assert!(ok("https://chat.example.com", "chat.example.com:443"));
        assert!(!ok("https://evil.example", "chat.example.com"));
        assert!(!ok("http://127.0.0.1:9999", "127.0.0.1:8080"));
        assert!(!ok("http://chat.example.com", "chat.example.com:443"));
        assert!(!ok("null", "chat.example.com"));
        assert!(check(&config, &head(None, "x")).is_ok());
    }

    /// Exact origins, subdomain patterns and `*` match what they say and nothing more.
    #[test]
    fn listed_origins_and_patterns_match_exactly() {
        let config = config(Some(&["https://app.example.com", "https://*.example.org:8443"]), false);
        let ok = |origin: &str| check(&config, &head(Some(origin), "gw")).is_ok();
        assert!(ok("https://app.example.com"));
        assert!(ok("https://app.example.com:443"));
        assert!(!ok("http://app.example.com"));
        assert!(!ok("https://app.example.com.evil.example"));
        assert!(ok("https://a.b.example.org:8443"));
        assert!(!ok("https://example.org:8443"));
        assert!(!ok("https://evilexample.org:8443"));
        assert!(!ok("https://a.example.org"));
        assert!(check(&config, &head(None, "gw")).is_err(), "a missing Origin is refused when told so");
        let any = self::config(Some(&["*"]), true);
        assert!(check(&any, &head(Some("null"), "gw")).is_ok());
    }

    /// Entries that are not origins are refused when the configuration is read.
    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "https://*",
            "https://a.*.com",
            "https://x:port",
        ] {
            assert!(AllowedOrigins::try_from(vec![bad.to_string()]).is_err(), "{bad} accepted");
        }
    }
}
