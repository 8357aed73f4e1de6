//! Lax value coercion with pydantic v2's rules, and the object reader every parser uses.
//!
//! dstack validates its models with pydantic in lax mode, with `coerce_numbers_to_str` on. This
//! module reproduces the coercions that matter for user input (`"8"` → 8, `1` → `"1"`,
//! `"yes"` → true, …) so that our parsers accept exactly what dstack accepts.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use super::error::{FieldPath, SpecError};

/// Parsing context: where we are in the input and whether unknown keys are rejected.
///
/// dstack's models forbid unknown fields (`extra="forbid"`); `.dstack.yml` files are parsed
/// that way (`strict`). Request bodies and stored blobs are read leniently (unknown keys ignored),
/// as dstack does when it reads data written by another version.
#[derive(Debug, Clone)]
pub struct Cx {
    path: FieldPath,
    strict: bool,
}

impl Cx {
    /// A strict context at the root: unknown keys are errors.
    pub fn strict() -> Self {
        Self {
            path: FieldPath::root(),
            strict: true,
        }
    }

    /// A lenient context at the root: unknown keys are ignored.
    pub fn lenient() -> Self {
        Self {
            path: FieldPath::root(),
            strict: false,
        }
    }

    /// The context of a child field or list item.
    pub fn at(&self, key: impl std::fmt::Display) -> Self {
        Self {
            path: self.path.child(key),
            strict: self.strict,
        }
    }

    /// The same position with unknown keys ignored (dstack's `validate_extra_ignore`).
    pub fn ignoring_extra(&self) -> Self {
        Self {
            path: self.path.clone(),
            strict: false,
        }
    }

    /// Whether unknown keys are rejected.
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// The current field path.
    pub fn path(&self) -> &FieldPath {
        &self.path
    }

    /// An error at the current path.
    pub fn err(&self, message: impl Into<String>) -> SpecError {
        SpecError::invalid(&self.path, message)
    }

    /// An error at the current path, as a `Result`.
    pub fn fail<T>(&self, message: impl Into<String>) -> Result<T, SpecError> {
        Err(self.err(message))
    }

    /// pydantic's lax `int`: ints, integral floats, bools, and integer strings
    /// (`" 8 "`, `"1_000"`, `"2.0"`).
    pub fn int(&self, v: &Value) -> Result<i64, SpecError> {
        match v {
            Value::Bool(b) => Ok(i64::from(*b)),
            Value::Number(n) => number_to_int(n).ok_or_else(|| {
                self.err(format!("Input should be a valid integer, got {}", short(v)))
            }),
            Value::String(s) => pydantic_int_from_str(s).ok_or_else(|| {
                self.err(format!(
                    "Input should be a valid integer, unable to parse string as an integer: {s:?}"
                ))
            }),
            _ => self.fail(format!("Input should be a valid integer, got {}", short(v))),
        }
    }

