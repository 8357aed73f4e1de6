//! Parser of gateway configurations (`type: gateway`).

use serde_json::Value;

use super::common::tags_from_value;
use super::error::SpecError;
use super::lax::{Cx, FromValue, short};
use crate::models::common::BackendType;
use crate::models::gateways::{
    GatewayCertificate, GatewayConfiguration, GatewayLoadBalancer, GatewayType,
};

fn tag(v: &Value, cx: &Cx, allowed: &[&'static str]) -> Result<&'static str, SpecError> {
    let map = cx.map(v)?;
    let Some(t) = map.get("type") else {
        return cx.fail("Unable to extract tag using discriminator 'type'");
    };
    cx.at("type").one_of(t, allowed)
}

impl FromValue for GatewayCertificate {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let kind = tag(v, cx, &["lets-encrypt", "acm", "gcp-cm"])?;
        let mut o = cx.obj(v, "GatewayCertificate")?;
        o.allow("type");
        let cert = match kind {
            "lets-encrypt" => GatewayCertificate::LetsEncrypt,
            "acm" => GatewayCertificate::Acm {
                arn: o.req("arn", |v, cx| cx.string(v))?,
            },
            _ => GatewayCertificate::GcpCm {
                name: o.req("name", |v, cx| cx.string(v))?,
            },
        };
        o.finish()?;
        Ok(cert)
    }
}

impl FromValue for GatewayLoadBalancer {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        tag(v, cx, &["alb"])?;
        let mut o = cx.obj(v, "GatewayLoadBalancer")?;
        o.allow("type");
        o.finish()?;
        Ok(GatewayLoadBalancer::Alb)
    }
}

/// Parses a gateway configuration.
pub fn gateway_configuration_from_value(
    v: &Value,
    cx: &Cx,
) -> Result<GatewayConfiguration, SpecError> {
    let mut o = cx.obj(v, "GatewayConfiguration")?;
    o.literal("type", "gateway")?;
    let name = o.opt("name", |v, cx| cx.string(v))?;
    let default = o.opt("default", |v, cx| cx.bool(v))?;
    let backend = o.req("backend", BackendType::from_value)?;
    let region = o.req("region", |v, cx| cx.string(v))?;
    let instance_type = o.opt("instance_type", |v, cx| cx.nonempty_string(v))?;
    let domain = o.opt("domain", |v, cx| cx.string(v))?;
    let public_ip = o.or("public_ip", || true, |v, cx| cx.bool(v))?;
    let load_balancer = o.opt("load_balancer", GatewayLoadBalancer::from_value)?;
    let certificate = o.or(
        "certificate",
        || Some(GatewayCertificate::LetsEncrypt),
        |v, cx| match v {
            Value::Null => Ok(None),
            _ => GatewayCertificate::from_value(v, cx).map(Some),
        },
    )?;
    let replicas = o.opt("replicas", |v, cx| {
        let n = cx.int(v)?;
        if n < 1 {
            return cx.fail(format!(
                "Input should be greater than or equal to 1, got {n}"
            ));
        }
        Ok(n)
    })?;
    let tags = o.opt("tags", tags_from_value)?;
    o.finish()?;
    Ok(GatewayConfiguration {
        type_: GatewayType::Gateway,
        name,
        default,
        backend,
        region,
        instance_type,
        domain,
        public_ip,
        load_balancer,
        certificate,
        replicas,
        tags,
    })
}

impl FromValue for GatewayConfiguration {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        if !v.is_object() {
            return cx.fail(format!(
                "Input should be a gateway configuration, got {}",
                short(v)
            ));
        }
        gateway_configuration_from_value(v, cx)
    }
}
