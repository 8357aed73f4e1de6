//! Parsers of run configurations (`task`, `service`, `dev-environment`) with every validator
//! dstack 0.22.5 applies to them.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::common::{entity_reference_object, parse_entity_reference};
use super::common::{env_from_value, port_mapping_from_value, service_port_from_value};
use super::duration::{duration_from_value, inactivity_duration_from_value};
use super::error::SpecError;
use super::lax::{Cx, FromValue, Obj, py_float_repr, short};
use super::paths::{is_windows_absolute, posix_parts};
use super::profiles::read_profile_params;
use super::shorthand::{range_from_value, resources_from_value};
use super::volumes::mount_point_from_value;
use crate::models::common::{Env, PortMapping, Range, RegistryAuth};
use crate::models::configurations::{
    DevEnvironmentConfiguration, DevEnvironmentType, FilePathMapping, HttpHeaderSpec, HttpMethod,
    HttpProbeType, Https, Ide, NodeGroup, ProbeConfig, PythonVersion, RateLimit, RateLimitKey,
    ReplicaGroup, ReplicaGroupRouterConfig, RepoExistsAction, RepoSpec, RouterType, RpsMetric,
    RunCommon, RunConfiguration, SERVICE_SCALING_WINDOWS, ScalingSpec, ServiceConfiguration,
    ServiceGateway, ServiceModel, ServiceType, TaskConfiguration, TaskType,
};
use crate::models::profiles::SpotPolicy;
use crate::models::resources::ResourcesSpec;

static GROUP_NAME_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9-]{0,39}\n?$").ok());
static WINDSURF_VERSION_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^.+@[a-f0-9]+\n?$").ok());
static RATE_LIMIT_PREFIX_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^/[^\s\\{}]*$").ok());
static HEADER_NAME_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9-_]+$").ok());

fn re_match(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|r| r.is_match(s))
}

const MAX_INT64: i64 = i64::MAX;

fn str_list(o: &mut Obj<'_>, key: &'static str) -> Result<Vec<String>, SpecError> {
    o.or(key, Vec::new, |v, cx| cx.string_list(v))
}

fn opt_str(o: &mut Obj<'_>, key: &'static str) -> Result<Option<String>, SpecError> {
    o.opt(key, |v, cx| cx.string(v))
}

fn opt_bool(o: &mut Obj<'_>, key: &'static str) -> Result<Option<bool>, SpecError> {
    o.opt(key, |v, cx| cx.bool(v))
}

fn ports(o: &mut Obj<'_>) -> Result<Vec<PortMapping>, SpecError> {
    o.or("ports", Vec::new, |v, cx| {
        cx.list(v, port_mapping_from_value)
    })
}

/// A Python version: `"3.12"`, or a YAML float such as `3.12` (with `3.1` read as 3.10).
fn python_version(v: &Value, cx: &Cx) -> Result<PythonVersion, SpecError> {
    let s = match v {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            let s = n.as_f64().map(py_float_repr).unwrap_or_default();
            if s == "3.1" { "3.10".to_string() } else { s }
        }
        Value::String(s) => s.clone(),
        _ => {
            return cx.fail(format!(
                "Input should be a Python version, got {}",
                short(v)
            ));
        }
    };
    PythonVersion::from_wire(&s)
        .ok_or_else(|| cx.err(format!("{s:?} is not a valid PythonVersion")))
}

fn read_python(
    o: &mut Obj<'_>,
    image_set: bool,
    msg: &'static str,
) -> Result<Option<PythonVersion>, SpecError> {
    o.opt("python", |v, cx| {
        if image_set {
            return cx.fail(msg);
        }
        python_version(v, cx)
    })
}

