//! `.dstack.yml` parsing: YAML text → JSON value → [`ApplyConfiguration`] (task, service,
//! dev-environment, fleet, volume or gateway), with dstack's validation and unknown keys
//! rejected, as `dstack apply` does.
//!
//! ```
//! use dstack_sdk::models::configurations::{ApplyConfiguration, RunConfiguration};
//! let conf = dstack_sdk::spec::configuration::parse_configuration(
//!     "type: task\ncommands: [python train.py]\nresources:\n  gpu: A100:80GB:2\n",
//! )
//! .unwrap();
//! let ApplyConfiguration::Run(RunConfiguration::Task(task)) = conf else { panic!() };
//! assert_eq!(task.common.resources.gpu.unwrap().count.min, Some(2));
//! ```

use serde_json::{Map, Number, Value};

use super::error::SpecError;
use super::fleets::fleet_configuration_from_value;
use super::gateways::gateway_configuration_from_value;
use super::lax::{Cx, FromValue, py_float_repr};

use super::run_configuration::{
    dev_environment_from_value, discriminator, service_from_value, task_from_value,
};
use super::volumes::volume_configuration_from_value;
use crate::models::configurations::{ApplyConfiguration, RunConfiguration};

/// The `type` values `dstack apply` accepts (`preset` is not supported here).
pub const CONFIGURATION_TYPES: &[&str] = &[
    "dev-environment",
    "task",
    "service",
    "fleet",
    "gateway",
    "volume",
];

/// Builds a JSON value straight from the YAML event stream, the way PyYAML's `safe_load`
/// treats mappings: a repeated key keeps its last value, `<<` merge keys are applied (explicit
/// keys win), non-string keys become strings, and tags are dropped.
struct YamlToJson;

fn key_string(k: Value) -> String {
    match k {
        Value::String(s) => s,
        Value::Number(n) => super::lax::number_to_py_str(&n),
        Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
        Value::Null => "None".to_string(),
        other => other.to_string(),
    }
}

fn float_value(f: f64) -> Value {
    // JSON has no inf/nan; keep them as Python would print them.
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(py_float_repr(f)))
}

