//! Parsers of volume configurations (`type: volume`, discriminated by `backend`) and of run
//! configurations' mount points (`volumes:` items: `name:/path` or `/host/path:/path`).

use serde_json::Value;

use super::common::tags_from_value;
use super::duration::idle_duration_from_value;
use super::error::SpecError;
use super::lax::{Cx, FromValue, Obj, short};
use super::paths::{normalize_posix, posix_parts};
use super::shorthand::memory_from_value;
use crate::models::volumes::{
    InstanceMountPoint, KubernetesVolume, MountPoint, RunpodVolume, VolumeById, VolumeCommon,
    VolumeConfiguration, VolumeMountPoint, VolumeNames, VolumeWithZone,
};

/// The backends that support volumes, as `backend` values.
pub const VOLUME_BACKENDS: &[&str] = &["aws", "gcp", "runpod", "kubernetes", "daytona", "lium"];

fn read_common(o: &mut Obj<'_>) -> Result<VolumeCommon, SpecError> {
    o.literal("type", "volume")?;
    o.allow("backend");
    let name = o.opt("name", |v, cx| cx.string(v))?;
    let auto_cleanup_duration = o.any("auto_cleanup_duration", idle_duration_from_value)?;
    let tags = o.opt("tags", tags_from_value)?;
    Ok(VolumeCommon {
        name,
        auto_cleanup_duration,
        tags,
    })
}

fn size(o: &mut Obj<'_>) -> Result<Option<f64>, SpecError> {
    o.opt("size", |v, cx| memory_from_value(v, cx).map(|m| m.gb()))
}

fn opt_str(o: &mut Obj<'_>, key: &'static str) -> Result<Option<String>, SpecError> {
    o.opt(key, |v, cx| cx.string(v))
}

fn req_str(o: &mut Obj<'_>, key: &'static str) -> Result<String, SpecError> {
    o.req(key, |v, cx| cx.string(v))
}

/// Parses a volume configuration.
pub fn volume_configuration_from_value(
    v: &Value,
    cx: &Cx,
) -> Result<VolumeConfiguration, SpecError> {
    let map = cx.map(v)?;
    let Some(backend) = map.get("backend") else {
        return cx
            .at("backend")
            .fail("Unable to extract tag using discriminator 'backend'");
    };
    let backend = cx.at("backend").one_of(backend, VOLUME_BACKENDS)?;
    let mut o = cx.obj(v, "VolumeConfiguration")?;
    let common = read_common(&mut o)?;
    let conf = match backend {
        "aws" | "gcp" => {
            let size = size(&mut o)?;
            let volume_id = opt_str(&mut o, "volume_id")?;
            let region = req_str(&mut o, "region")?;
            let availability_zone = opt_str(&mut o, "availability_zone")?;
            let vol = VolumeWithZone {
                common,
                size,
                volume_id,
                region,
                availability_zone,
            };
            if backend == "aws" {
                VolumeConfiguration::Aws(vol)
            } else {
                VolumeConfiguration::Gcp(vol)
            }
        }
        "runpod" => {
            let size = size(&mut o)?;
            let volume_id = opt_str(&mut o, "volume_id")?;
            let region = req_str(&mut o, "region")?;
            // Accepted for older clients and dropped.
            let _ = opt_str(&mut o, "availability_zone")?;
            VolumeConfiguration::Runpod(RunpodVolume {
                common,
                size,
                volume_id,
                region,
            })
        }
        "kubernetes" => {
            let size = size(&mut o)?;
            let region = o.or("region", String::new, |v, cx| cx.string(v))?;
            let claim_name = opt_str(&mut o, "claim_name")?;
            let storage_class_name = opt_str(&mut o, "storage_class_name")?;
            let access_modes = o.or(
                "access_modes",
                || vec!["ReadWriteOnce".to_string()],
                |v, cx| cx.string_list(v),
            )?;
            let read_only = o.or("read_only", || false, |v, cx| cx.bool(v))?;
            VolumeConfiguration::Kubernetes(KubernetesVolume {
                common,
                size,
                region,
                claim_name,
                storage_class_name,
                access_modes,
                read_only,
            })
        }
        "daytona" | "lium" => {
            let volume_id = opt_str(&mut o, "volume_id")?;
            let vol = VolumeById { common, volume_id };
            if backend == "daytona" {
                VolumeConfiguration::Daytona(vol)
            } else {
                VolumeConfiguration::Lium(vol)
            }
        }
        other => return cx.fail(format!("unsupported volume backend {other}")),
    };
    o.finish()?;
    Ok(conf)
}