    /// pydantic's lax `float`: numbers, bools and numeric strings (Python `float()` syntax).
    pub fn float(&self, v: &Value) -> Result<f64, SpecError> {
        match v {
            Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
            Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| self.err("Input should be a valid number")),
            Value::String(s) => py_float(s).ok_or_else(|| {
                self.err(format!(
                    "Input should be a valid number, unable to parse string as a number: {s:?}"
                ))
            }),
            _ => self.fail(format!("Input should be a valid number, got {}", short(v))),
        }
    }

    /// pydantic's lax `bool`: bools, 0/1, and `yes/no/on/off/true/false/y/n/t/f/1/0` strings.
    pub fn bool(&self, v: &Value) -> Result<bool, SpecError> {
        let bad = || self.err(format!("Input should be a valid boolean, got {}", short(v)));
        match v {
            Value::Bool(b) => Ok(*b),
            Value::Number(n) => match n.as_f64() {
                Some(0.0) => Ok(false),
                Some(1.0) => Ok(true),
                _ => Err(bad()),
            },
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "0" | "off" | "f" | "false" | "n" | "no" => Ok(false),
                "1" | "on" | "t" | "true" | "y" | "yes" => Ok(true),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    /// A `str` field with `coerce_numbers_to_str`: strings, and numbers as Python prints them.
    pub fn string(&self, v: &Value) -> Result<String, SpecError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(number_to_py_str(n)),
            _ => self.fail(format!("Input should be a valid string, got {}", short(v))),
        }
    }

    /// A string that must be non-empty after pydantic's checks (`min_length=1`).
    pub fn nonempty_string(&self, v: &Value) -> Result<String, SpecError> {
        let s = self.string(v)?;
        if s.is_empty() {
            return self.fail("String should have at least 1 character");
        }
        Ok(s)
    }

    /// A list whose items are parsed with `item` (each at its index in the path).
    pub fn list<T>(
        &self,
        v: &Value,
        mut item: impl FnMut(&Value, &Cx) -> Result<T, SpecError>,
    ) -> Result<Vec<T>, SpecError> {
        match v {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, x)| item(x, &self.at(i)))
                .collect(),
            _ => self.fail(format!("Input should be a valid list, got {}", short(v))),
        }
    }

    /// A list of strings (numbers coerced).
    pub fn string_list(&self, v: &Value) -> Result<Vec<String>, SpecError> {
        self.list(v, |x, cx| cx.string(x))
    }

    /// A `Dict[str, str]` (values coerced from numbers).
    pub fn string_map(&self, v: &Value) -> Result<indexmap::IndexMap<String, String>, SpecError> {
        let map = self.map(v)?;
        map.iter()
            .map(|(k, x)| Ok((k.clone(), self.at(k).string(x)?)))
            .collect()
    }

    /// The value as a JSON object.
    pub fn map<'v>(&self, v: &'v Value) -> Result<&'v Map<String, Value>, SpecError> {
        v.as_object().ok_or_else(|| {
            self.err(format!(
                "Input should be a valid dictionary, got {}",
                short(v)
            ))
        })
    }

    /// An object reader over `v` for a model named `model` (used in messages).
    pub fn obj<'v>(&self, v: &'v Value, model: &'static str) -> Result<Obj<'v>, SpecError> {
        match v {
            Value::Object(map) => Ok(Obj {
                map,
                cx: self.clone(),
                used: HashSet::new(),
            }),
            _ => self.fail(format!(
                "Input should be a valid dictionary or instance of {model}, got {}",
                short(v)
            )),
        }
    }

    /// A string-valued enum: `v` must be exactly one of `values` (after string coercion).
    pub fn one_of<'a>(&self, v: &Value, values: &[&'a str]) -> Result<&'a str, SpecError> {
        if let Value::String(s) = v
            && let Some(found) = values.iter().find(|x| **x == s)
        {
            return Ok(found);
        }
        let quoted: Vec<String> = values.iter().map(|x| format!("'{x}'")).collect();
        self.fail(format!(
            "Input should be {}, got {}",
            quoted.join(", "),
            short(v)
        ))
    }
}

/// Parses a model from a JSON value with dstack's rules (shorthands, lax coercion, validators).
pub trait FromValue: Sized {
    /// Parses `v`, reporting errors at `cx`'s path.
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError>;
}

/// Implements `serde::Deserialize` for types that implement [`FromValue`]: the input is read
/// as JSON and parsed leniently (unknown keys ignored).
macro_rules! deserialize_from_value {
    ($($t:ty),* $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
                <$t as $crate::spec::lax::FromValue>::from_value(
                    &v,
                    &$crate::spec::lax::Cx::lenient(),
                )
                .map_err(<D::Error as serde::de::Error>::custom)
            }
        }
    )*};
}
pub(crate) use deserialize_from_value;

/// Reads the fields of one model from a JSON object, remembering which keys were used so that
/// [`Obj::finish`] can reject unknown ones in strict mode.
#[derive(Debug)]
pub struct Obj<'v> {
    map: &'v Map<String, Value>,
    cx: Cx,
    used: HashSet<&'v str>,
}

