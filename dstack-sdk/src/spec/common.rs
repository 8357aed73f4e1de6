//! Parsers of the shared value types: environment variables, port mappings, entity
//! references, registry credentials and resource tags.

use std::sync::LazyLock;

use indexmap::IndexMap;
use regex::Regex;
use serde_json::Value;

use super::error::SpecError;
use super::lax::{Cx, FromValue, short};
use crate::models::common::{
    EntityReference, Env, EnvSentinel, EnvValue, PortMapping, RegistryAuth,
};

static ENV_ITEM_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^([a-zA-Z_][a-zA-Z0-9_]*)(=.*$|$)").ok());
static TAG_KEY_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[_\-a-zA-Z0-9]{1,60}\n?$").ok());
static TAG_VALUE_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9 .:/=_\-+@]{0,256}\n?$").ok());
static PORT_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^(?:(\d+|\*):)?(\d+)?\n?$").ok());
static SERVICE_PORT_STR_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[0-9]+:[0-9]+$").ok());

fn is_match(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|r| r.is_match(s))
}

/// Parses environment variables: a list of `KEY=VALUE` / `KEY` strings, or a mapping whose
/// values are strings (numbers coerced) or `{key}` sentinels.
pub fn env_from_value(v: &Value, cx: &Cx) -> Result<Env, SpecError> {
    match v {
        Value::Array(items) => {
            let mut env = IndexMap::new();
            for (i, item) in items.iter().enumerate() {
                let icx = cx.at(i);
                let s = icx.string(item)?;
                if !is_match(&ENV_ITEM_RE, &s) {
                    return icx.fail(format!(
                        "String should match pattern '^([a-zA-Z_][a-zA-Z0-9_]*)(=.*$|$)': {s:?}"
                    ));
                }
                let (key, value) = match s.split_once('=') {
                    Some((k, val)) => (k.to_string(), EnvValue::Value(val.to_string())),
                    None => (
                        s.clone(),
                        EnvValue::Sentinel(EnvSentinel { key: s.clone() }),
                    ),
                };
                if env.contains_key(&key) {
                    return cx.fail(format!("Duplicate environment variable: {s}"));
                }
                env.insert(key, value);
            }
            Ok(Env(env))
        }
        Value::Object(map) => {
            let mut env = IndexMap::new();
            for (k, val) in map {
                let vcx = cx.at(k);
                let value = match val {
                    Value::String(_) | Value::Number(_) => EnvValue::Value(vcx.string(val)?),
                    Value::Object(_) => {
                        let mut o = vcx.obj(val, "EnvSentinel")?;
                        let key = o.req("key", |v, cx| cx.string(v))?;
                        o.finish()?;
                        EnvValue::Sentinel(EnvSentinel { key })
                    }
                    _ => {
                        return vcx.fail(format!(
                            "Input should be a valid string, got {}",
                            short(val)
                        ));
                    }
                };
                env.insert(k.clone(), value);
            }
            Ok(Env(env))
        }
        _ => cx.fail(format!(
            "Input should be a valid list or dictionary, got {}",
            short(v)
        )),
    }
}

impl FromValue for Env {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        env_from_value(v, cx)
    }
}

fn valid_port(n: i64, cx: &Cx) -> Result<u16, SpecError> {
    if n <= 0 {
        return cx.fail(format!("Input should be greater than 0, got {n}"));
    }
    u16::try_from(n).map_err(|_| {
        cx.err(format!(
            "Input should be less than or equal to 65535, got {n}"
        ))
    })
}

/// Parses a port mapping shorthand: `"8080"`, `"80:8080"`, `"*:8080"`.
pub fn parse_port_mapping(s: &str) -> Result<PortMapping, SpecError> {
    port_mapping_from_str(s, &Cx::strict())
}

fn port_mapping_from_str(s: &str, cx: &Cx) -> Result<PortMapping, SpecError> {
    let caps = PORT_RE.as_ref().and_then(|re| re.captures(s));
    let Some(caps) = caps else {
        return cx.fail(format!("Invalid port mapping: {s}"));
    };
    let Some(container) = caps.get(2) else {
        return cx.fail(format!("Invalid port mapping (no container port): {s}"));
    };
    let container: i64 = container
        .as_str()
        .parse()
        .map_err(|_| cx.err(format!("Invalid port mapping: {s}")))?;
    let container_port = valid_port(container, &cx.at("container_port"))?;
    let local_port = match caps.get(1).map(|m| m.as_str()) {
        None => Some(container_port),
        Some("*") => None,
        Some(local) => {
            let n: i64 = local
                .parse()
                .map_err(|_| cx.err(format!("Invalid port mapping: {s}")))?;
            Some(valid_port(n, &cx.at("local_port"))?)
        }
    };
    Ok(PortMapping {
        local_port,
        container_port,
    })
}