impl<'de> serde::de::Visitor<'de> for YamlToJson {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(float_value(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(YamlToJson)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(x) = seq.next_element_seed(YamlSeed)? {
            items.push(x);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut merged: Vec<Map<String, Value>> = Vec::new();
        while let Some(k) = map.next_key_seed(YamlSeed)? {
            let v = map.next_value_seed(YamlSeed)?;
            if k == Value::String("<<".into()) {
                match v {
                    Value::Object(m) => merged.push(m),
                    Value::Array(items) => {
                        for item in items {
                            if let Value::Object(m) = item {
                                merged.push(m);
                            } else {
                                return Err(serde::de::Error::custom(
                                    "merge keys expect a mapping or a list of mappings",
                                ));
                            }
                        }
                    }
                    _ => {
                        return Err(serde::de::Error::custom(
                            "merge keys expect a mapping or a list of mappings",
                        ));
                    }
                }
                continue;
            }
            let key = key_string(k);
            // A repeated key keeps its first position and its last value, as in a Python dict.
            out.insert(key, v);
        }
        if merged.is_empty() {
            return Ok(Value::Object(out));
        }
        // Earlier merge sources win over later ones; explicit keys win over all of them.
        let mut result = Map::new();
        for m in merged {
            for (k, v) in m {
                if !result.contains_key(&k) {
                    result.insert(k, v);
                }
            }
        }
        for (k, v) in out {
            result.insert(k, v);
        }
        Ok(Value::Object(result))
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // A tagged value (`!tag value`): the tag is dropped.
        use serde::de::VariantAccess;
        let (_tag, variant): (serde::de::IgnoredAny, _) = data.variant()?;
        variant.newtype_variant_seed(YamlSeed)
    }
}

struct YamlSeed;

impl<'de> serde::de::DeserializeSeed<'de> for YamlSeed {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(YamlToJson)
    }
}

/// Parses YAML (or JSON) text into a JSON value with PyYAML's mapping semantics (see above).
pub fn parse_yaml(text: &str) -> Result<Value, SpecError> {
    use serde::de::DeserializeSeed;
    let de = serde_yaml::Deserializer::from_str(text);
    YamlSeed
        .deserialize(de)
        .map_err(|e| SpecError::Syntax(e.to_string()))
}

/// Parses a configuration value (already loaded from YAML/JSON), dispatching on `type`.
pub fn apply_configuration_from_value(v: &Value, cx: &Cx) -> Result<ApplyConfiguration, SpecError> {
    if !v.is_object() {
        return cx.fail("Input should be a configuration object (with a `type`)");
    }
    Ok(match discriminator(v, cx, CONFIGURATION_TYPES)? {
        "dev-environment" => ApplyConfiguration::Run(RunConfiguration::DevEnvironment(Box::new(
            dev_environment_from_value(v, cx)?,
        ))),
        "task" => {
            ApplyConfiguration::Run(RunConfiguration::Task(Box::new(task_from_value(v, cx)?)))
        }
        "service" => ApplyConfiguration::Run(RunConfiguration::Service(Box::new(
            service_from_value(v, cx)?,
        ))),
        "fleet" => ApplyConfiguration::Fleet(Box::new(fleet_configuration_from_value(v, cx)?)),
        "gateway" => {
            ApplyConfiguration::Gateway(Box::new(gateway_configuration_from_value(v, cx)?))
        }
        _ => ApplyConfiguration::Volume(Box::new(volume_configuration_from_value(v, cx)?)),
    })
}

impl FromValue for ApplyConfiguration {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        apply_configuration_from_value(v, cx)
    }
}

/// Parses a `.dstack.yml` text strictly (unknown keys are errors), as `dstack apply` does.
pub fn parse_configuration(text: &str) -> Result<ApplyConfiguration, SpecError> {
    let v = parse_yaml(text)?;
    apply_configuration_from_value(&v, &Cx::strict())
}

/// Parses a configuration value strictly (unknown keys are errors).
pub fn configuration_from_json(v: &Value) -> Result<ApplyConfiguration, SpecError> {
    apply_configuration_from_value(v, &Cx::strict())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::models::common::Range;

    #[test]
    fn parses_every_type() {
        for text in [
            "type: task\ncommands: [echo]\n",
            "type: service\nport: 8000\nimage: x\n",
            "type: dev-environment\nide: vscode\n",
            "type: fleet\nnodes: 2\n",
            "type: volume\nbackend: aws\nregion: us-east-1\nsize: 100GB\n",
            "type: gateway\nbackend: aws\nregion: us-east-1\n",
        ] {
            assert!(parse_configuration(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_configuration("type: task\ncommands: [a]\nresources:\n  gpu: A100:H100\n")
            .unwrap_err();
        assert_eq!(e.path().to_string(), "resources.gpu");
        let e = parse_configuration("type: task\ncommands: [a]\nfoo: 1\n").unwrap_err();
        assert_eq!(e.path().to_string(), "foo");
        assert!(parse_configuration("type: nope\n").is_err());
        assert!(parse_configuration("commands: [a]\n").is_err());
    }

    #[test]
    fn service_replica_groups_from_list() {
        let c = parse_configuration(
            "type: service\nport: 80\nreplicas:\n  - count: 2\n    commands: [a]\n",
        )
        .unwrap();
        let ApplyConfiguration::Run(RunConfiguration::Service(s)) = c else {
            panic!()
        };
        let groups = s.groups.unwrap();
        assert_eq!(groups[0].name.as_deref(), Some("0"));
        assert_eq!(groups[0].replicas, Range::exactly(2));
        assert!(s.replicas.is_none());
    }
}
