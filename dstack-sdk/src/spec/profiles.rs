//! Parsers of profile parameters (`ProfileParams`, `Profile`) and their parts: retry,
//! utilization policy, schedule, fleet and instance selectors, backend options.

use serde_json::Value;

use super::common::{entity_reference_from_value, parse_entity_reference, tags_from_value};
use super::cron::validate_cron;
use super::duration::{duration_from_value, idle_duration_from_value, off_duration_from_value};
use super::error::SpecError;
use super::lax::{Cx, FromValue, Obj, short};
use crate::models::common::BackendType;
use crate::models::profiles::{
    BackendProfileOptions, CreationPolicy, InstanceSelector, Profile, ProfileParams, ProfileRetry,
    Retry, RetryEvent, Schedule, SpotPolicy, StartupOrder, StopCriteria, UtilizationPolicy,
    VastAIOfferOrder,
};

impl FromValue for ProfileRetry {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "ProfileRetry")?;
        let on_events = o.opt("on_events", |v, cx| cx.list(v, RetryEvent::from_value))?;
        let duration = o.opt("duration", duration_from_value)?;
        o.finish()?;
        if on_events.as_ref().is_some_and(Vec::is_empty) {
            return cx.fail("`on_events` cannot be empty");
        }
        Ok(ProfileRetry {
            on_events,
            duration,
        })
    }
}

impl FromValue for Retry {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        match v {
            Value::Object(_) => ProfileRetry::from_value(v, cx).map(Retry::Policy),
            _ => cx.bool(v).map(Retry::Bool),
        }
    }
}

impl FromValue for UtilizationPolicy {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "UtilizationPolicy")?;
        let min_gpu_utilization = o.req("min_gpu_utilization", |v, cx| {
            let n = cx.int(v)?;
            if !(0..=100).contains(&n) {
                return cx.fail(format!("Input should be between 0 and 100, got {n}"));
            }
            Ok(n)
        })?;
        let time_window = o.req("time_window", |v, cx| {
            let d = duration_from_value(v, cx)?;
            if d < 300 {
                return cx.fail("Minimum time_window is 5m");
            }
            Ok(d)
        })?;
        o.finish()?;
        Ok(UtilizationPolicy {
            min_gpu_utilization,
            time_window,
        })
    }
}

impl FromValue for Schedule {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "Schedule")?;
        let cron = o.req("cron", |v, cx| {
            let crons = match v {
                Value::Array(_) => cx.string_list(v)?,
                _ => vec![cx.string(v)?],
            };
            if crons.is_empty() {
                return cx.fail("At least one cron expression must be specified");
            }
            for c in &crons {
                validate_cron(c).map_err(|e| cx.err(e))?;
            }
            Ok(crons)
        })?;
        o.finish()?;
        Ok(Schedule { cron })
    }
}

fn instance_selector_object(v: &Value, cx: &Cx) -> Result<InstanceSelector, SpecError> {
    let map = cx.map(v)?;
    let only = |keys: &[&str]| !cx.is_strict() || map.keys().all(|k| keys.contains(&k.as_str()));
    if map.contains_key("name") && only(&["name"]) {
        let mut o = cx.obj(v, "InstanceNameSelector")?;
        let name = o.req("name", |v, cx| cx.nonempty_string(v))?;
        o.finish()?;
        return Ok(InstanceSelector::Name { name });
    }
    if map.contains_key("hostname") && only(&["hostname"]) {
        let mut o = cx.obj(v, "InstanceHostnameSelector")?;
        let hostname = o.req("hostname", |v, cx| cx.nonempty_string(v))?;
        o.finish()?;
        return Ok(InstanceSelector::Hostname { hostname });
    }
    let mut o = cx.obj(v, "FleetInstanceSelector")?;
    let fleet = o.req("fleet", entity_reference_from_value)?;
    let instance = o.req("instance", |v, cx| {
        let n = cx.int(v)?;
        if n < 0 {
            return cx.fail("Input should be greater than or equal to 0");
        }
        Ok(n)
    })?;
    o.finish()?;
    Ok(InstanceSelector::FleetInstance { fleet, instance })
}

impl FromValue for InstanceSelector {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        match v {
            Value::String(s) => {
                if s.is_empty() {
                    return cx.fail("String should have at least 1 character");
                }
                Ok(InstanceSelector::Name { name: s.clone() })
            }
            Value::Object(_) => instance_selector_object(v, cx),
            _ => cx.fail(format!(
                "Input should be an instance selector, got {}",
                short(v)
            )),
        }
    }
}

