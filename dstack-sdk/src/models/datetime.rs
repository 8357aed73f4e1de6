//! dstack's datetime wire format, as a serde helper module.
//!
//! dstack (pydantic v2) writes aware UTC datetimes as ISO-8601 with a `Z` suffix and six
//! fractional digits, leaving the fraction out when it is zero:
//! `2024-01-02T03:04:05.123000Z`, `2024-01-02T03:04:05Z`.
//!
//! Parsing is lenient, like pydantic's: RFC 3339 with any offset (converted to UTC), a naive
//! datetime (taken as UTC), a space instead of `T`, or a Unix timestamp number (seconds, or
//! milliseconds when it is larger than 2·10¹⁰).
//!
//! Use it on fields with `#[serde(with = "crate::models::datetime")]`, and on optional fields
//! with `#[serde(with = "crate::models::datetime::option", default)]`.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use dstack_sdk::models::datetime;
//! let dt = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
//! assert_eq!(datetime::format(&dt), "2024-01-02T03:04:05Z");
//! assert_eq!(datetime::parse("2024-01-02T05:04:05+02:00").unwrap(), dt);
//! ```

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Timelike, Utc};
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

/// Formats `dt` the way dstack writes it: `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`.
pub fn format(dt: &DateTime<Utc>) -> String {
    // Sub-microsecond precision is not representable in dstack's (Python) datetimes.
    let micros = dt.nanosecond() % 1_000_000_000 / 1_000;
    let base = dt.to_rfc3339_opts(SecondsFormat::Secs, true);
    if micros == 0 {
        return base;
    }
    // `base` ends with `Z`; put the fraction before it.
    let stem = base.strip_suffix('Z').unwrap_or(&base);
    format!("{stem}.{micros:06}Z")
}

/// Parses a datetime as dstack accepts it (see the module docs) into UTC.
pub fn parse(s: &str) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    let with_t = t.replacen(' ', "T", 1);
    if let Ok(dt) = DateTime::parse_from_rfc3339(&with_t) {
        return Ok(dt.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(&with_t, fmt) {
            return Ok(Utc.from_utc_datetime(&naive));
        }
    }
    if let Ok(n) = t.parse::<i64>() {
        return from_timestamp_int(n);
    }
    if let Ok(n) = t.parse::<f64>() {
        return from_timestamp(n);
    }
    Err(format!(
        "invalid datetime {s:?}: expected ISO-8601, e.g. 2024-01-02T03:04:05Z"
    ))
}

/// Converts a Unix timestamp number (seconds, or milliseconds above 2·10¹⁰) into UTC.
fn from_timestamp(n: f64) -> Result<DateTime<Utc>, String> {
    let secs = if n.abs() > 2e10 { n / 1000.0 } else { n };
    let micros = (secs * 1e6).round();
    if !micros.is_finite() || micros.abs() > 9.2e18 {
        return Err(format!("timestamp {n} is out of range"));
    }
    DateTime::from_timestamp_micros(micros as i64)
        .ok_or_else(|| format!("timestamp {n} is out of range"))
}

/// The integer form of [`from_timestamp`], exact for milliseconds.
fn from_timestamp_int(n: i64) -> Result<DateTime<Utc>, String> {
    let r = if n.unsigned_abs() > 20_000_000_000 {
        DateTime::from_timestamp_millis(n)
    } else {
        DateTime::from_timestamp(n, 0)
    };
    r.ok_or_else(|| format!("timestamp {n} is out of range"))
}

/// Serializes a UTC datetime in dstack's format (use with `#[serde(with = ...)]`).
pub fn serialize<S: Serializer>(dt: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(dt))
}

/// Deserializes a datetime leniently (use with `#[serde(with = ...)]`).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_any(DtVisitor)
}

struct DtVisitor;

impl Visitor<'_> for DtVisitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an ISO-8601 datetime string or a Unix timestamp")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        from_timestamp_int(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        let v =
            i64::try_from(v).map_err(|_| E::custom(format!("timestamp {v} is out of range")))?;
        from_timestamp_int(v).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        from_timestamp(v).map_err(E::custom)
    }
}

/// The same helpers for `Option<DateTime<Utc>>` (`null` ↔ `None`).
pub mod option {
    use super::*;

    /// Serializes `Some(dt)` in dstack's format and `None` as `null`.
    pub fn serialize<S: Serializer>(
        dt: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match dt {
            Some(dt) => serializer.serialize_str(&format(dt)),
            None => serializer.serialize_none(),
        }
    }

    /// Deserializes `null` as `None` and anything else as [`super::deserialize`] does.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        deserializer.deserialize_option(OptVisitor)
    }

    struct OptVisitor;

    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<DateTime<Utc>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("null or a datetime")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_pydantic() {
        let dt = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(format(&dt), "2024-01-02T03:04:05Z");
        let dt = dt.with_nanosecond(123_000_000).unwrap();
        assert_eq!(format(&dt), "2024-01-02T03:04:05.123000Z");
        let dt = dt.with_nanosecond(1_000).unwrap();
        assert_eq!(format(&dt), "2024-01-02T03:04:05.000001Z");
    }

    #[test]
    fn parses_leniently() {
        let want = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        for s in [
            "2024-01-02T03:04:05Z",
            "2024-01-02T03:04:05+00:00",
            "2024-01-02T04:04:05+01:00",
            "2024-01-02T03:04:05",
            "2024-01-02 03:04:05",
            "1704164645",
        ] {
            assert_eq!(parse(s).unwrap(), want, "{s}");
        }
        assert!(parse("yesterday").is_err());
        let ms: DateTime<Utc> = serde_json::from_value::<Wrap>(serde_json::json!(
            {"t": 1704164645123u64}
        ))
        .unwrap()
        .t;
        assert_eq!(format(&ms), "2024-01-02T03:04:05.123000Z");
    }

    #[derive(serde::Deserialize, serde::Serialize)]
    struct Wrap {
        #[serde(with = "super")]
        t: DateTime<Utc>,
    }

    #[derive(serde::Deserialize, serde::Serialize)]
    struct WrapOpt {
        #[serde(with = "super::option", default)]
        t: Option<DateTime<Utc>>,
    }

    #[test]
    fn option_round_trip() {
        let v: WrapOpt = serde_json::from_str(r#"{"t": null}"#).unwrap();
        assert!(v.t.is_none());
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"t":null}"#);
        let v: WrapOpt = serde_json::from_str(r#"{}"#).unwrap();
        assert!(v.t.is_none());
        let v: WrapOpt = serde_json::from_str(r#"{"t":"2024-01-02T03:04:05.5Z"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"t":"2024-01-02T03:04:05.500000Z"}"#
        );
    }
}
