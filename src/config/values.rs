//! The value types config files share ([`PortRange`], [`TlsFiles`]) and parsers for the value
//! syntaxes they use: durations, port ranges, `host:port` addresses, hostnames and names.
//!
//! Each parser is a pure function from the written value to a typed value or a message that says
//! what is wrong and how to write it instead. They know nothing about files or positions; the
//! callers attach the key and line.

use std::fmt;
use std::net::Ipv6Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use toml::Value;

/// The longest duration a config accepts; anything longer is almost certainly a typo.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest name (of a service, key or proxy) a config accepts.
const MAX_NAME_LEN: usize = 64;

/// The shortest key a hub's `[[keys]]` entry accepts.
pub(crate) const MIN_HUB_KEY_LEN: usize = 16;

/// An inclusive range of TCP/UDP ports, written `"20000-20100"`, `"2222"` or `2222`.
///
/// A parsed range has `1 <= start <= end`, except the single port `"0"`
/// ([`PortRange::OS_ASSIGNED`]): one port that the operating system picks when it is bound, for
/// tests and demos that must not depend on fixed ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port of the range.
    pub start: u16,
    /// Last port of the range (inclusive).
    pub end: u16,
}

impl PortRange {
    /// `ports = "0"`: one port, picked by the operating system when it is bound.
    pub const OS_ASSIGNED: PortRange = PortRange { start: 0, end: 0 };

    /// The range holding only `port` (`0` gives [`PortRange::OS_ASSIGNED`]).
    pub fn single(port: u16) -> Self {
        if port == 0 {
            PortRange::OS_ASSIGNED
        } else {
            PortRange {
                start: port,
                end: port,
            }
        }
    }

    /// Whether the OS picks the port (`"0"`).
    pub fn is_os_assigned(&self) -> bool {
        *self == Self::OS_ASSIGNED
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }

    /// The ports of the range, in ascending order.
    pub fn iter(&self) -> RangeInclusive<u16> {
        self.start..=self.end
    }

    /// How many ports the range holds.
    pub fn len(&self) -> usize {
        if self.start <= self.end {
            usize::from(self.end - self.start) + 1
        } else {
            0
        }
    }

    /// Whether the range holds no port; never true for a range parsed from a config.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the two ranges share at least one port. OS-assigned ports never overlap: each
    /// bind gets a port of its own.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        !self.is_empty()
            && !other.is_empty()
            && !self.is_os_assigned()
            && !other.is_os_assigned()
            && self.start <= other.end
            && other.start <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// A certificate chain and its private key, PEM files: the hub's `[tls]`, or one of an https
/// service's `[[services.NAME.certificates]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `cert_file`: certificate chain, PEM. Relative to the config file's directory.
    pub cert_file: PathBuf,
    /// `key_file`: private key, PEM. Relative to the config file's directory.
    pub key_file: PathBuf,
}

/// Parses `ports`: a string `"START-END"` or `"PORT"`, or an integer port; `"0"` alone means a
/// port picked by the operating system.
pub(crate) fn parse_port_range(value: &Value) -> Result<PortRange, String> {
    const HINT: &str = "write a port like \"2222\" or an inclusive range like \"20000-20100\"";
    let range = match value {
        Value::Integer(0) => PortRange::OS_ASSIGNED,
        Value::Integer(port) => {
            let port = port_from_i64(*port)?;
            PortRange {
                start: port,
                end: port,
            }
        }
        Value::String(text) => {
            let (start, end) = text.split_once('-').unwrap_or((text, text));
            let parse = |part: &str| {
                part.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("{text:?} is not a port or port range; {HINT}"))
            };
            PortRange {
                start: parse(start)?,
                end: parse(end)?,
            }
        }
        other => {
            return Err(format!(
                "expected a string, found {}; {HINT}",
                other.type_str()
            ));
        }
    };
    if range.is_os_assigned() {
        return Ok(range);
    }
    if range.start == 0 {
        return Err(format!(
            "a range cannot start at port 0; {HINT} (\"0\" alone lets the operating system pick \
             one port, for testing)"
        ));
    }
    if range.start > range.end {
        return Err(format!(
            "range {}-{} starts after it ends; write the lower port first, like \"{}-{}\"",
            range.start, range.end, range.end, range.start
        ));
    }
    Ok(range)
}

