//! `gpus/list` (`dstack offer --group-by …`): the plan's offers (existing instances, then
//! backend offers) aggregated per GPU model, optionally by backend, region and count — the
//! rules of dstack 0.22's `services/gpus.py`, with null fields omitted from the response.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::engine::Engine;
use crate::engine::auth::Ctx;
use crate::models::offers::{InstanceAvailability, InstanceOfferWithAvailability};
use crate::models::runs::RunSpec;
use crate::{Error, ErrorKind};

use super::{parse_body, runs::job_specs};

/// Body of `gpus/list`.
#[derive(Debug, Deserialize, Serialize)]
struct ListGpusRequest {
    run_spec: RunSpec,
    #[serde(default)]
    group_by: Option<Vec<String>>,
    /// Accepted for compatibility; offers are not adjusted by requirements here.
    #[serde(default)]
    full_offers: bool,
    /// Accepted for compatibility; busy instances count as a whole.
    #[serde(default)]
    unallocated_resources: bool,
}

/// One GPU configuration of one backend (dstack's `BackendGpu`).
#[derive(Debug, Clone)]
struct BackendGpu {
    name: String,
    memory_mib: i64,
    vendor: String,
    availability: InstanceAvailability,
    spot: bool,
    count: i64,
    price: f64,
    region: String,
}

/// A backend's GPU configurations and regions (dstack's `BackendGpus`).
struct BackendGpus {
    backend: String,
    gpus: Vec<BackendGpu>,
    regions: Vec<String>,
}

/// dstack's `_process_offers_into_backend_gpus`: the first offer of each (GPU, count, spot,
/// region) per backend, backends in first-seen order.
fn backend_gpus(offers: &[InstanceOfferWithAvailability]) -> Vec<BackendGpus> {
    let mut order: Vec<String> = Vec::new();
    let mut data: HashMap<String, (Vec<BackendGpu>, BTreeSet<String>)> = HashMap::new();
    for offer in offers {
        let backend = offer.backend.as_str().to_string();
        let entry = data.entry(backend.clone()).or_insert_with(|| {
            order.push(backend.clone());
            (Vec::new(), BTreeSet::new())
        });
        entry.1.insert(offer.region.clone());
        let mut types: Vec<((String, i64, String), i64)> = Vec::new();
        for g in &offer.instance.resources.gpus {
            let key = (g.name.clone(), g.memory_mib, g.vendor.as_str().to_string());
            match types.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => types.push((key, 1)),
            }
        }
        for ((name, memory_mib, vendor), count) in types {
            let spot = offer.instance.resources.spot;
            let exists = entry.0.iter().any(|b| {
                b.name == name
                    && b.memory_mib == memory_mib
                    && b.vendor == vendor
                    && b.count == count
                    && b.spot == spot
                    && b.region == offer.region
            });
            if !exists {
                entry.0.push(BackendGpu {
                    name,
                    memory_mib,
                    vendor,
                    availability: offer.availability,
                    spot,
                    count,
                    price: offer.price,
                    region: offer.region.clone(),
                });
            }
        }
    }
    order
        .into_iter()
        .filter_map(|b| {
            let (mut gpus, regions) = data.remove(&b)?;
            gpus.sort_by(|x, y| {
                (
                    !x.availability.is_available(),
                    &x.vendor,
                    &x.name,
                    x.memory_mib,
                )
                    .cmp(&(
                        !y.availability.is_available(),
                        &y.vendor,
                        &y.name,
                        y.memory_mib,
                    ))
            });
            Some(BackendGpus {
                backend: b,
                gpus,
                regions: regions.into_iter().collect(),
            })
        })
        .collect()
}

/// A row of the response (dstack's `GpuGroup`).
#[derive(Debug, Clone)]
struct GpuGroup {
    name: String,
    memory_mib: i64,
    vendor: String,
    availability: Vec<InstanceAvailability>,
    spot: Vec<&'static str>,
    count: (i64, i64),
    price: (f64, f64),
    offer_price: (f64, f64),
    backends: Option<Vec<String>>,
    backend: Option<String>,
    regions: Option<Vec<String>>,
    region: Option<String>,
}

