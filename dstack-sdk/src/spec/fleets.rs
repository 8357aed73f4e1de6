//! Parsers of fleet configurations (`type: fleet`), SSH fleet parameters and fleet specs.

use serde_json::{Map, Value};

use super::common::{env_from_value, tags_from_value};
use super::duration::idle_duration_from_value;
use super::error::SpecError;
use super::lax::{Cx, FromValue, short};
use super::net::{check_private_ip, check_private_network};
use super::profiles::{backend_options_from_value, max_price_from_value};
use super::shorthand::resources_from_value;
use crate::models::common::{BackendType, Env};
use crate::models::fleets::{
    Blocks, FleetConfiguration, FleetNodesSpec, FleetSpec, FleetType, InstanceGroupPlacement,
    SSHHost, SSHHostParams, SSHParams, SSHProxyParams, SshKey,
};
use crate::models::profiles::{Profile, Retry, SpotPolicy};

/// Parses `blocks`: a number ≥ 1 or `"auto"`.
pub fn blocks_from_value(v: &Value, cx: &Cx) -> Result<Blocks, SpecError> {
    if let Value::String(s) = v
        && s == "auto"
    {
        return Ok(Blocks::Auto);
    }
    let n = cx.int(v).map_err(|_| {
        cx.err(format!(
            "Input should be 'auto' or an integer, got {}",
            short(v)
        ))
    })?;
    if n < 1 {
        return cx.fail(format!(
            "Input should be greater than or equal to 1, got {n}"
        ));
    }
    Ok(Blocks::Count(n))
}

impl FromValue for Blocks {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        blocks_from_value(v, cx)
    }
}

/// Parses a `{min, target, max}` nodes object.
pub fn fleet_nodes_object(v: &Value, cx: &Cx) -> Result<FleetNodesSpec, SpecError> {
    let map = cx.map(v)?;
    let mut values = map.clone();
    if values.get("min").is_none_or(Value::is_null) {
        values.insert("min".into(), Value::from(0));
    }
    if values.get("target").is_none_or(Value::is_null) {
        let min = values.get("min").cloned().unwrap_or(Value::from(0));
        values.insert("target".into(), min);
    }
    let v = Value::Object(values);
    let mut o = cx.obj(&v, "FleetNodesSpec")?;
    let min = o.req("min", |v, cx| {
        let n = cx.int(v)?;
        if n < 0 {
            return cx.fail("min cannot be negative");
        }
        Ok(n)
    })?;
    let target = o.req("target", |v, cx| cx.int(v))?;
    let max = o.opt("max", |v, cx| cx.int(v))?;
    o.finish()?;
    if target < min {
        return cx.fail("target must not be be less than min");
    }
    if let Some(max) = max {
        if max < min {
            return cx.fail("max must not be less than min");
        }
        if max < target {
            return cx.fail("max must not be less than target");
        }
    }
    Ok(FleetNodesSpec { min, target, max })
}

/// Parses a fleet's `nodes`: `N`, `"a..b"`, or `{min, target, max}`.
pub fn fleet_nodes_from_value(v: &Value, cx: &Cx) -> Result<FleetNodesSpec, SpecError> {
    let obj = |min: Value, max: Value| {
        let mut m = Map::new();
        m.insert("min".into(), min);
        m.insert("max".into(), max);
        Value::Object(m)
    };
    match v {
        Value::String(s) if s.contains("..") => {
            let compact = s.replace(' ', "");
            let parts: Vec<&str> = compact.split("..").collect();
            let [a, b] = parts.as_slice() else {
                return cx.fail(format!("Invalid nodes range: {s}"));
            };
            let side = |p: &str| {
                if p.is_empty() {
                    Value::Null
                } else {
                    Value::from(p)
                }
            };
            fleet_nodes_object(&obj(side(a), side(b)), cx)
        }
        Value::String(_) | Value::Bool(_) => fleet_nodes_object(&obj(v.clone(), v.clone()), cx),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            fleet_nodes_object(&obj(v.clone(), v.clone()), cx)
        }
        _ => fleet_nodes_object(v, cx),
    }
}

impl FromValue for FleetNodesSpec {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        if cx.is_strict() {
            fleet_nodes_object(v, cx)
        } else {
            fleet_nodes_from_value(v, cx)
        }
    }
}

impl FromValue for SshKey {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "SSHKey")?;
        let public = o.req("public", |v, cx| cx.string(v))?;
        let private = o.opt("private", |v, cx| cx.string(v))?;
        o.finish()?;
        Ok(SshKey { public, private })
    }
}

impl FromValue for SSHProxyParams {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "SSHProxyParams")?;
        let hostname = o.req("hostname", |v, cx| cx.string(v))?;
        let port = o.opt("port", |v, cx| cx.int(v))?;
        let user = o.req("user", |v, cx| cx.string(v))?;
        let identity_file = o.req("identity_file", |v, cx| cx.string(v))?;
        let ssh_key = o.opt("ssh_key", SshKey::from_value)?;
        o.finish()?;
        Ok(SSHProxyParams {
            hostname,
            port,
            user,
            identity_file,
            ssh_key,
        })
    }
}

