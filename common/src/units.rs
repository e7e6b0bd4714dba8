//! Human-friendly sizes and durations for flags and environment variables.

use std::time::Duration;

/// Parses a byte size such as `1048576`, `8MiB`, `10GiB` or `1TiB` (binary and decimal
/// units, case-insensitive).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|e| format!("invalid size {s:?}: {e}"))
}

/// Parses a duration such as `2s`, `90m`, `24h` or `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses a rate such as `20MiB/s` (the `/s` is optional) into bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    match parse_size(t)? {
        0 => Err(format!("invalid rate {s:?}: must be above zero")),
        n => Ok(n),
    }
}

/// Formats a byte count with a binary unit, for messages.
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("-1").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_rate("20MiB/s").unwrap(), 20 << 20);
        assert!(parse_rate("0").is_err());
        assert_eq!(format_size(8 << 20), "8.0 MiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("soon").is_err());
    }
}
