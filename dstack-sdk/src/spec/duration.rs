//! Durations: `90`, `"90s"`, `"5m"`, `"2h"`, `"1d"`, `"1w"` (seconds), plus the "off-able"
//! forms of `max_duration`/`stop_duration` and the `-1`-means-off form of `idle_duration`.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::error::SpecError;
use super::lax::{Cx, FromValue, py_int, short};
use crate::models::common::{Duration, IDLE_DURATION_OFF, OffableDuration};

static DURATION_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^(\d+) *([smhdw])\n?$").ok());

/// Parses a duration string: an integer number of seconds or `<n>[smhdw]` (`"2h"`).
pub fn parse_duration(s: &str) -> Result<i64, String> {
    if let Some(n) = py_int(s) {
        return Ok(n);
    }
    let caps = DURATION_RE.as_ref().and_then(|re| re.captures(s));
    let Some(caps) = caps else {
        return Err(format!("Cannot parse the duration {s}"));
    };
    let amount: i64 = caps[1]
        .parse()
        .map_err(|_| format!("Cannot parse the duration {s}"))?;
    let unit = match &caps[2] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => 7 * 24 * 3600,
    };
    amount
        .checked_mul(unit)
        .ok_or_else(|| format!("Cannot parse the duration {s}"))
}

/// Parses a duration value: a number of seconds (floats truncated, as Python's `int()`) or a
/// string.
pub fn duration_from_value(v: &Value, cx: &Cx) -> Result<i64, SpecError> {
    match v {
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i);
            }
            match n.as_f64() {
                // Truncation toward zero, as Python's `int(float)`.
                #[allow(clippy::cast_possible_truncation)]
                Some(f) if f.is_finite() && f.abs() < 9.2e18 => Ok(f.trunc() as i64),
                _ => cx.fail(format!("Cannot parse the duration {n}")),
            }
        }
        Value::String(s) => parse_duration(s).map_err(|e| cx.err(e)),
        _ => cx.fail(format!("Cannot parse the duration {}", short(v))),
    }
}

impl FromValue for Duration {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        duration_from_value(v, cx).map(Duration)
    }
}

/// Parses an off-able duration (`max_duration`, `stop_duration`): `"off"`/`false` → off,
/// `true`/null → unset, otherwise a non-negative duration.
pub fn off_duration_from_value(v: &Value, cx: &Cx) -> Result<Option<OffableDuration>, SpecError> {
    match v {
        Value::String(s) if s == "off" => Ok(Some(OffableDuration::Off)),
        Value::Bool(false) => Ok(Some(OffableDuration::Off)),
        Value::Bool(true) | Value::Null => Ok(None),
        _ => {
            let d = duration_from_value(v, cx)?;
            if d < 0 {
                return cx.fail("Duration cannot be negative");
            }
            Ok(Some(OffableDuration::Seconds(d)))
        }
    }
}

impl FromValue for OffableDuration {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        off_duration_from_value(v, cx)?.ok_or_else(|| cx.err("Input should be a duration or 'off'"))
    }
}

/// Parses an idle duration (`idle_duration`, `auto_cleanup_duration`): `"off"`/`false`/`-1` →
/// `-1`, `true`/null → unset, otherwise a duration (negative values are kept).
pub fn idle_duration_from_value(v: &Value, cx: &Cx) -> Result<Option<i64>, SpecError> {
    match v {
        Value::String(s) if s == "off" => Ok(Some(IDLE_DURATION_OFF)),
        Value::Bool(false) => Ok(Some(IDLE_DURATION_OFF)),
        Value::Number(n) if n.as_f64() == Some(-1.0) => Ok(Some(IDLE_DURATION_OFF)),
        Value::Bool(true) | Value::Null => Ok(None),
        _ => duration_from_value(v, cx).map(Some),
    }
}

/// Parses a dev environment's `inactivity_duration`: like an off-able duration, but "off"
/// becomes unset.
pub fn inactivity_duration_from_value(v: &Value, cx: &Cx) -> Result<Option<i64>, SpecError> {
    Ok(match off_duration_from_value(v, cx)? {
        Some(OffableDuration::Seconds(n)) => Some(n),
        _ => None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("1 h").unwrap(), 3600);
        assert_eq!(parse_duration("2d").unwrap(), 172_800);
        assert_eq!(parse_duration("1w").unwrap(), 604_800);
        assert!(parse_duration("1.5h").is_err());
        assert!(parse_duration("5m ").is_err());
        let cx = Cx::strict();
        assert_eq!(duration_from_value(&json!(2.7), &cx).unwrap(), 2);
        assert_eq!(
            off_duration_from_value(&json!(false), &cx).unwrap(),
            Some(OffableDuration::Off)
        );
        assert_eq!(off_duration_from_value(&json!(true), &cx).unwrap(), None);
        assert!(off_duration_from_value(&json!(-5), &cx).is_err());
        assert_eq!(
            idle_duration_from_value(&json!("off"), &cx).unwrap(),
            Some(-1)
        );
        assert_eq!(idle_duration_from_value(&json!(-5), &cx).unwrap(), Some(-5));
        assert_eq!(
            inactivity_duration_from_value(&json!("off"), &cx).unwrap(),
            None
        );
    }
}