impl<'v> Obj<'v> {
    /// The context of this object.
    pub fn cx(&self) -> &Cx {
        &self.cx
    }

    /// The raw value of `key`, if present (marks the key as known).
    pub fn raw(&mut self, key: &'static str) -> Option<&'v Value> {
        match self.map.get_key_value(key) {
            Some((k, v)) => {
                self.used.insert(k.as_str());
                Some(v)
            }
            None => None,
        }
    }

    /// Marks `key` as known without reading it.
    pub fn allow(&mut self, key: &'static str) {
        let _ = self.raw(key);
    }

    /// Whether `key` is present (even if null); does not mark it.
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Whether `key` is present and not null; does not mark it.
    pub fn has_value(&self, key: &str) -> bool {
        matches!(self.map.get(key), Some(v) if !v.is_null())
    }

    /// An `Optional[T] = None` field: absent or null gives `None`.
    pub fn opt<T>(
        &mut self,
        key: &'static str,
        f: impl FnOnce(&Value, &Cx) -> Result<T, SpecError>,
    ) -> Result<Option<T>, SpecError> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => f(v, &self.cx.at(key)).map(Some),
        }
    }

    /// A required field (`T` without a default): absent is an error; null goes to `f`
    /// (which normally rejects it).
    pub fn req<T>(
        &mut self,
        key: &'static str,
        f: impl FnOnce(&Value, &Cx) -> Result<T, SpecError>,
    ) -> Result<T, SpecError> {
        match self.raw(key) {
            None => Err(self.cx.at(key).err("Field required")),
            Some(v) => f(v, &self.cx.at(key)),
        }
    }

    /// A field with a default (`T = default`): absent gives the default; a present value,
    /// null included, goes to `f`.
    pub fn or<T>(
        &mut self,
        key: &'static str,
        default: impl FnOnce() -> T,
        f: impl FnOnce(&Value, &Cx) -> Result<T, SpecError>,
    ) -> Result<T, SpecError> {
        match self.raw(key) {
            None => Ok(default()),
            Some(v) => f(v, &self.cx.at(key)),
        }
    }

    /// A field whose validator handles every value itself, null included (absent is passed as
    /// null too): dstack's `BeforeValidator`s on optional durations.
    pub fn any<T>(
        &mut self,
        key: &'static str,
        f: impl FnOnce(&Value, &Cx) -> Result<T, SpecError>,
    ) -> Result<T, SpecError> {
        match self.raw(key) {
            None => f(&Value::Null, &self.cx.at(key)),
            Some(v) => f(v, &self.cx.at(key)),
        }
    }

    /// A `Literal[...]` discriminator field like `type: "fleet"` with a default.
    pub fn literal(&mut self, key: &'static str, expected: &'static str) -> Result<(), SpecError> {
        match self.raw(key) {
            None => Ok(()),
            Some(v) => self.cx.at(key).one_of(v, &[expected]).map(|_| ()),
        }
    }

    /// Finishes reading: in strict mode, any key that no field read is an error.
    pub fn finish(self) -> Result<(), SpecError> {
        if !self.cx.strict {
            return Ok(());
        }
        for key in self.map.keys() {
            if !self.used.contains(key.as_str()) {
                return Err(self.cx.at(key).err("Extra inputs are not permitted"));
            }
        }
        Ok(())
    }
}

/// A short description of a value for error messages.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn number_to_int(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if n.is_u64() {
        return None;
    }
    let f = n.as_f64()?;
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18 {
        // Integral and in range: the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        return Some(f as i64);
    }
    None
}

/// How Python prints a JSON number that was coerced to `str` (`1` → `"1"`, `1.5` → `"1.5"`,
/// `10.0` → `"10.0"`, `1e20` → `"1e+20"`).
pub fn number_to_py_str(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    n.as_f64()
        .map(py_float_repr)
        .unwrap_or_else(|| n.to_string())
}