/// dstack's `docker` validator: `docker: true` conflicts with `image`, `python`, `nvcc`.
fn read_docker(
    o: &mut Obj<'_>,
    conflicts: [(bool, &'static str); 3],
) -> Result<Option<bool>, SpecError> {
    o.opt("docker", |v, cx| {
        if matches!(v, Value::Bool(true)) {
            for (set, msg) in conflicts {
                if set {
                    return cx.fail(msg);
                }
            }
        }
        cx.bool(v)
    })
}

/// Validates a `user[:group]` string (Docker's `--user`).
pub fn validate_unix_user(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let err = |m: String| Err(format!("invalid user format: {m}"));
    if parts.len() > 2 {
        return err("too many parts".into());
    }
    let check = |p: &str, what: &str, id: &str| -> Result<(), String> {
        if p.is_empty() {
            return Err(format!("empty {what} name or id"));
        }
        if let Some(n) = super::lax::py_int(p)
            && n < 0
        {
            return Err(format!("negative {id} {n}"));
        }
        Ok(())
    };
    if let Err(m) = check(parts[0], "user", "uid") {
        return err(m);
    }
    if let Some(g) = parts.get(1)
        && let Err(m) = check(g, "group", "gid")
    {
        return err(m);
    }
    Ok(())
}

impl FromValue for RepoSpec {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let (local_path, url, branch, hash, path, if_exists) = match v {
            Value::String(s) => {
                let (local_path, url, path) = split_repo_shorthand(s, cx)?;
                (local_path, url, None, None, path, RepoExistsAction::Error)
            }
            _ => {
                let mut o = cx.obj(v, "RepoSpec")?;
                let local_path = opt_str(&mut o, "local_path")?;
                let url = opt_str(&mut o, "url")?;
                let branch = opt_str(&mut o, "branch")?;
                let hash = opt_str(&mut o, "hash")?;
                let path = o.or("path", || ".".to_string(), |v, cx| cx.string(v))?;
                let if_exists = o.or(
                    "if_exists",
                    || RepoExistsAction::Error,
                    RepoExistsAction::from_value,
                )?;
                o.finish()?;
                (local_path, url, branch, hash, path, if_exists)
            }
        };
        if path.starts_with('~') && posix_parts(&path).first().map(String::as_str) != Some("~") {
            return cx.at("path").fail("`~username` syntax is not supported");
        }
        let set = |x: &Option<String>| x.as_deref().is_some_and(|s| !s.is_empty());
        if set(&local_path) && set(&url) {
            return cx.fail("`local_path` and `url` are mutually exclusive");
        }
        if !set(&local_path) && !set(&url) {
            return cx.fail("Either `local_path` or `url` must be specified");
        }
        Ok(RepoSpec {
            local_path,
            url,
            branch,
            hash,
            path,
            if_exists,
        })
    }
}

type RepoParts = (Option<String>, Option<String>, String);

fn split_repo_shorthand(s: &str, cx: &Cx) -> Result<RepoParts, SpecError> {
    let mut parts: Vec<String> = s.split(':').map(str::to_string).collect();
    let mut is_url = false;
    if parts.len() > 1 {
        if parts[0].contains('@') || parts[1].starts_with("//") {
            let joined = format!("{}:{}", parts[0], parts[1]);
            parts.splice(0..2, [joined]);
            is_url = true;
        } else if parts[0].len() == 1
            && parts[0].chars().all(|c| c.is_ascii_alphabetic())
            && (parts[1].starts_with('\\') || parts[1].starts_with('/'))
        {
            let joined = format!("{}:{}", parts[0], parts[1]);
            parts.splice(0..2, [joined]);
        }
    }
    let (src, path) = match parts.as_slice() {
        [src] => (src.clone(), ".".to_string()),
        [src, path] => (src.clone(), path.clone()),
        _ => return cx.fail(format!("Invalid repo: {s}")),
    };
    Ok(if is_url {
        (None, Some(src), path)
    } else {
        (Some(src), None, path)
    })
}

impl FromValue for FilePathMapping {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let (local_path, path) = match v {
            Value::String(s) => {
                let mut parts: Vec<String> = s.split(':').map(str::to_string).collect();
                if parts.len() > 1
                    && parts[0].len() == 1
                    && parts[0].chars().all(|c| c.is_ascii_alphabetic())
                    && (parts[1].starts_with('\\') || parts[1].starts_with('/'))
                {
                    let joined = format!("{}:{}", parts[0], parts[1]);
                    parts.splice(0..2, [joined]);
                }
                match parts.as_slice() {
                    [p] => (p.clone(), p.clone()),
                    [l, p] => (l.clone(), p.clone()),
                    _ => return cx.fail(format!("invalid file path mapping: {s}")),
                }
            }
            _ => {
                let mut o = cx.obj(v, "FilePathMapping")?;
                let local_path = o.req("local_path", |v, cx| cx.string(v))?;
                let path = o.req("path", |v, cx| cx.string(v))?;
                o.finish()?;
                (local_path, path)
            }
        };
        if is_windows_absolute(&path) {
            return cx
                .at("path")
                .fail(format!("path must be a Unix file path: {path}"));
        }
        Ok(FilePathMapping { local_path, path })
    }
}

fn scaling_window(v: &Value, cx: &Cx) -> Result<i64, SpecError> {
    let w = duration_from_value(v, cx)?;
    if !SERVICE_SCALING_WINDOWS.contains(&w) {
        return cx.fail("Window must be one of: `30s`, `60s`, `300s`");
    }
    Ok(w)
}

impl FromValue for ScalingSpec {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "ScalingSpec")?;
        o.req("metric", |v, cx| cx.one_of(v, &["rps"]).map(|_| ()))?;
        let target = o.req("target", |v, cx| {
            let x = cx.float(v)?;
            if x.is_nan() || x <= 0.0 {
                return cx.fail("Input should be greater than 0");
            }
            Ok(x)
        })?;
        let window = o.opt("window", scaling_window)?;
        let scale_up_delay = o.or("scale_up_delay", || 300, duration_from_value)?;
        let scale_down_delay = o.or("scale_down_delay", || 600, duration_from_value)?;
        o.finish()?;
        Ok(ScalingSpec {
            metric: RpsMetric,
            target,
            window,
            scale_up_delay,
            scale_down_delay,
        })
    }
}