/// A port number written as a TOML integer: 1 to 65535.
pub(crate) fn port_from_i64(port: i64) -> Result<u16, String> {
    u16::try_from(port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("{port} is not a port number; use 1 to 65535"))
}

/// A whole number from `range`, written as a TOML integer: a count or a size.
pub(crate) fn count_in(n: i64, range: RangeInclusive<usize>) -> Result<usize, String> {
    usize::try_from(n)
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "{n} is out of range; use {} to {}",
                range.start(),
                range.end()
            )
        })
}

/// Parses a duration written as a string: a whole number and a unit, `ms`, `s`, `m` or `h`.
pub(crate) fn parse_duration(value: &Value) -> Result<Duration, String> {
    const HINT: &str = "write a whole number and a unit (ms, s, m or h) in quotes, like \"500ms\", \
                        \"10s\", \"2m\" or \"1h\"";
    let text = match value {
        Value::String(text) => text,
        other => {
            return Err(format!(
                "expected a string, found {}; {HINT}",
                other.type_str()
            ));
        }
    };
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(format!("{text:?} is not a duration; {HINT}"));
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(format!("{text:?} has no unit; {HINT}")),
        _ => return Err(format!("{text:?} has an unknown unit {unit:?}; {HINT}")),
    };
    let too_long = || format!("{text:?} is longer than the maximum of 24h");
    let millis = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .ok_or_else(too_long)?;
    let duration = Duration::from_millis(millis);
    if duration.is_zero() {
        return Err(format!(
            "{text:?} is zero; durations must be greater than zero"
        ));
    }
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
}

/// A `host:port` address as written in the config (not resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPort {
    /// DNS name or IP address, without the brackets of an IPv6 address.
    pub host: String,
    /// Port, 1 to 65535.
    pub port: u16,
}

/// Parses `host:port`, where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
/// `example` is shown in error messages (for instance `"hub.example.com:7700"`).
pub(crate) fn parse_host_port(text: &str, example: &str) -> Result<HostPort, String> {
    let hint = format!("write it as host:port, like {example:?}");
    if text.contains("://") {
        return Err(format!(
            "{text:?} has a URL scheme; {hint} without the scheme"
        ));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?} opens `[` without closing `]`; {hint}"))?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "{host:?} inside [..] is not an IPv6 address; {hint}"
            ));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{text:?} has no port after the IPv6 address; {hint}"))?;
        (host, port)
    } else {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} has no port; {hint}"))?;
        if host.contains(':') {
            return Err(format!(
                "{text:?}: an IPv6 address must be in brackets, like \"[::1]:{port}\""
            ));
        }
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
        if host.is_empty() || !host.chars().all(valid_char) {
            return Err(format!(
                "{text:?} does not start with a valid host name; {hint}"
            ));
        }
        (host, port)
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("{text:?} does not end with a port from 1 to 65535; {hint}"))?;
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// Whether `name` is a DNS name of letters, digits and hyphens in dot-separated labels.
pub(crate) fn is_hostname(name: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// Checks a name (of a service, tunnel key or proxy): 1 to 64 of `a-z`, `0-9`, `_`, `-`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(valid_char) {
        return Err(format!(
            "{name:?} is not a valid name; use 1 to {MAX_NAME_LEN} characters of a-z, 0-9, `_` \
             and `-`"
        ));
    }
    Ok(())
}

