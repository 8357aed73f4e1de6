//! `client.project(p).offers()`: what `dstack offer` shows — offers for a resource request
//! (`runs/get_plan` with `for_offers_only`) and GPU summaries (`gpus/list`).

use serde_json::{Value, json};

use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::runs::RunPlan;
use crate::routes::{PathParams, RouteId};

use super::{Client, ProjectHandle};

impl ProjectHandle {
    /// Offers across the project's fleets and backends.
    pub fn offers(&self) -> Offers {
        Offers {
            client: self.client.clone(),
            project: self.name.clone(),
        }
    }
}

/// Offers of a project. Obtain with [`ProjectHandle::offers`].
///
/// ```no_run
/// # async fn demo(client: dstack_sdk::client::Client) -> dstack_sdk::Result<()> {
/// let offers = client.project("main").offers();
/// let (cheapest, total) = offers
///     .list(serde_json::json!({"gpu": "A100:1..", "disk": "100GB.."}), 10)
///     .await?;
/// println!("{total} offers, cheapest ${:.2}/h", cheapest.first().map_or(0.0, |o| o.price));
/// let by_backend = offers
///     .gpus(serde_json::json!({"gpu": "1.."}), &["backend"])
///     .await?;
/// # let _ = by_backend; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Offers {
    client: Client,
    project: String,
}

/// The run spec `dstack offer` sends: a task that runs nothing, with `resources`.
fn offer_spec(resources: Value) -> Value {
    json!({
        "configuration": {
            "type": "task",
            "commands": [":"],
            "image": "scratch",
            "user": "root",
            "resources": resources,
        },
    })
}

impl Offers {
    /// The cheapest `max_offers` offers for `resources` (a `resources:` block as JSON, in
    /// dstack's shorthand or object form) and the total number that match.
    pub async fn list(
        &self,
        resources: Value,
        max_offers: u32,
    ) -> crate::Result<(Vec<InstanceOfferWithAvailability>, i64)> {
        let plan: RunPlan = self
            .client
            .call(
                RouteId::RunsGetPlan,
                &PathParams::project(&self.project),
                Some(&json!({
                    "run_spec": offer_spec(resources),
                    "max_offers": max_offers,
                    "for_offers_only": true,
                })),
            )
            .await?;
        let Some(jp) = plan.job_plans.into_iter().next() else {
            return Ok((Vec::new(), 0));
        };
        Ok((jp.offers, jp.total_offers))
    }

    /// GPU summaries for `resources`, grouped by any of `backend`, `region` and `count`
    /// (`region` needs `backend`): the raw `{"gpus": [...]}` (and `cpus` for `gpu: 0`).
    pub async fn gpus(&self, resources: Value, group_by: &[&str]) -> crate::Result<Value> {
        self.client
            .call(
                RouteId::GpusList,
                &PathParams::project(&self.project),
                Some(&json!({
                    "run_spec": offer_spec(resources),
                    "group_by": group_by,
                })),
            )
            .await
    }
}