fn rate_limit_key(v: &Value, cx: &Cx) -> Result<RateLimitKey, SpecError> {
    let map = cx.map(v)?;
    let Some(t) = map.get("type") else {
        return cx.fail("Unable to extract tag using discriminator 'type'");
    };
    let kind = cx.at("type").one_of(t, &["ip_address", "header"])?;
    let mut o = cx.obj(v, "RateLimitKey")?;
    o.allow("type");
    let key = if kind == "ip_address" {
        RateLimitKey::IpAddress
    } else {
        let header = o.req("header", |v, cx| {
            let s = cx.string(v)?;
            if !re_match(&HEADER_NAME_RE, &s) || s.chars().count() > 500 {
                return cx.fail("Header name should match pattern '^[a-zA-Z0-9-_]+$'");
            }
            Ok(s)
        })?;
        RateLimitKey::Header { header }
    };
    o.finish()?;
    Ok(key)
}

impl FromValue for RateLimit {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "RateLimit")?;
        let prefix = o.or(
            "prefix",
            || "/".to_string(),
            |v, cx| {
                let s = cx.string(v)?;
                if s.chars().count() > 4094 || !re_match(&RATE_LIMIT_PREFIX_RE, &s) {
                    return cx.fail("String should match pattern '^/[^\\s\\\\{}]*$'");
                }
                Ok(s)
            },
        )?;
        let key = o.or("key", || RateLimitKey::IpAddress, rate_limit_key)?;
        let rps = o.req("rps", |v, cx| {
            let x = cx.float(v)?;
            if !(x >= 1.0 / 60.0 && x <= (MAX_INT64 / 60) as f64) {
                return cx.fail("rps is out of range");
            }
            Ok(x)
        })?;
        let burst = o.or(
            "burst",
            || 0,
            |v, cx| {
                let n = cx.int(v)?;
                if n < 0 {
                    return cx.fail("Input should be greater than or equal to 0");
                }
                Ok(n)
            },
        )?;
        o.finish()?;
        Ok(RateLimit {
            prefix,
            key,
            rps,
            burst,
        })
    }
}

fn bounded_string(v: &Value, cx: &Cx, min: usize, max: usize) -> Result<String, SpecError> {
    let s = cx.string(v)?;
    let n = s.chars().count();
    if n < min || n > max {
        return cx.fail(format!("String should have {min} to {max} characters"));
    }
    Ok(s)
}

fn is_printable(s: &str) -> bool {
    s.chars()
        .all(|c| c == ' ' || !(c.is_control() || c.is_whitespace()))
}

impl FromValue for ProbeConfig {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "ProbeConfig")?;
        o.req("type", |v, cx| cx.one_of(v, &["http"]).map(|_| ()))?;
        let url = o.opt("url", |v, cx| {
            let s = cx.string(v)?;
            if !s.starts_with('/') {
                return cx.fail("Must start with `/`");
            }
            if s.chars().count() > 2048 {
                return cx.fail("Cannot be longer than 2048 characters");
            }
            if !is_printable(&s) {
                return cx.fail("Cannot contain non-printable characters");
            }
            Ok(s)
        })?;
        let method = o.opt("method", HttpMethod::from_value)?;
        let headers = o.or("headers", Vec::new, |v, cx| {
            let items = cx.list(v, |v, cx| {
                let mut h = cx.obj(v, "HTTPHeaderSpec")?;
                let name = h.req("name", |v, cx| bounded_string(v, cx, 1, 256))?;
                let value = h.req("value", |v, cx| bounded_string(v, cx, 1, 2048))?;
                h.finish()?;
                Ok(HttpHeaderSpec { name, value })
            })?;
            if items.len() > 16 {
                return cx.fail("List should have at most 16 items");
            }
            Ok(items)
        })?;
        let body = o.opt("body", |v, cx| bounded_string(v, cx, 1, 2048))?;
        let timeout = o.opt("timeout", |v, cx| {
            let d = duration_from_value(v, cx)?;
            if d < 1 {
                return cx.fail("Probe timeout cannot be shorter than 1s");
            }
            Ok(d)
        })?;
        let interval = o.opt("interval", |v, cx| {
            let d = duration_from_value(v, cx)?;
            if d < 1 {
                return cx.fail("Probe interval cannot be shorter than 1s");
            }
            Ok(d)
        })?;
        let ready_after = o.opt("ready_after", |v, cx| {
            let n = cx.int(v)?;
            if n < 1 {
                return cx.fail("Input should be greater than or equal to 1");
            }
            Ok(n)
        })?;
        let until_ready = opt_bool(&mut o, "until_ready")?;
        o.finish()?;
        if body.is_some() && matches!(method, Some(HttpMethod::Get | HttpMethod::Head)) {
            return cx.fail(format!(
                "Cannot set request body for the `{}` method",
                method.map(HttpMethod::as_str).unwrap_or_default()
            ));
        }
        Ok(ProbeConfig {
            type_: HttpProbeType,
            url,
            method,
            headers,
            body,
            timeout,
            interval,
            ready_after,
            until_ready,
        })
    }
}