fn port_mapping_object(v: &Value, cx: &Cx) -> Result<PortMapping, SpecError> {
    let mut o = cx.obj(v, "PortMapping")?;
    let local_port = o.opt("local_port", |v, cx| valid_port(cx.int(v)?, cx))?;
    let container_port = o.req("container_port", |v, cx| valid_port(cx.int(v)?, cx))?;
    o.finish()?;
    Ok(PortMapping {
        local_port,
        container_port,
    })
}

/// Parses a `ports` item: an int (`8080` → `8080:8080`), a shorthand string, or an object.
pub fn port_mapping_from_value(v: &Value, cx: &Cx) -> Result<PortMapping, SpecError> {
    match v {
        Value::Bool(b) => {
            let p = valid_port(i64::from(*b), cx)?;
            Ok(PortMapping {
                local_port: Some(p),
                container_port: p,
            })
        }
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            let p = valid_port(cx.int(v)?, cx)?;
            let _ = n;
            Ok(PortMapping {
                local_port: Some(p),
                container_port: p,
            })
        }
        Value::String(s) => port_mapping_from_str(s, cx),
        _ => port_mapping_object(v, cx),
    }
}

impl FromValue for PortMapping {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        port_mapping_from_value(v, cx)
    }
}

/// Parses a service's `port`: an int (local port 80), `"local:container"`, or an object.
pub fn service_port_from_value(v: &Value, cx: &Cx) -> Result<PortMapping, SpecError> {
    match v {
        Value::String(s) if is_match(&SERVICE_PORT_STR_RE, s) => port_mapping_from_str(s, cx),
        Value::Object(_) => port_mapping_object(v, cx),
        Value::Array(_) | Value::Null => {
            cx.fail(format!("Input should be a valid port, got {}", short(v)))
        }
        _ => {
            let port = valid_port(cx.int(v)?, cx)?;
            Ok(PortMapping {
                local_port: Some(80),
                container_port: port,
            })
        }
    }
}

/// Parses an entity reference string: `name` or `project/name`.
pub fn parse_entity_reference(s: &str) -> Result<EntityReference, String> {
    let parts: Vec<&str> = s.split('/').collect();
    let bad = || {
        "Invalid entity reference. Only `<name>` or `<project>/<name>` formats are allowed"
            .to_string()
    };
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    match parts.as_slice() {
        [name] => Ok(EntityReference {
            project: None,
            name: (*name).to_string(),
        }),
        [project, name] => Ok(EntityReference {
            project: Some((*project).to_string()),
            name: (*name).to_string(),
        }),
        _ => Err(bad()),
    }
}

/// Parses an entity reference object `{project?, name}`.
pub fn entity_reference_object(v: &Value, cx: &Cx) -> Result<EntityReference, SpecError> {
    let mut o = cx.obj(v, "EntityReference")?;
    let project = o.opt("project", |v, cx| cx.string(v))?;
    let name = o.req("name", |v, cx| cx.string(v))?;
    o.finish()?;
    Ok(EntityReference { project, name })
}

/// Parses an entity reference: an object, or a string `name` / `project/name`.
pub fn entity_reference_from_value(v: &Value, cx: &Cx) -> Result<EntityReference, SpecError> {
    match v {
        Value::Object(_) => entity_reference_object(v, cx),
        _ => {
            let s = cx.string(v)?;
            parse_entity_reference(&s).map_err(|e| cx.err(e))
        }
    }
}

impl FromValue for EntityReference {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        entity_reference_from_value(v, cx)
    }
}

impl FromValue for RegistryAuth {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "RegistryAuth")?;
        let username = o.req("username", |v, cx| cx.string(v))?;
        let password = o.req("password", |v, cx| cx.string(v))?;
        o.finish()?;
        Ok(RegistryAuth { username, password })
    }
}

/// Parses resource tags: a mapping of string keys (`[_-a-zA-Z0-9]{1,60}`) to string values
/// (`[a-zA-Z0-9 .:/=_\-+@]{0,256}`).
pub fn tags_from_value(v: &Value, cx: &Cx) -> Result<IndexMap<String, String>, SpecError> {
    let map = cx.map(v)?;
    let mut tags = IndexMap::new();
    for (k, val) in map {
        let tcx = cx.at(k);
        if !is_match(&TAG_KEY_RE, k) {
            return tcx.fail(format!(
                "Invalid tag key {k}. The key must match regex '^[_\\-a-zA-Z0-9]{{1,60}}$'"
            ));
        }
        let Value::String(s) = val else {
            return tcx.fail(format!("Tag values must be strings, got {}", short(val)));
        };
        if !is_match(&TAG_VALUE_RE, s) {
            return tcx.fail(format!(
                "Invalid tag value {s}. The value must match regex '^[a-zA-Z0-9 .:/=_\\-+@]{{0,256}}$'"
            ));
        }
        tags.insert(k.clone(), s.clone());
    }
    Ok(tags)
}
