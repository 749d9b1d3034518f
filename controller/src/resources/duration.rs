//! Gateway API durations (GEP-2257): `1h`, `30s`, `250ms`, `1m30s`.

use std::time::Duration;

/// The schema pattern for a duration.
pub const DURATION_PATTERN: &str = "^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// Parses a GEP-2257 duration; `None` when it does not follow the format.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n * 3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n * 60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else {
            return None;
        };
        total += unit;
        rest = &rest[len..];
        parts += 1;
    }
    (parts <= 4).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_gep_2257() {
        assert_eq!(parse_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("1m1s1ms"),
            Some(Duration::from_millis(61_001))
        );
        for bad in [
            "",
            "15",
            "s",
            "1.5s",
            "-1s",
            "123456s",
            "1d",
            "1s1s1s1s1s",
            "1 s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn pattern_and_parser_agree() {
        let re = regex::Regex::new(DURATION_PATTERN).expect("pattern compiles");
        for s in [
            "15s",
            "250ms",
            "1h30m",
            "1m1s1ms",
            "15",
            "1d",
            "1s1s1s1s1s",
            "123456s",
        ] {
            assert_eq!(re.is_match(s), parse_duration(s).is_some(), "{s}");
        }
    }
}