impl FromValue for ServiceModel {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        if let Value::String(s) = v {
            return Ok(ServiceModel::OpenAi {
                name: s.clone(),
                prefix: "/v1".into(),
            });
        }
        let map = cx.map(v)?;
        let Some(format) = map.get("format") else {
            return cx.fail("Unable to extract tag using discriminator 'format'");
        };
        let format = cx.at("format").one_of(format, &["tgi", "openai"])?;
        let mut o = cx.obj(v, "ChatModel")?;
        o.literal("type", "chat")?;
        o.allow("format");
        let name = o.req("name", |v, cx| cx.string(v))?;
        let model = if format == "tgi" {
            let chat_template = opt_str(&mut o, "chat_template")?;
            let eos_token = opt_str(&mut o, "eos_token")?;
            ServiceModel::Tgi {
                name,
                chat_template,
                eos_token,
            }
        } else {
            let prefix = o.or("prefix", || "/v1".to_string(), |v, cx| cx.string(v))?;
            ServiceModel::OpenAi { name, prefix }
        };
        o.finish()?;
        Ok(model)
    }
}

fn service_gateway(v: &Value, cx: &Cx) -> Result<ServiceGateway, SpecError> {
    if let Ok(b) = cx.bool(v) {
        return Ok(ServiceGateway::Bool(b));
    }
    if v.is_object() {
        return entity_reference_object(v, cx).map(ServiceGateway::Ref);
    }
    let s = cx.string(v)?;
    parse_entity_reference(&s)
        .map(ServiceGateway::Ref)
        .map_err(|e| cx.err(e))
}

fn https(v: &Value, cx: &Cx) -> Result<Https, SpecError> {
    match v {
        Value::Bool(b) => Ok(Https::Bool(*b)),
        Value::String(s) if s == "auto" => Ok(Https::Auto),
        _ => cx.bool(v).map(Https::Bool).map_err(|_| {
            cx.err(format!(
                "Input should be a boolean or 'auto', got {}",
                short(v)
            ))
        }),
    }
}

impl FromValue for ReplicaGroupRouterConfig {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "ReplicaGroupRouterConfig")?;
        let type_ = o.or(
            "type",
            || RouterType::Smg,
            |v, cx| match v {
                Value::String(s) if s == "sglang" => Ok(RouterType::Smg),
                _ => RouterType::from_value(v, cx),
            },
        )?;
        o.finish()?;
        Ok(ReplicaGroupRouterConfig { type_ })
    }
}

fn group_name(v: &Value, cx: &Cx, what: &str) -> Result<String, SpecError> {
    let s = cx.string(v)?;
    if !re_match(&GROUP_NAME_RE, &s) {
        return cx.fail(format!(
            "{what} name should match regex '^[a-z0-9][a-z0-9-]{{0,39}}$'"
        ));
    }
    Ok(s)
}

fn replica_range(v: &Value, cx: &Cx) -> Result<Range<i64>, SpecError> {
    let mut r: Range<i64> = range_from_value(v, cx)?;
    if r.max.is_none() {
        return cx.fail("The maximum number of replicas is required");
    }
    let min = *r.min.get_or_insert(0);
    if min < 0 {
        return cx.fail("The minimum number of replicas must be greater than or equal to 0");
    }
    Ok(r)
}

fn check_scaling(replicas: &Range<i64>, scaling: bool, cx: &Cx) -> Result<(), SpecError> {
    if replicas.min != replicas.max && !scaling {
        return cx.fail("When you set `replicas` to a range, ensure to specify `scaling`.");
    }
    if replicas.min == replicas.max && scaling {
        return cx.fail("To use `scaling`, `replicas` must be set to a range.");
    }
    Ok(())
}