impl FromValue for BackendProfileOptions {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "VastAIProfileOptions")?;
        o.literal("type", "vastai")?;
        let offer_order = o.opt("offer_order", VastAIOfferOrder::from_value)?;
        let min_reliability = o.opt("min_reliability", |v, cx| {
            let x = cx.float(v)?;
            if !(0.0..=1.0).contains(&x) {
                return cx.fail("Input should be between 0 and 1");
            }
            Ok(x)
        })?;
        let min_score = o.opt("min_score", |v, cx| {
            let n = cx.int(v)?;
            if n < 0 {
                return cx.fail("Input should be greater than or equal to 0");
            }
            Ok(n)
        })?;
        o.finish()?;
        Ok(BackendProfileOptions {
            type_: "vastai".into(),
            offer_order,
            min_reliability,
            min_score,
        })
    }
}

/// Parses `backend_options` (no two entries for the same backend).
pub fn backend_options_from_value(
    v: &Value,
    cx: &Cx,
) -> Result<Vec<BackendProfileOptions>, SpecError> {
    let opts = cx.list(v, BackendProfileOptions::from_value)?;
    let mut seen: Vec<&str> = Vec::new();
    for opt in &opts {
        if seen.contains(&opt.type_.as_str()) {
            return cx.fail(format!(
                "backend_options contains duplicate entry for backend '{}'",
                opt.type_
            ));
        }
        seen.push(&opt.type_);
    }
    Ok(opts)
}

/// Parses a `max_price` (> 0).
pub fn max_price_from_value(v: &Value, cx: &Cx) -> Result<f64, SpecError> {
    let x = cx.float(v)?;
    if x.is_nan() || x <= 0.0 {
        return cx.fail("Input should be greater than 0");
    }
    Ok(x)
}

/// Parses a `fleets` item: a fleet reference object or `name` / `project/name`.
fn fleet_reference_from_value(
    v: &Value,
    cx: &Cx,
) -> Result<crate::models::common::EntityReference, SpecError> {
    match v {
        Value::Object(_) => entity_reference_from_value(v, cx),
        _ => {
            let s = cx.string(v)?;
            parse_entity_reference(&s).map_err(|e| cx.err(e))
        }
    }
}

/// Reads the `ProfileParams` fields from an object reader (shared by profiles, run
/// configurations and fleet configurations).
pub fn read_profile_params(o: &mut Obj<'_>) -> Result<ProfileParams, SpecError> {
    let backends = o.opt("backends", |v, cx| cx.list(v, BackendType::from_value))?;
    let regions = o.opt("regions", |v, cx| cx.string_list(v))?;
    let availability_zones = o.opt("availability_zones", |v, cx| cx.string_list(v))?;
    let instance_types = o.opt("instance_types", |v, cx| cx.string_list(v))?;
    let reservation = o.opt("reservation", |v, cx| cx.string(v))?;
    let spot_policy = o.opt("spot_policy", SpotPolicy::from_value)?;
    let retry = o.opt("retry", Retry::from_value)?;
    let max_duration = o.any("max_duration", off_duration_from_value)?;
    let stop_duration = o.any("stop_duration", off_duration_from_value)?;
    let max_price = o.opt("max_price", max_price_from_value)?;
    let creation_policy = o.opt("creation_policy", CreationPolicy::from_value)?;
    let idle_duration = o.any("idle_duration", idle_duration_from_value)?;
    let utilization_policy = o.opt("utilization_policy", UtilizationPolicy::from_value)?;
    let startup_order = o.opt("startup_order", StartupOrder::from_value)?;
    let stop_criteria = o.opt("stop_criteria", StopCriteria::from_value)?;
    let schedule = o.opt("schedule", Schedule::from_value)?;
    let fleets = o.opt("fleets", |v, cx| cx.list(v, fleet_reference_from_value))?;
    let instances = o.opt("instances", |v, cx| {
        let items = cx.list(v, InstanceSelector::from_value)?;
        if items.is_empty() {
            return cx.fail("List should have at least 1 item after validation, not 0");
        }
        Ok(items)
    })?;
    let tags = o.opt("tags", tags_from_value)?;
    let backend_options = o.opt("backend_options", backend_options_from_value)?;
    Ok(ProfileParams {
        backends,
        regions,
        availability_zones,
        instance_types,
        reservation,
        spot_policy,
        retry,
        max_duration,
        stop_duration,
        max_price,
        creation_policy,
        idle_duration,
        utilization_policy,
        startup_order,
        stop_criteria,
        schedule,
        fleets,
        instances,
        tags,
        backend_options,
    })
}

impl FromValue for ProfileParams {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "ProfileParams")?;
        let params = read_profile_params(&mut o)?;
        o.finish()?;
        Ok(params)
    }
}

impl FromValue for Profile {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "Profile")?;
        let params = read_profile_params(&mut o)?;
        let name = o.or("name", String::new, |v, cx| cx.string(v))?;
        let default = o.or("default", || false, |v, cx| cx.bool(v))?;
        o.finish()?;
        Ok(Profile {
            params,
            name,
            default,
        })
    }
}