impl GpuGroup {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("memory_mib".into(), json!(self.memory_mib));
        m.insert("vendor".into(), json!(self.vendor));
        m.insert("availability".into(), json!(self.availability));
        m.insert("spot".into(), json!(self.spot));
        m.insert(
            "count".into(),
            json!({"min": self.count.0, "max": self.count.1}),
        );
        m.insert(
            "price".into(),
            json!({"min": self.price.0, "max": self.price.1}),
        );
        m.insert(
            "offer_price".into(),
            json!({"min": self.offer_price.0, "max": self.offer_price.1}),
        );
        if let Some(b) = &self.backends {
            m.insert("backends".into(), json!(b));
        }
        if let Some(b) = &self.backend {
            m.insert("backend".into(), json!(b));
        }
        if let Some(r) = &self.regions {
            m.insert("regions".into(), json!(r));
        }
        if let Some(r) = &self.region {
            m.insert("region".into(), json!(r));
        }
        Value::Object(m)
    }
}

/// dstack's `_get_gpus_grouped` (not reversed).
fn group_gpus(
    offers: &[InstanceOfferWithAvailability],
    by_backend: bool,
    by_region: bool,
    by_count: bool,
) -> Vec<GpuGroup> {
    type Key = (
        String,
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<i64>,
    );
    let mut order: Vec<Key> = Vec::new();
    let mut rows: HashMap<Key, GpuGroup> = HashMap::new();
    for b in backend_gpus(offers) {
        for g in &b.gpus {
            let key: Key = (
                g.name.clone(),
                g.memory_mib,
                g.vendor.clone(),
                by_backend.then(|| b.backend.clone()),
                (by_backend && by_region).then(|| g.region.clone()),
                by_count.then_some(g.count),
            );
            let per_gpu = g.price / g.count as f64;
            let spot = if g.spot { "spot" } else { "on-demand" };
            match rows.get_mut(&key) {
                None => {
                    order.push(key.clone());
                    rows.insert(
                        key,
                        GpuGroup {
                            name: g.name.clone(),
                            memory_mib: g.memory_mib,
                            vendor: g.vendor.clone(),
                            availability: vec![g.availability],
                            spot: vec![spot],
                            count: (g.count, g.count),
                            price: (per_gpu, per_gpu),
                            offer_price: (g.price, g.price),
                            backends: (!by_backend).then(|| vec![b.backend.clone()]),
                            backend: by_backend.then(|| b.backend.clone()),
                            regions: (by_backend && !by_region).then(|| b.regions.clone()),
                            region: (by_backend && by_region).then(|| g.region.clone()),
                        },
                    );
                }
                Some(row) => {
                    if !row.availability.contains(&g.availability) {
                        row.availability.push(g.availability);
                    }
                    if !row.spot.contains(&spot) {
                        row.spot.push(spot);
                    }
                    if let Some(bs) = row.backends.as_mut()
                        && !bs.contains(&b.backend)
                    {
                        bs.push(b.backend.clone());
                    }
                    row.count = (row.count.0.min(g.count), row.count.1.max(g.count));
                    row.price = (row.price.0.min(per_gpu), row.price.1.max(per_gpu));
                    row.offer_price = (
                        row.offer_price.0.min(g.price),
                        row.offer_price.1.max(g.price),
                    );
                }
            }
        }
    }
    let mut out: Vec<GpuGroup> = order.into_iter().filter_map(|k| rows.remove(&k)).collect();
    out.sort_by(|a, b| {
        let avail = |g: &GpuGroup| !g.availability.iter().any(|a| a.is_available());
        avail(a)
            .cmp(&avail(b))
            .then(a.price.0.total_cmp(&b.price.0))
            .then(a.price.1.total_cmp(&b.price.1))
            .then_with(|| a.backend.cmp(&b.backend))
            .then_with(|| a.region.cmp(&b.region))
            .then_with(|| {
                if by_count {
                    a.count.0.cmp(&b.count.0)
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .then_with(|| a.name.cmp(&b.name))
            .then(a.memory_mib.cmp(&b.memory_mib))
    });
    out
}

/// dstack's `_get_cpus_grouped` for CPU-only requests (`gpu: 0`).
fn group_cpus(
    offers: &[InstanceOfferWithAvailability],
    by_backend: bool,
    by_region: bool,
    by_count: bool,
) -> Vec<Value> {
    type Key = (Option<String>, Option<String>, Option<i64>);
    let mut order: Vec<Key> = Vec::new();
    let mut groups: HashMap<Key, Vec<&InstanceOfferWithAvailability>> = HashMap::new();
    for o in offers
        .iter()
        .filter(|o| o.instance.resources.gpus.is_empty())
    {
        let key = (
            by_backend.then(|| o.backend.as_str().to_string()),
            by_region.then(|| o.region.clone()),
            by_count.then_some(o.instance.resources.cpus),
        );
        groups
            .entry(key.clone())
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(o);
    }
    let mut rows: Vec<(bool, f64, f64, String, String, i64, Value)> = Vec::new();
    for key in order {
        let Some(group) = groups.remove(&key) else {
            continue;
        };
        let r = |f: &dyn Fn(&InstanceOfferWithAvailability) -> i64| {
            let v: Vec<i64> = group.iter().map(|o| f(o)).collect();
            (
                v.iter().copied().min().unwrap_or(0),
                v.iter().copied().max().unwrap_or(0),
            )
        };
        let cpus = r(&|o| o.instance.resources.cpus);
        let mem = r(&|o| o.instance.resources.memory_mib);
        let pmin = group.iter().map(|o| o.price).fold(f64::INFINITY, f64::min);
        let pmax = group
            .iter()
            .map(|o| o.price)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut availability: Vec<InstanceAvailability> = Vec::new();
        for o in &group {
            if !availability.contains(&o.availability) {
                availability.push(o.availability);
            }
        }
        let archs: BTreeSet<String> = group
            .iter()
            .filter_map(|o| {
                o.instance
                    .resources
                    .cpu_arch
                    .map(|a| a.as_str().to_string())
            })
            .collect();
        let spots: BTreeSet<&str> = group
            .iter()
            .map(|o| {
                if o.instance.resources.spot {
                    "spot"
                } else {
                    "on-demand"
                }
            })
            .collect();
        let mut m = Map::new();
        m.insert("cpu_arch".into(), json!(archs));
        m.insert("count".into(), json!({"min": cpus.0, "max": cpus.1}));
        m.insert("memory_mib".into(), json!({"min": mem.0, "max": mem.1}));
        m.insert("price".into(), json!({"min": pmin, "max": pmax}));
        m.insert("availability".into(), json!(availability));
        m.insert("spot".into(), json!(spots));
        if let Some(b) = &key.0 {
            m.insert("backend".into(), json!(b));
        } else {
            let bs: BTreeSet<&str> = group.iter().map(|o| o.backend.as_str()).collect();
            m.insert("backends".into(), json!(bs));
        }
        if let Some(r) = &key.1 {
            m.insert("region".into(), json!(r));
        } else if key.0.is_some() {
            let rs: BTreeSet<&str> = group.iter().map(|o| o.region.as_str()).collect();
            m.insert("regions".into(), json!(rs));
        }
        let unavailable = !availability.iter().any(|a| a.is_available());
        rows.push((
            unavailable,
            pmin,
            pmax,
            key.0.unwrap_or_default(),
            key.1.unwrap_or_default(),
            cpus.0,
            Value::Object(m),
        ));
    }
    rows.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.total_cmp(&b.2))
            .then_with(|| a.3.cmp(&b.3))
            .then_with(|| a.4.cmp(&b.4))
            .then(a.5.cmp(&b.5))
    });
    rows.into_iter().map(|r| r.6).collect()
}