impl FromValue for ReplicaGroup {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "ReplicaGroup")?;
        let name = o.opt("name", |v, cx| group_name(v, cx, "Resource"))?;
        let has_count = o.has("count");
        let replicas = if o.has("replicas") {
            o.allow("count");
            o.req("replicas", replica_range)?
        } else if has_count {
            o.req("count", replica_range)?
        } else {
            return cx.at("replicas").fail("Field required");
        };
        let scaling = o.opt("scaling", ScalingSpec::from_value)?;
        let resources = o.or("resources", ResourcesSpec::default, resources_from_value)?;
        let spot_policy = o.opt("spot_policy", SpotPolicy::from_value)?;
        let reservation = opt_str(&mut o, "reservation")?;
        let commands = str_list(&mut o, "commands")?;
        let image = opt_str(&mut o, "image")?;
        let image_set = image.as_deref().is_some_and(|s| !s.is_empty());
        let python = read_python(
            &mut o,
            image_set,
            "`image` and `python` are mutually exclusive within a replica group",
        )?;
        let nvcc = opt_bool(&mut o, "nvcc")?;
        let docker = read_docker(
            &mut o,
            [
                (
                    image_set,
                    "`image` and `docker` are mutually exclusive within a replica group",
                ),
                (
                    python.is_some(),
                    "`python` and `docker` are mutually exclusive within a replica group",
                ),
                (
                    nvcc == Some(true),
                    "`nvcc` and `docker` are mutually exclusive within a replica group",
                ),
            ],
        )?;
        let privileged = o.opt("privileged", |v, cx| {
            if matches!(v, Value::Bool(false)) && docker == Some(true) {
                return cx.fail(
                    "`privileged: false` is incompatible with `docker: true` within a replica \
                     group (docker-in-docker requires privileged mode)",
                );
            }
            cx.bool(v)
        })?;
        let router = o.opt("router", ReplicaGroupRouterConfig::from_value)?;
        o.finish()?;
        check_scaling(&replicas, scaling.is_some(), cx)?;
        Ok(ReplicaGroup {
            name,
            replicas,
            scaling,
            resources,
            spot_policy,
            reservation,
            commands,
            image,
            python,
            nvcc,
            docker,
            privileged,
            router,
        })
    }
}

impl FromValue for NodeGroup {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "NodeGroup")?;
        let name = o.opt("name", |v, cx| group_name(v, cx, "Node group"))?;
        let nodes = o.or(
            "nodes",
            || 1,
            |v, cx| {
                let n = cx.int(v)?;
                if n < 1 {
                    return cx.fail("Input should be greater than or equal to 1");
                }
                Ok(n)
            },
        )?;
        let resources = o.or("resources", ResourcesSpec::default, resources_from_value)?;
        let commands = str_list(&mut o, "commands")?;
        let ports = ports(&mut o)?;
        o.finish()?;
        Ok(NodeGroup {
            name,
            nodes,
            resources,
            commands,
            ports,
        })
    }
}

/// Fills omitted group names with their index and rejects duplicates and empty lists.
fn name_groups<G>(
    groups: &mut [G],
    cx: &Cx,
    what: &str,
    name: impl Fn(&mut G) -> &mut Option<String>,
) -> Result<(), SpecError> {
    if groups.is_empty() {
        return cx.fail("`groups` cannot be an empty list");
    }
    let mut seen: Vec<String> = Vec::new();
    let mut duplicates: Vec<String> = Vec::new();
    for (i, g) in groups.iter_mut().enumerate() {
        let n = name(g).get_or_insert_with(|| i.to_string()).clone();
        if seen.contains(&n) {
            if !duplicates.contains(&n) {
                duplicates.push(n);
            }
        } else {
            seen.push(n);
        }
    }
    if !duplicates.is_empty() {
        return cx.fail(format!(
            "Duplicate {what} group names found: {duplicates:?}. Each {what} group must have a \
             unique name."
        ));
    }
    Ok(())
}

