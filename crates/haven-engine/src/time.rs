//! Instants given by users: RFC 3339 (`2026-11-22T14:00:00Z`), milliseconds since the
//! epoch, or relative to now (`-15m`, `-2h`, `-1d`, `-30s`).

use crate::{Error, Result};

/// The instants Haven accepts: years 0000 to 9999 (what RFC 3339 can write).
pub const MIN_INSTANT_MS: i64 = -62_167_219_200_000;
pub const MAX_INSTANT_MS: i64 = 253_402_300_799_999;

pub fn parse_instant(text: &str, now_ms: i64) -> Result<i64> {
    let ms = parse_unchecked(text, now_ms)?;
    if !(MIN_INSTANT_MS..=MAX_INSTANT_MS).contains(&ms) {
        return Err(Error::Input(format!(
            "{text:?} is out of range: instants go from 0000-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"
        )));
    }
    Ok(ms)
}

fn parse_unchecked(text: &str, now_ms: i64) -> Result<i64> {
    let t = text.trim();
    if let Some(rel) = t.strip_prefix('-') {
        let (num, unit) =
            rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len()));
        let n: i64 = num
            .parse()
            .map_err(|_| Error::Input(format!("{text:?}: expected a relative time like -15m")))?;
        let ms = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(Error::Input(format!(
                    "{text:?}: unit must be ms, s, m, h or d"
                )))
            }
        };
        return n
            .checked_mul(ms)
            .and_then(|d| now_ms.checked_sub(d))
            .ok_or_else(|| Error::Input(format!("{text:?} is out of range")));
    }
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp_millis())
        .map_err(|e| {
            Error::Input(format!(
                "{text:?} is not a time: use RFC 3339 (2026-11-22T14:00:00Z), epoch milliseconds, or -15m ({e})"
            ))
        })
}

/// Formats epoch milliseconds as RFC 3339 UTC.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A Postgres `timestamptz` in its text form (`2026-12-02 04:12:10.680285+00`, as
/// wal2json writes commit times) as epoch milliseconds.
pub fn parse_pg_timestamp_ms(text: &str) -> Option<i64> {
    let t = text.trim();
    // Postgres writes the offset as +HH, +HH:MM or +HH:MM:SS; chrono wants +HH:MM.
    let split = t.rfind(['+', '-']).filter(|&i| i > 10)?;
    let (at, offset) = t.split_at(split);
    let offset = match offset.len() {
        3 => format!("{offset}:00"),
        _ => offset.chars().take(6).collect(),
    };
    chrono::DateTime::parse_from_str(&format!("{at}{offset}"), "%Y-%m-%d %H:%M:%S%.f%:z")
        .ok()
        .map(|d| d.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_timestamps() {
        assert_eq!(
            parse_pg_timestamp_ms("2026-12-02 04:12:10.680285+00"),
            parse_instant("2026-12-02T04:12:10.680Z", 0).ok()
        );
        assert_eq!(
            parse_pg_timestamp_ms("2026-12-02 06:12:10+02"),
            parse_instant("2026-12-02T04:12:10Z", 0).ok()
        );
        assert_eq!(
            parse_pg_timestamp_ms("2026-12-02 01:42:10-02:30"),
            parse_instant("2026-12-02T04:12:10Z", 0).ok()
        );
        assert_eq!(parse_pg_timestamp_ms("yesterday"), None);
    }

    #[test]
    fn forms() {
        assert_eq!(parse_instant("-15m", 1_000_000).unwrap(), 100_000);
        assert_eq!(parse_instant("1234", 0).unwrap(), 1234);
        assert_eq!(parse_instant("1970-01-01T00:00:01Z", 0).unwrap(), 1000);
        assert!(parse_instant("yesterday", 0).is_err());
        assert!(parse_instant("-5y", 0).is_err());
        assert_eq!(format_ms(1000), "1970-01-01T00:00:01.000Z");
        assert!(parse_instant("9223372036854775807", 0).is_err());
        assert!(parse_instant("-9223372036854775807d", 0).is_err());
        assert!(parse_instant("-99999999999999d", 0).is_err());
        assert_eq!(
            parse_instant("9999-12-31T23:59:59.999Z", 0).unwrap(),
            MAX_INSTANT_MS
        );
    }
}
