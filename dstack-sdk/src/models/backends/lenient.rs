//! Lenient scalar deserializers matching pydantic's lax mode as dstack configures it.
//!
//! dstack models set `coerce_numbers_to_str`, so a YAML number reaches a `str` field as its
//! text (`owner: 123456789012`). pydantic also reads `"true"`/`"yes"`/`1` as booleans and
//! `"32000"`/`32000.0` as integers. These helpers are used with `#[serde(deserialize_with)]`.

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// Python's `str()` of a float: `5.0`, `0.5`, `1e+16`.
fn python_float_str(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else if v.is_finite() && v.abs() >= 1e16 {
        let s = format!("{v:e}");
        // Rust writes `1e16`; Python writes `1e+16`.
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
            _ => s,
        }
    } else {
        format!("{v}")
    }
}

struct StrVisitor;

impl Visitor<'_> for StrVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(python_float_str(v))
    }
}

/// A string that also accepts numbers (as their text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LStr(pub String);

impl<'de> Deserialize<'de> for LStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrVisitor).map(LStr)
    }
}

/// `String`, accepting numbers.
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(StrVisitor)
}

/// `Option<String>`, accepting numbers.
pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<LStr>::deserialize(d)?.map(|s| s.0))
}

/// `Vec<String>`, accepting numbers as items.
pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<LStr>::deserialize(d)?
        .into_iter()
        .map(|s| s.0)
        .collect())
}

/// `Option<Vec<String>>`, accepting numbers as items.
pub fn opt_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Ok(Option::<Vec<LStr>>::deserialize(d)?.map(|v| v.into_iter().map(|s| s.0).collect()))
}

/// `Option<IndexMap<String, String>>`, accepting numbers as values.
pub fn opt_string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<IndexMap<String, String>>, D::Error> {
    Ok(Option::<IndexMap<String, LStr>>::deserialize(d)?
        .map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect()))
}

struct BoolVisitor;

impl Visitor<'_> for BoolVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a boolean")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::custom(format!("invalid boolean {v}"))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_i64(v as i64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        if v == 0.0 {
            Ok(false)
        } else if v == 1.0 {
            Ok(true)
        } else {
            Err(E::custom(format!("invalid boolean {v}")))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "t" | "y" | "1" => Ok(true),
            "false" | "no" | "off" | "f" | "n" | "0" => Ok(false),
            _ => Err(E::custom(format!("invalid boolean {v:?}"))),
        }
    }
}

/// A boolean that also accepts `"true"`, `"yes"`, `1`, … like pydantic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LBool(pub bool);

impl<'de> Deserialize<'de> for LBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BoolVisitor).map(LBool)
    }
}

/// `bool`, lenient.
pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(BoolVisitor)
}

/// `Option<bool>`, lenient.
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(Option::<LBool>::deserialize(d)?.map(|b| b.0))
}

struct IntVisitor;

impl Visitor<'_> for IntVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("integer {v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
            Ok(v as i64)
        } else {
            Err(E::custom(format!(
                "invalid integer {v}: it has a fractional part"
            )))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.trim()
            .parse::<i64>()
            .map_err(|_| E::custom(format!("invalid integer {v:?}")))
    }
}

/// An integer that also accepts `"32000"` and `32000.0`, like pydantic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LInt(pub i64);

impl<'de> Deserialize<'de> for LInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntVisitor).map(LInt)
    }
}

/// `Option<i64>`, lenient.
pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<LInt>::deserialize(d)?.map(|i| i.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize)]
    struct T {
        #[serde(deserialize_with = "string")]
        s: String,
        #[serde(default, deserialize_with = "opt_bool")]
        b: Option<bool>,
        #[serde(default, deserialize_with = "opt_int")]
        i: Option<i64>,
        #[serde(default, deserialize_with = "opt_string_list")]
        l: Option<Vec<String>>,
    }

    #[test]
    fn coerces_like_pydantic() {
        let t: T = serde_json::from_value(
            json!({"s": 123456789012u64, "b": "yes", "i": "32000", "l": [1, "a", 2.5]}),
        )
        .unwrap();
        assert_eq!(t.s, "123456789012");
        assert_eq!(t.b, Some(true));
        assert_eq!(t.i, Some(32000));
        assert_eq!(t.l.unwrap(), vec!["1", "a", "2.5"]);
        let t: T = serde_json::from_value(json!({"s": 5.0, "b": null, "i": 7.0})).unwrap();
        assert_eq!((t.s.as_str(), t.b, t.i), ("5.0", None, Some(7)));
        assert!(serde_json::from_value::<T>(json!({"s": true})).is_err());
        assert!(serde_json::from_value::<T>(json!({"s": "x", "b": "maybe"})).is_err());
        assert!(serde_json::from_value::<T>(json!({"s": "x", "i": 1.5})).is_err());
        assert_eq!(python_float_str(1e16), "1e+16");
    }
}