/// Python's `repr(float)`: the shortest round-trip digits, fixed notation for exponents in
/// `-4..16`, otherwise scientific with a signed, at least two-digit exponent.
pub fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point >= n {
            format!("{}{}.0", digits, "0".repeat((point - n) as usize))
        } else {
            let (a, b) = digits.split_at(point as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}

static PY_INT_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[+-]?[0-9](?:_?[0-9])*$").ok());
static PYDANTIC_INT_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[+-]?[0-9](?:_?[0-9])*(?:\.0+)?$").ok());
static PY_FLOAT_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"^[+-]?(?:[0-9](?:_?[0-9])*(?:\.(?:[0-9](?:_?[0-9])*)?)?|\.[0-9](?:_?[0-9])*)(?:[eE][+-]?[0-9](?:_?[0-9])*)?$",
    )
    .ok()
});

fn matches(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|r| r.is_match(s))
}

/// Python's `int(str)` (base 10): surrounding whitespace, a sign, digits with single
/// underscores between them.
pub fn py_int(s: &str) -> Option<i64> {
    let t = s.trim();
    if !matches(&PY_INT_RE, t) {
        return None;
    }
    t.replace('_', "").parse().ok()
}

/// pydantic's int-from-string: like [`py_int`], plus a `.0…` fraction.
pub fn pydantic_int_from_str(s: &str) -> Option<i64> {
    let t = s.trim();
    if !matches(&PYDANTIC_INT_RE, t) {
        return None;
    }
    let t = t.split('.').next().unwrap_or(t);
    t.replace('_', "").parse().ok()
}

/// Python's `float(str)`: surrounding whitespace, underscores between digits, exponents,
/// `inf`/`infinity`/`nan` in any case.
pub fn py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t).to_ascii_lowercase();
    if matches!(unsigned.as_str(), "inf" | "infinity" | "nan") {
        let neg = t.starts_with('-');
        let x = if unsigned == "nan" {
            f64::NAN
        } else {
            f64::INFINITY
        };
        return Some(if neg { -x } else { x });
    }
    if !matches(&PY_FLOAT_RE, t) {
        return None;
    }
    t.replace('_', "").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        assert_eq!(py_float_repr(1.5), "1.5");
        assert_eq!(py_float_repr(10.0), "10.0");
        assert_eq!(py_float_repr(1e20), "1e+20");
        assert_eq!(py_float_repr(1e-7), "1e-07");
        assert_eq!(py_float_repr(0.0001), "0.0001");
        assert_eq!(py_float_repr(-0.0), "-0.0");
        assert_eq!(py_float_repr(123456789012345.0), "123456789012345.0");
        assert_eq!(py_float_repr(1.5e16), "1.5e+16");
        assert_eq!(py_float_repr(3.1), "3.1");
    }

    #[test]
    fn int_and_float_strings() {
        assert_eq!(pydantic_int_from_str(" 2 "), Some(2));
        assert_eq!(pydantic_int_from_str("1_000"), Some(1000));
        assert_eq!(pydantic_int_from_str("2.00"), Some(2));
        assert_eq!(pydantic_int_from_str("2.5"), None);
        assert_eq!(pydantic_int_from_str("2."), None);
        assert_eq!(py_int("2.0"), None);
        assert_eq!(py_float("1_000.5"), Some(1000.5));
        assert_eq!(py_float(".5"), Some(0.5));
        assert_eq!(py_float("5."), Some(5.0));
        assert_eq!(py_float("1e3"), Some(1000.0));
        assert_eq!(py_float("."), None);
        assert_eq!(py_float("1__0"), None);
        assert_eq!(py_float(""), None);
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn strict_objects_reject_unknown_keys() {
        let v = serde_json::json!({"a": 1, "b": 2});
        let cx = Cx::strict();
        let mut o = cx.obj(&v, "M").unwrap();
        assert_eq!(o.req("a", |v, cx| cx.int(v)).unwrap(), 1);
        assert!(o.finish().is_err());
        let cx = Cx::lenient();
        let mut o = cx.obj(&v, "M").unwrap();
        assert_eq!(o.req("a", |v, cx| cx.int(v)).unwrap(), 1);
        assert!(o.finish().is_ok());
    }
}