impl FromValue for VolumeConfiguration {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        volume_configuration_from_value(v, cx)
    }
}

/// Validates and normalises a mount point path: absolute, without `..`.
pub fn mount_point_path(path: &str, cx: &Cx) -> Result<String, SpecError> {
    if path.is_empty() {
        return cx.fail("empty path");
    }
    if !path.starts_with('/') {
        return cx.fail(format!("path must be absolute: {path}"));
    }
    if posix_parts(path).iter().any(|p| p == "..") {
        return cx.fail(format!(".. are not allowed: {path}"));
    }
    Ok(normalize_posix(path))
}

fn volume_mount_object(v: &Value, cx: &Cx) -> Result<VolumeMountPoint, SpecError> {
    let mut o = cx.obj(v, "VolumeMountPoint")?;
    let name = o.req("name", |v, cx| match v {
        Value::Array(_) => cx.string_list(v).map(VolumeNames::Any),
        _ => cx.string(v).map(VolumeNames::One),
    })?;
    let path = o.req("path", |v, cx| mount_point_path(&cx.string(v)?, cx))?;
    o.finish()?;
    Ok(VolumeMountPoint { name, path })
}

fn instance_mount_object(v: &Value, cx: &Cx) -> Result<InstanceMountPoint, SpecError> {
    let mut o = cx.obj(v, "InstanceMountPoint")?;
    let instance_path = o.req("instance_path", |v, cx| {
        mount_point_path(&cx.string(v)?, cx)
    })?;
    let path = o.req("path", |v, cx| mount_point_path(&cx.string(v)?, cx))?;
    let optional = o.or("optional", || false, |v, cx| cx.bool(v))?;
    o.finish()?;
    Ok(InstanceMountPoint {
        instance_path,
        path,
        optional,
    })
}

/// Parses a mount point shorthand: `name:/path` (a network volume) or `/host:/path` (an
/// instance directory, recognised by a `/` in the source).
pub fn parse_mount_point(s: &str, cx: &Cx) -> Result<MountPoint, SpecError> {
    let parts: Vec<&str> = s.split(':').collect();
    let [src, dest] = parts.as_slice() else {
        return cx.fail(format!("invalid mount point format: {s}"));
    };
    if src.contains('/') {
        Ok(MountPoint::Instance(InstanceMountPoint {
            instance_path: mount_point_path(src, &cx.at("instance_path"))?,
            path: mount_point_path(dest, &cx.at("path"))?,
            optional: false,
        }))
    } else {
        Ok(MountPoint::Volume(VolumeMountPoint {
            name: VolumeNames::One((*src).to_string()),
            path: mount_point_path(dest, &cx.at("path"))?,
        }))
    }
}

/// Parses a `volumes:` item of a run configuration.
pub fn mount_point_from_value(v: &Value, cx: &Cx) -> Result<MountPoint, SpecError> {
    match v {
        Value::String(s) => parse_mount_point(s, cx),
        Value::Object(m) => {
            let volume = volume_mount_object(v, cx);
            if volume.is_ok() || m.contains_key("name") && !m.contains_key("instance_path") {
                return volume.map(MountPoint::Volume);
            }
            instance_mount_object(v, cx).map(MountPoint::Instance)
        }
        _ => cx.fail(format!("Input should be a mount point, got {}", short(v))),
    }
}

impl FromValue for MountPoint {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        mount_point_from_value(v, cx)
    }
}

impl FromValue for VolumeMountPoint {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        match mount_point_from_value(v, cx)? {
            MountPoint::Volume(m) => Ok(m),
            MountPoint::Instance(_) => cx.fail("expected a volume mount point"),
        }
    }
}

impl FromValue for InstanceMountPoint {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        match mount_point_from_value(v, cx)? {
            MountPoint::Instance(m) => Ok(m),
            MountPoint::Volume(_) => cx.fail("expected an instance mount point"),
        }
    }
}