impl FromValue for SSHHostParams {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "SSHHostParams")?;
        let hostname = o.req("hostname", |v, cx| cx.string(v))?;
        let port = o.opt("port", |v, cx| cx.int(v))?;
        let user = o.opt("user", |v, cx| cx.string(v))?;
        let identity_file = o.opt("identity_file", |v, cx| cx.string(v))?;
        let proxy_jump = o.opt("proxy_jump", SSHProxyParams::from_value)?;
        let internal_ip = o.opt("internal_ip", |v, cx| {
            let s = cx.string(v)?;
            check_private_ip(&s).map_err(|e| cx.err(e))?;
            Ok(s)
        })?;
        let ssh_key = o.opt("ssh_key", SshKey::from_value)?;
        let blocks = o.opt("blocks", blocks_from_value)?;
        o.finish()?;
        Ok(SSHHostParams {
            hostname,
            port,
            user,
            identity_file,
            proxy_jump,
            internal_ip,
            ssh_key,
            blocks,
        })
    }
}

impl FromValue for SSHHost {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        match v {
            Value::Object(_) => {
                SSHHostParams::from_value(v, cx).map(|p| SSHHost::Params(Box::new(p)))
            }
            _ => cx.string(v).map(SSHHost::Hostname),
        }
    }
}

impl FromValue for SSHParams {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "SSHParams")?;
        let user = o.opt("user", |v, cx| cx.string(v))?;
        let port = o.opt("port", |v, cx| cx.int(v))?;
        let identity_file = o.opt("identity_file", |v, cx| cx.string(v))?;
        let ssh_key = o.opt("ssh_key", SshKey::from_value)?;
        let proxy_jump = o.opt("proxy_jump", SSHProxyParams::from_value)?;
        let hosts = o.req("hosts", |v, cx| cx.list(v, SSHHost::from_value))?;
        let network = o.opt("network", |v, cx| {
            let s = cx.string(v)?;
            check_private_network(&s).map_err(|e| cx.err(e))?;
            Ok(s)
        })?;
        o.finish()?;
        Ok(SSHParams {
            user,
            port,
            identity_file,
            ssh_key,
            proxy_jump,
            hosts,
            network,
        })
    }
}

/// Parses a fleet configuration.
pub fn fleet_configuration_from_value(v: &Value, cx: &Cx) -> Result<FleetConfiguration, SpecError> {
    let mut o = cx.obj(v, "FleetConfiguration")?;
    o.literal("type", "fleet")?;
    let name = o.opt("name", |v, cx| cx.string(v))?;
    let placement = o.opt("placement", InstanceGroupPlacement::from_value)?;
    let blocks = o.or("blocks", Blocks::default, blocks_from_value)?;
    let nodes = o.opt("nodes", fleet_nodes_from_value)?;
    let reservation = o.opt("reservation", |v, cx| cx.string(v))?;
    let resources = o.opt("resources", resources_from_value)?;
    let backends = o.opt("backends", |v, cx| cx.list(v, BackendType::from_value))?;
    let regions = o.opt("regions", |v, cx| cx.string_list(v))?;
    let availability_zones = o.opt("availability_zones", |v, cx| cx.string_list(v))?;
    let instance_types = o.opt("instance_types", |v, cx| cx.string_list(v))?;
    let spot_policy = o.opt("spot_policy", SpotPolicy::from_value)?;
    let retry = o.opt("retry", Retry::from_value)?;
    let max_price = o.opt("max_price", max_price_from_value)?;
    let idle_duration = o.any("idle_duration", idle_duration_from_value)?;
    let tags = o.opt("tags", tags_from_value)?;
    let backend_options = o.opt("backend_options", backend_options_from_value)?;
    let ssh_config = o.opt("ssh_config", SSHParams::from_value)?;
    let env = o.or("env", Env::default, env_from_value)?;
    o.finish()?;
    Ok(FleetConfiguration {
        type_: FleetType,
        name,
        placement,
        blocks,
        nodes,
        reservation,
        resources,
        backends,
        regions,
        availability_zones,
        instance_types,
        spot_policy,
        retry,
        max_price,
        idle_duration,
        tags,
        backend_options,
        ssh_config,
        env,
    })
}

impl FromValue for FleetConfiguration {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        fleet_configuration_from_value(v, cx)
    }
}

impl FromValue for FleetSpec {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "FleetSpec")?;
        let configuration = o.req("configuration", fleet_configuration_from_value)?;
        let configuration_path = o.opt("configuration_path", |v, cx| cx.string(v))?;
        let profile = o.req("profile", Profile::from_value)?;
        let autocreated = o.or("autocreated", || false, |v, cx| cx.bool(v))?;
        // An input field that dstack recomputes from `profile` and `configuration`.
        let _ = o.opt("merged_profile", Profile::from_value)?;
        o.finish()?;
        Ok(FleetSpec {
            configuration,
            configuration_path,
            profile,
            autocreated,
        })
    }
}