/// Reads the `BaseRunConfiguration` fields (everything but `type`).
fn read_run_common(o: &mut Obj<'_>) -> Result<RunCommon, SpecError> {
    let name = opt_str(o, "name")?;
    let image = opt_str(o, "image")?;
    let image_set = image.as_deref().is_some_and(|s| !s.is_empty());
    let user = o.opt("user", |v, cx| {
        let s = cx.string(v)?;
        validate_unix_user(&s).map_err(|e| cx.err(e))?;
        Ok(s)
    })?;
    let privileged = o.or("privileged", || false, |v, cx| cx.bool(v))?;
    let entrypoint = opt_str(o, "entrypoint")?;
    let working_dir = opt_str(o, "working_dir")?;
    let home_dir = o.or("home_dir", || "/root".to_string(), |v, cx| cx.string(v))?;
    let registry_auth = o.opt("registry_auth", RegistryAuth::from_value)?;
    let python = read_python(
        o,
        image_set,
        "`image` and `python` are mutually exclusive fields",
    )?;
    let nvcc = opt_bool(o, "nvcc")?;
    let single_branch = opt_bool(o, "single_branch")?;
    let env = o.or("env", Env::default, env_from_value)?;
    let shell = o.opt("shell", |v, cx| {
        let s = cx.string(v)?;
        if s == "sh" || s == "bash" || s.starts_with('/') {
            return Ok(s);
        }
        cx.fail("The value must be `sh`, `bash`, or an absolute path")
    })?;
    let resources = o.or("resources", ResourcesSpec::default, resources_from_value)?;
    let priority = o.opt("priority", |v, cx| {
        let n = cx.int(v)?;
        if !(0..=100).contains(&n) {
            return cx.fail(format!("Input should be between 0 and 100, got {n}"));
        }
        Ok(n)
    })?;
    let volumes = o.or("volumes", Vec::new, |v, cx| {
        cx.list(v, mount_point_from_value)
    })?;
    let docker = read_docker(
        o,
        [
            (
                image_set,
                "`image` and `docker` are mutually exclusive fields",
            ),
            (
                python.is_some(),
                "`python` and `docker` are mutually exclusive fields",
            ),
            (
                nvcc == Some(true),
                "`nvcc` and `docker` are mutually exclusive fields",
            ),
        ],
    )?;
    let repos = o.or("repos", Vec::new, |v, cx| {
        let repos = cx.list(v, RepoSpec::from_value)?;
        if repos.len() > 1 {
            return cx.fail("A maximum of one repo is currently supported");
        }
        Ok(repos)
    })?;
    let files = o.or("files", Vec::new, |v, cx| {
        cx.list(v, FilePathMapping::from_value)
    })?;
    let dstack = o.or("dstack", || false, |v, cx| cx.bool(v))?;
    let setup = str_list(o, "setup")?;
    Ok(RunCommon {
        name,
        image,
        user,
        privileged,
        entrypoint,
        working_dir,
        home_dir,
        registry_auth,
        python,
        nvcc,
        single_branch,
        env,
        shell,
        resources,
        priority,
        volumes,
        docker,
        repos,
        files,
        dstack,
        setup,
    })
}

fn image_truthy(c: &RunCommon) -> bool {
    c.image.as_deref().is_some_and(|s| !s.is_empty())
}

/// Parses a dev environment configuration.
pub fn dev_environment_from_value(
    v: &Value,
    cx: &Cx,
) -> Result<DevEnvironmentConfiguration, SpecError> {
    let mut o = cx.obj(v, "DevEnvironmentConfiguration")?;
    o.literal("type", "dev-environment")?;
    let ide = o.opt("ide", Ide::from_value)?;
    let version = opt_str(&mut o, "version")?;
    let init = str_list(&mut o, "init")?;
    let inactivity_duration = o.any("inactivity_duration", inactivity_duration_from_value)?;
    let ports = ports(&mut o)?;
    let common = read_run_common(&mut o)?;
    let profile = read_profile_params(&mut o)?;
    o.finish()?;
    if common.entrypoint.is_some() {
        return cx
            .at("entrypoint")
            .fail("entrypoint is not supported for dev-environment");
    }
    if version.as_deref().is_some_and(|s| !s.is_empty()) && ide.is_none() {
        return cx.fail("`version` requires `ide` to be set");
    }
    if let (Some(Ide::Windsurf), Some(ver)) = (ide, version.as_deref())
        && !ver.is_empty()
        && !re_match(&WINDSURF_VERSION_RE, ver)
    {
        return cx.fail(format!(
            "Invalid Windsurf version format: `{ver}`. Expected format: `version@commit`"
        ));
    }
    if common.dstack && inactivity_duration.is_some() {
        return cx.fail("`dstack` is not supported together with `inactivity_duration`");
    }
    Ok(DevEnvironmentConfiguration {
        ide,
        version,
        init,
        inactivity_duration,
        ports,
        type_: DevEnvironmentType,
        common,
        profile,
    })
}

/// Parses a task configuration.
pub fn task_from_value(v: &Value, cx: &Cx) -> Result<TaskConfiguration, SpecError> {
    let mut o = cx.obj(v, "TaskConfiguration")?;
    if o.has_value("groups") && o.has_value("nodes") {
        return cx.fail("`nodes` and `groups` are mutually exclusive");
    }
    let nodes = o.opt("nodes", |v, cx| {
        let n = cx.int(v)?;
        if n < 1 {
            return cx.fail("Input should be greater than or equal to 1");
        }
        Ok(n)
    })?;
    let groups = o.opt("groups", |v, cx| {
        let mut groups = cx.list(v, NodeGroup::from_value)?;
        name_groups(&mut groups, cx, "node", |g| &mut g.name)?;
        Ok(groups)
    })?;
    let ports = ports(&mut o)?;
    let commands = str_list(&mut o, "commands")?;
    o.literal("type", "task")?;
    let common = read_run_common(&mut o)?;
    let profile = read_profile_params(&mut o)?;
    o.finish()?;
    if let Some(groups) = &groups {
        if !commands.is_empty() {
            return cx.fail(
                "Top-level `commands` is not allowed when `groups` is set. Specify `commands` in \
                 each node group instead.",
            );
        }
        if !ports.is_empty() {
            return cx.fail(
                "Top-level `ports` is not allowed when `groups` is set. Specify `ports` in each \
                 node group instead.",
            );
        }
        if common.entrypoint.is_some() {
            return cx.fail("Top-level `entrypoint` is not allowed when `groups` is set.");
        }
        for g in groups {
            if g.commands.is_empty() && common.image.is_none() {
                return cx.fail(format!(
                    "Node group '{}': either `commands` must be set in the group, or `image` at \
                     the task level.",
                    g.name.as_deref().unwrap_or_default()
                ));
            }
        }
    } else if commands.is_empty() && !image_truthy(&common) {
        return cx.fail("Either `commands` or `image` must be set");
    }
    Ok(TaskConfiguration {
        nodes,
        groups,
        ports,
        commands,
        type_: TaskType,
        common,
        profile,
    })
}