impl Engine {
    /// `POST /api/project/{project}/gpus/list`.
    pub(crate) async fn gpus_list(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Value> {
        let req: ListGpusRequest = parse_body(body)?;
        let project = ctx.project()?;
        let group_by: BTreeSet<String> = req.group_by.unwrap_or_default().into_iter().collect();
        for g in &group_by {
            if !matches!(g.as_str(), "backend" | "region" | "count") {
                return Err(Error::validation(
                    &["body", "group_by"],
                    "Input should be 'backend', 'region' or 'count'",
                ));
            }
        }
        let (by_backend, by_region, by_count) = (
            group_by.contains("backend"),
            group_by.contains("region"),
            group_by.contains("count"),
        );
        if by_region && !by_backend {
            return Err(Error::new(
                ErrorKind::Validation,
                "Cannot group by 'region' without also grouping by 'backend'",
            ));
        }
        let mut spec = req.run_spec;
        if spec.run_name.is_none() {
            spec.run_name = Some("dry-run".into());
        }
        let Some(job) = job_specs(&spec)?.into_iter().next() else {
            return Ok(json!({"gpus": []}));
        };
        let offers = self
            .job_plan_offers(&project.id, &spec, &job, true, usize::MAX, false)
            .await?
            .offers;
        let cpu_only = job
            .requirements
            .resources
            .gpu
            .as_ref()
            .is_some_and(|g| g.count.max == Some(0));
        if cpu_only {
            return Ok(json!({
                "gpus": [],
                "cpus": group_cpus(&offers, by_backend, by_region, by_count),
            }));
        }
        let gpus: Vec<Value> = group_gpus(&offers, by_backend, by_region, by_count)
            .iter()
            .map(GpuGroup::to_json)
            .collect();
        Ok(json!({ "gpus": gpus }))
    }
}