/// Checks a tunnel key's value: not empty, no surrounding whitespace, no control characters,
/// and at least `min_len` characters. Messages never include the value.
pub(crate) fn check_secret(key: &str, min_len: usize) -> Result<(), String> {
    const HINT: &str = "generate one with `tunnelize gen-key`";
    if key.is_empty() {
        return Err(format!("the key is empty; {HINT}"));
    }
    if key.trim() != key {
        return Err("the key starts or ends with whitespace; remove it".to_string());
    }
    if key.chars().any(char::is_control) {
        return Err(format!("the key contains control characters; {HINT}"));
    }
    if key.chars().count() < min_len {
        return Err(format!(
            "the key is shorter than {min_len} characters; {HINT}"
        ));
    }
    if key.starts_with(PLACEHOLDER) {
        return Err(
            "the key is still the placeholder of the shipped file; put the real key there \
             (the hub's operator makes one with `tunnelize gen-key`)"
                .to_string(),
        );
    }
    Ok(())
}

/// How the example files' placeholder keys begin (`key = "REPLACE-with-..."`): a key that
/// begins so was never filled in.
const PLACEHOLDER: &str = "REPLACE-";

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::String(text.to_string())
    }

    #[test]
    fn durations_take_a_number_and_a_unit() {
        assert_eq!(parse_duration(&s("500ms")), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(&s("10s")), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration(&s("2m")), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(&s("1h")), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(&s("24h")), Ok(MAX_DURATION));
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        for (text, expect) in [
            ("10", "has no unit"),
            ("10 s", "unknown unit"),
            ("10d", "unknown unit"),
            ("s", "is not a duration"),
            ("-1s", "is not a duration"),
            ("", "is not a duration"),
            ("0s", "greater than zero"),
            ("25h", "maximum of 24h"),
            ("99999999999999999999ms", "maximum of 24h"),
            ("18446744073709551615h", "maximum of 24h"),
        ] {
            let err = parse_duration(&s(text)).unwrap_err();
            assert!(err.contains(expect), "{text:?}: {err}");
        }
        let err = parse_duration(&Value::Integer(10)).unwrap_err();
        assert!(err.contains("expected a string, found integer"), "{err}");
        assert!(err.contains("\"10s\""), "{err}");
    }

    #[test]
    fn port_ranges_accept_a_range_a_single_port_or_an_integer() {
        assert_eq!(parse_port_range(&s("0")), Ok(PortRange::OS_ASSIGNED));
        assert_eq!(
            parse_port_range(&Value::Integer(0)),
            Ok(PortRange::OS_ASSIGNED)
        );
        assert_eq!(
            parse_port_range(&s("20000-20100")),
            Ok(PortRange {
                start: 20000,
                end: 20100
            })
        );
        assert_eq!(
            parse_port_range(&s("2222")),
            Ok(PortRange {
                start: 2222,
                end: 2222
            })
        );
        assert_eq!(
            parse_port_range(&s("1 - 2")),
            Ok(PortRange { start: 1, end: 2 })
        );
        assert_eq!(
            parse_port_range(&Value::Integer(80)),
            Ok(PortRange { start: 80, end: 80 })
        );
    }

    #[test]
    fn bad_port_ranges_are_refused() {
        for (value, expect) in [
            (s("0-10"), "cannot start at port 0"),
            (s("0-5"), "\"0\" alone lets the operating system pick"),
            (s("10-5"), "starts after it ends"),
            (s("70000"), "not a port or port range"),
            (s("1-2-3"), "not a port or port range"),
            (s("ssh"), "not a port or port range"),
            (Value::Integer(70000), "not a port number"),
            (Value::Integer(-1), "not a port number"),
            (Value::Boolean(true), "expected a string, found boolean"),
        ] {
            let err = parse_port_range(&value).unwrap_err();
            assert!(err.contains(expect), "{value:?}: {err}");
        }
    }

    #[test]
    fn port_range_methods_agree() {
        let range = PortRange { start: 10, end: 12 };
        assert_eq!(range.len(), 3);
        assert!(!range.is_empty());
        assert_eq!(range.iter().collect::<Vec<_>>(), vec![10, 11, 12]);
        assert!(range.contains(10) && range.contains(12));
        assert!(!range.contains(9) && !range.contains(13));
        assert!(range.overlaps(&PortRange { start: 12, end: 20 }));
        assert!(!range.overlaps(&PortRange { start: 13, end: 20 }));
        assert_eq!(range.to_string(), "10-12");
        assert_eq!(PortRange { start: 7, end: 7 }.to_string(), "7");
        let full = PortRange {
            start: 1,
            end: u16::MAX,
        };
        assert_eq!(full.len(), 65535);
        let os = PortRange::OS_ASSIGNED;
        assert!(os.is_os_assigned() && !range.is_os_assigned());
        assert!(!os.overlaps(&os) && !os.overlaps(&full));
        let backwards = PortRange { start: 5, end: 4 };
        assert!(backwards.is_empty() && !backwards.overlaps(&full));
    }

    #[test]
    fn host_port_accepts_names_ipv4_and_bracketed_ipv6() {
        let hp = |host: &str, port| {
            Ok(HostPort {
                host: host.to_string(),
                port,
            })
        };
        assert_eq!(
            parse_host_port("hub.example.com:7700", "x"),
            hp("hub.example.com", 7700)
        );
        assert_eq!(parse_host_port("10.0.0.1:22", "x"), hp("10.0.0.1", 22));
        assert_eq!(parse_host_port("[::1]:7700", "x"), hp("::1", 7700));
        assert_eq!(parse_host_port("localhost:1", "x"), hp("localhost", 1));
    }

    #[test]
    fn bad_host_ports_say_what_is_wrong() {
        for (text, expect) in [
            ("hub.example.com", "has no port"),
            ("hub.example.com:", "port from 1 to 65535"),
            ("hub.example.com:0", "port from 1 to 65535"),
            ("hub.example.com:http", "port from 1 to 65535"),
            (":7700", "valid host name"),
            ("hub example.com:7700", "valid host name"),
            ("::1:7700", "must be in brackets"),
            ("[::1:7700", "without closing"),
            ("[nope]:7700", "not an IPv6 address"),
            ("[::1]7700", "no port after"),
            ("tls://hub.example.com:7700", "URL scheme"),
        ] {
            let err = parse_host_port(text, "hub.example.com:7700").unwrap_err();
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn hostnames_are_checked_label_by_label() {
        assert!(is_hostname("tunnel.example.com"));
        assert!(is_hostname("localhost"));
        assert!(!is_hostname("bad_name.example"));
        assert!(!is_hostname("-x.example"));
        assert!(!is_hostname("a..b"));
        assert!(!is_hostname(""));
    }

    #[test]
    fn counts_are_whole_numbers_within_their_range() {
        assert_eq!(count_in(1, 1..=16), Ok(1));
        assert_eq!(count_in(16, 1..=16), Ok(16));
        for bad in [0, 17, -1, i64::MIN] {
            assert_eq!(
                count_in(bad, 1..=16),
                Err(format!("{bad} is out of range; use 1 to 16"))
            );
        }
    }

    #[test]
    fn names_are_lowercase_ascii_words() {
        assert!(check_name("ssh").is_ok());
        assert!(check_name("web_2-a").is_ok());
        for bad in ["", "SSH", "a b", "a.b", "ü", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_must_be_long_and_clean_and_are_never_echoed() {
        assert!(check_secret("0123456789abcdef", MIN_HUB_KEY_LEN).is_ok());
        assert!(check_secret("short-key", 1).is_ok());
        let placeholder = check_secret("REPLACE-with-this-tunnel's-key-from-the-hub", 16);
        assert!(placeholder.unwrap_err().contains("placeholder"));
        for bad in [
            "",
            "short-key",
            " 0123456789abcdef",
            "0123456789abcdef\n",
            "0123456789abc\u{7}def",
        ] {
            let err = check_secret(bad, MIN_HUB_KEY_LEN).unwrap_err();
            if !bad.is_empty() {
                assert!(!err.contains(bad.trim()), "{err}");
            }
        }
    }
}