type GroupPredicate = dyn Fn(&ReplicaGroup) -> bool;

fn check_service_groups(
    groups: &[ReplicaGroup],
    c: &RunCommon,
    profile_spot: bool,
    profile_reservation: bool,
    cx: &Cx,
) -> Result<(), SpecError> {
    let names = |f: &dyn Fn(&ReplicaGroup) -> bool| -> Vec<String> {
        groups
            .iter()
            .filter(|g| f(g))
            .map(|g| g.name.clone().unwrap_or_default())
            .collect()
    };
    let mixed: [(&str, bool, &GroupPredicate); 7] = [
        ("image", c.image.is_some(), &|g| g.image.is_some()),
        ("docker", c.docker == Some(true), &|g| g.docker.is_some()),
        ("privileged", c.privileged, &|g| g.privileged.is_some()),
        ("python", c.python.is_some(), &|g| g.python.is_some()),
        ("nvcc", c.nvcc == Some(true), &|g| g.nvcc.is_some()),
        ("spot_policy", profile_spot, &|g| g.spot_policy.is_some()),
        ("reservation", profile_reservation, &|g| {
            g.reservation.is_some()
        }),
    ];
    for (field, service_set, group_set) in mixed {
        if service_set {
            let conflicting = names(group_set);
            if !conflicting.is_empty() {
                return cx.fail(format!(
                    "`{field}` is set at both the service level and in replica group(s) \
                     {conflicting:?}. Set `{field}` in one place only."
                ));
            }
        }
    }
    let forbidden: [(&str, bool, &str, &GroupPredicate); 10] = [
        ("image", c.image.is_some(), "docker", &|g| {
            g.docker.is_some()
        }),
        ("image", c.image.is_some(), "python", &|g| {
            g.python.is_some()
        }),
        ("image", c.image.is_some(), "nvcc", &|g| g.nvcc.is_some()),
        ("docker", c.docker == Some(true), "image", &|g| {
            g.image.is_some()
        }),
        ("docker", c.docker == Some(true), "python", &|g| {
            g.python.is_some()
        }),
        ("docker", c.docker == Some(true), "nvcc", &|g| {
            g.nvcc.is_some()
        }),
        ("python", c.python.is_some(), "image", &|g| {
            g.image.is_some()
        }),
        ("python", c.python.is_some(), "docker", &|g| {
            g.docker.is_some()
        }),
        ("nvcc", c.nvcc == Some(true), "image", &|g| {
            g.image.is_some()
        }),
        ("nvcc", c.nvcc == Some(true), "docker", &|g| {
            g.docker.is_some()
        }),
    ];
    for (s_field, s_set, g_field, g_pred) in forbidden {
        if s_set {
            let conflicting = names(g_pred);
            if !conflicting.is_empty() {
                return cx.fail(format!(
                    "Service-level `{s_field}` conflicts with group-level `{g_field}` in replica \
                     group(s) {conflicting:?}. These image-source fields are mutually exclusive."
                ));
            }
        }
    }
    for g in groups {
        if g.commands.is_empty() && g.image.is_none() && c.image.is_none() {
            return cx.fail(format!(
                "Replica group '{}': either `commands` or `image` must be set in the group, or \
                 `image` at the service level.",
                g.name.as_deref().unwrap_or_default()
            ));
        }
    }
    let routers: Vec<&ReplicaGroup> = groups.iter().filter(|g| g.router.is_some()).collect();
    if routers.len() > 1 {
        return cx.fail("At most one replica group may specify `router`.");
    }
    if let Some(g) = routers.first()
        && (g.replicas.min != Some(1) || g.replicas.max != Some(1))
    {
        return cx.fail("For now replica group with `router` must have `replicas: 1`.");
    }
    Ok(())
}

/// Parses a service configuration.
pub fn service_from_value(v: &Value, cx: &Cx) -> Result<ServiceConfiguration, SpecError> {
    let mut o = cx.obj(v, "ServiceConfiguration")?;
    // A list-valued `replicas` is the replica groups (when `groups` is not given).
    let legacy = !o.has_value("groups") && matches!(v.get("replicas"), Some(Value::Array(_)));
    if !legacy && o.has_value("groups") && o.has_value("replicas") {
        return cx.fail("`replicas` and `groups` are mutually exclusive");
    }
    let port = o.req("port", service_port_from_value)?;
    let gateway = o.opt("gateway", service_gateway)?;
    let strip_prefix = o.or("strip_prefix", || true, |v, cx| cx.bool(v))?;
    let model = o.opt("model", ServiceModel::from_value)?;
    let https = o.opt("https", https)?;
    let auth = o.or("auth", || true, |v, cx| cx.bool(v))?;
    let scaling = o.opt("scaling", ScalingSpec::from_value)?;
    let rate_limits = o.or("rate_limits", Vec::new, |v, cx| {
        let limits = cx.list(v, RateLimit::from_value)?;
        let mut seen: Vec<&str> = Vec::new();
        for l in &limits {
            if seen.contains(&l.prefix.as_str()) {
                return cx.fail(format!(
                    "Prefix {:?} is used more than once. Each rate limit should have a unique \
                     path prefix",
                    l.prefix
                ));
            }
            seen.push(&l.prefix);
        }
        Ok(limits)
    })?;
    let probes = o.opt("probes", |v, cx| {
        let probes = cx.list(v, ProbeConfig::from_value)?;
        for (i, p) in probes.iter().enumerate() {
            if probes[..i].contains(p) {
                return cx.fail("Probes must be unique");
            }
        }
        Ok(probes)
    })?;
    let parse_groups = |v: &Value, cx: &Cx| {
        let mut groups = cx.list(v, ReplicaGroup::from_value)?;
        name_groups(&mut groups, cx, "replica", |g| &mut g.name)?;
        Ok(groups)
    };
    let (replicas, groups) = if legacy {
        o.allow("groups");
        (None, o.opt("replicas", parse_groups)?)
    } else {
        (
            o.opt("replicas", replica_range)?,
            o.opt("groups", parse_groups)?,
        )
    };
    let commands = str_list(&mut o, "commands")?;
    o.literal("type", "service")?;
    let common = read_run_common(&mut o)?;
    let profile = read_profile_params(&mut o)?;
    o.finish()?;
    if let Some(r) = &replicas {
        check_scaling(r, scaling.is_some(), cx)?;
    }
    if let Some(groups) = &groups {
        if scaling.is_some() {
            return cx.fail(
                "Top-level `scaling` is not allowed when `groups` is set. Specify `scaling` in \
                 each replica group instead.",
            );
        }
        if !commands.is_empty() {
            return cx.fail(
                "Top-level `commands` is not allowed when `groups` is set. Specify `commands` in \
                 each replica group instead.",
            );
        }
        check_service_groups(
            groups,
            &common,
            profile.spot_policy.is_some(),
            profile.reservation.is_some(),
            cx,
        )?;
    } else if commands.is_empty() && !image_truthy(&common) {
        return cx.fail("Either `commands` or `image` must be set");
    }
    Ok(ServiceConfiguration {
        port,
        gateway,
        strip_prefix,
        model,
        https,
        auth,
        scaling,
        rate_limits,
        probes,
        replicas,
        groups,
        commands,
        type_: ServiceType,
        common,
        profile,
    })
}

impl FromValue for DevEnvironmentConfiguration {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        dev_environment_from_value(v, cx)
    }
}

impl FromValue for TaskConfiguration {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        task_from_value(v, cx)
    }
}

impl FromValue for ServiceConfiguration {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        service_from_value(v, cx)
    }
}

/// The value of a configuration's `type` discriminator, checked against `allowed`.
pub fn discriminator(
    v: &Value,
    cx: &Cx,
    allowed: &[&'static str],
) -> Result<&'static str, SpecError> {
    let map = cx.map(v)?;
    let Some(t) = map.get("type") else {
        return cx
            .at("type")
            .fail("Unable to extract tag using discriminator 'type'");
    };
    cx.at("type").one_of(t, allowed)
}

/// Parses a run configuration (discriminated by `type`).
pub fn run_configuration_from_value(v: &Value, cx: &Cx) -> Result<RunConfiguration, SpecError> {
    match discriminator(v, cx, &["dev-environment", "task", "service"])? {
        "dev-environment" => {
            dev_environment_from_value(v, cx).map(|c| RunConfiguration::DevEnvironment(Box::new(c)))
        }
        "task" => task_from_value(v, cx).map(|c| RunConfiguration::Task(Box::new(c))),
        _ => service_from_value(v, cx).map(|c| RunConfiguration::Service(Box::new(c))),
    }
}

impl FromValue for RunConfiguration {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        run_configuration_from_value(v, cx)
    }
}
