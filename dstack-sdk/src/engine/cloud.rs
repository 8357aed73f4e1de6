//! Cloud fleets in the engine: a PENDING instance of a fleet without `ssh_config` is created
//! on the cheapest available offer of the project's backends (at most 25 offers tried); once
//! the VM has an address, the instance gets SSH connection info (the VM's default user with
//! the project key, which cloud-init authorised) and from then on it is deployed, checked and
//! reached exactly like an SSH-fleet host. Terminating instances are terminated in the cloud.
//!
//! Backends are built from their stored configs with [`crate::backends::for_config`] and
//! cached per project until the config changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use uuid::Uuid;

use crate::backends::common::provision;
use crate::backends::{self, BackendError, BackendSettings, Compute, InstanceConfiguration};
use crate::engine::Engine;
use crate::engine::placement_groups::FleetPlacement;
use crate::engine::services::instances::InstanceRow;
use crate::models::backends::AnyBackendConfigWithCreds;
use crate::models::fleets::FleetSpec;
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::profiles::Profile;
use crate::models::resources::Requirements;
use crate::{Error, ErrorKind};

/// (project id, backend type) → (the config it was built from, the backend).
type ComputeCache = HashMap<(String, String), (String, Arc<dyn Compute>)>;

/// Built backends, keyed by (project id, backend type), with the config they were built from.
#[derive(Default)]
pub(crate) struct Computes {
    cache: Mutex<ComputeCache>,
    /// Held while a backend is built, so that workers asking at once for a backend that is not
    /// cached yet share one object (and its lookup caches) instead of building one each.
    building: tokio::sync::Mutex<()>,
    settings: OnceLock<BackendSettings>,
}

/// Where dstack's provisioning errors point users.
const TROUBLESHOOTING_URL: &str =
    "https://dstack.ai/docs/guides/troubleshooting/#provisioning-fails";

/// What provisioning produced for one instance.
pub(crate) enum Provisioned {
    /// Created: the provisioning data and the offer it was created from.
    Created(Box<JobProvisioningData>, Box<InstanceOfferWithAvailability>),
    /// Nothing could be created; the message says why and what to do.
    Failed(String),
}

impl Engine {
    fn backend_settings(&self) -> BackendSettings {
        self.inner
            .computes
            .settings
            .get_or_init(|| BackendSettings::new(self.server_id()))
            .clone()
    }

    /// This server's id, tagged on every cloud resource: kept in `data/server_id`.
    pub(crate) fn server_id(&self) -> String {
        let path = self.inner.options.server_dir.join("data").join("server_id");
        if let Ok(s) = std::fs::read_to_string(&path)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
        let id = Uuid::new_v4().to_string();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&path, &id);
        id
    }

    /// Whether this build can provision on `backend_type`.
    pub(crate) fn has_compute(backend_type: &str) -> bool {
        backends::supported_backends()
            .iter()
            .any(|b| b.as_str() == backend_type)
    }

    /// The project's backend of `backend_type` as a [`Compute`] (`None` when not configured
    /// or not built into this binary).
    pub(crate) async fn compute_for(
        &self,
        project_id: &str,
        backend_type: &str,
    ) -> crate::Result<Option<Arc<dyn Compute>>> {
        if !Self::has_compute(backend_type) {
            return Ok(None);
        }
        let Some(config) = self
            .backend_config_with_creds(project_id, backend_type)
            .await?
        else {
            return Ok(None);
        };
        let fingerprint = config.to_string();
        let key = (project_id.to_string(), backend_type.to_string());
        let cached = || -> Option<Arc<dyn Compute>> {
            let cache = self.inner.computes.cache.lock().ok()?;
            let (fp, c) = cache.get(&key)?;
            (*fp == fingerprint).then(|| c.clone())
        };
        if let Some(c) = cached() {
            return Ok(Some(c));
        }
        let _building = self.inner.computes.building.lock().await;
        if let Some(c) = cached() {
            return Ok(Some(c));
        }
        let typed = AnyBackendConfigWithCreds::parse(&config, false)?;
        let compute = self.build_compute(project_id, &typed).await?;
        if let Ok(mut cache) = self.inner.computes.cache.lock() {
            cache.insert(key, (fingerprint, compute.clone()));
        }
        Ok(Some(compute))
    }

    /// Builds a backend. A Kubernetes backend gets the SSH [`JumpKeyInstaller`] with the
    /// project's private key, so each run's key is authorised in the project's jump pod.
    ///
    /// [`JumpKeyInstaller`]: crate::backends::kubernetes::JumpKeyInstaller
    async fn build_compute(
        &self,
        project_id: &str,
        typed: &AnyBackendConfigWithCreds,
    ) -> crate::Result<Arc<dyn Compute>> {
        #[cfg(feature = "kubernetes")]
        if let AnyBackendConfigWithCreds::Kubernetes(c) = typed {
            use crate::backends::kubernetes::KubernetesCompute;
            use crate::backends::kubernetes::jump_keys::SshJumpKeyInstaller;
            let key = self.project_private_key(project_id).await?;
            let compute = KubernetesCompute::new(c.clone(), self.backend_settings())
                .await
                .map_err(Error::from)?
                .with_jump_key_installer(Arc::new(SshJumpKeyInstaller::new(key)));
            return Ok(Arc::new(compute));
        }
        let _ = project_id;
        backends::for_config(typed, &self.backend_settings())
            .await
            .map_err(Error::from)
    }

    /// The project's SSH private key (OpenSSH PEM), decrypted.
    pub(crate) async fn project_private_key(&self, project_id: &str) -> crate::Result<String> {
        let (stored,): (Option<String>,) =
            sqlx::query_as("SELECT ssh_private_key FROM projects WHERE id = $1")
                .bind(project_id)
                .fetch_optional(self.store().reader())
                .await?
                .ok_or_else(Error::not_found)?;
        let stored = stored.ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "the project has no SSH key; recreate the project",
            )
        })?;
        Ok(self.crypto().decrypt(&stored)?)
    }

    /// Checks a backend config's credentials against its cloud (backends created or updated
    /// through the API); types without a [`Compute`] in this build are only shape-checked.
    pub(crate) async fn validate_backend_credentials(&self, config: &Value) -> crate::Result<()> {
        let typed = AnyBackendConfigWithCreds::parse(config, false)?;
        if !Self::has_compute(typed.type_str()) {
            return Ok(());
        }
        let compute = backends::for_config(&typed, &self.backend_settings())
            .await
            .map_err(Error::from)?;
        match tokio::time::timeout(
            std::time::Duration::from_secs(60),
            compute.validate_credentials(),
        )
        .await
        {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::new(
                ErrorKind::InvalidCredentials,
                format!(
                    "Could not check the {} credentials within 60 s: the cloud API did not \
                     answer; check the network and the endpoint",
                    typed.type_str()
                ),
            )),
        }
    }

    /// Creates a cloud instance for a PENDING instance of a cloud fleet (kept at
    /// `nodes.min`): the fleet's own resources and profile.
    pub(crate) async fn provision_cloud_instance(
        &self,
        row: &InstanceRow,
    ) -> crate::Result<Provisioned> {
        let Some(fleet_id) = &row.fleet_id else {
            return Ok(Provisioned::Failed("the instance has no fleet".into()));
        };
        let (spec, fleet_name): (String, String) =
            sqlx::query_as("SELECT spec, name FROM fleets WHERE id = $1")
                .bind(fleet_id)
                .fetch_one(self.store().reader())
                .await?;
        let spec: FleetSpec = serde_json::from_str(&spec)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("stored fleet spec: {e}")))?;
        let profile = spec.merged_profile();
        let requirements = crate::spec::resources::fleet_requirements(&spec);
        self.provision_new_capacity(row, &fleet_name, &spec, &requirements, &profile)
            .await
    }

    /// Creates a cloud instance for `row` (a PENDING instance or a job's placeholder in a
    /// cloud fleet): the available offers of the project's backends that satisfy
    /// `requirements` and `profile` (backends, regions, instance types) are tried cheapest
    /// first, at most 25 of them ([`provision::MAX_OFFERS_TRIED`]); offers skipped for
    /// want of a placement group (cluster fleets) do not count.
    pub(crate) async fn provision_new_capacity(
        &self,
        row: &InstanceRow,
        fleet_name: &str,
        fleet_spec: &FleetSpec,
        requirements: &Requirements,
        profile: &Profile,
    ) -> crate::Result<Provisioned> {
        let tags = fleet_spec.configuration.tags.as_ref();
        let (project_name, project_key): (String, String) =
            sqlx::query_as("SELECT name, ssh_public_key FROM projects WHERE id = $1")
                .bind(&row.project_id)
                .fetch_one(self.store().reader())
                .await?;
        let types: Vec<(String,)> =
            sqlx::query_as("SELECT type FROM backends WHERE project_id = $1 ORDER BY created_at")
                .bind(&row.project_id)
                .fetch_all(self.store().reader())
                .await?;
        let params = &profile.params;
        let mut candidates: Vec<(Arc<dyn Compute>, InstanceOfferWithAvailability)> = Vec::new();
        let mut skipped = Vec::new();
        for (ty,) in types {
            if let Some(allowed) = &params.backends
                && !allowed.iter().any(|b| b.as_str() == ty)
            {
                continue;
            }
            let Some(compute) = self.compute_for(&row.project_id, &ty).await? else {
                skipped.push(ty);
                continue;
            };
            if compute.as_create_instance().is_none() {
                // Container backends run jobs, not fleet instances.
                continue;
            }
            match compute.get_offers(Some(requirements)).await {
                Ok(offers) => {
                    for o in offers {
                        let region_ok = params
                            .regions
                            .as_ref()
                            .is_none_or(|r| r.iter().any(|r| r.eq_ignore_ascii_case(&o.region)));
                        let type_ok = params.instance_types.as_ref().is_none_or(|t| {
                            t.iter().any(|t| t.eq_ignore_ascii_case(&o.instance.name))
                        });
                        if region_ok && type_ok && o.availability.is_available() {
                            candidates.push((compute.clone(), o));
                        }
                    }
                }
                Err(e) => tracing::warn!(backend = %ty, error = %e, "cannot get offers"),
            }
        }
        candidates.sort_by(|a, b| a.1.price.total_cmp(&b.1.price));
        if candidates.is_empty() {
            let hint = if skipped.is_empty() {
                String::new()
            } else {
                format!(
                    " (backends without provisioning in this build: {})",
                    skipped.join(", ")
                )
            };
            return Ok(Provisioned::Failed(format!(
                "No offers matching the run requirements in fleet '{fleet_name}'{hint}.\n\
                 Check `dstack offer` and the fleet's resources, backends and regions; see \
                 {TROUBLESHOOTING_URL}"
            )));
        }
        let mut config = InstanceConfiguration::new(
            project_name,
            Uuid::parse_str(&row.id).unwrap_or_default(),
            row.name.clone(),
            vec![project_key.trim().to_string()],
        );
        if let Some(fid) = row
            .fleet_id
            .as_deref()
            .and_then(|f| Uuid::parse_str(f).ok())
        {
            config = config.with_fleet(fid);
        }
        if let Some(r) = &requirements.reservation {
            config = config.with_reservation(r.clone());
        }
        for (k, v) in tags
            .into_iter()
            .flatten()
            .chain(params.tags.iter().flatten())
        {
            config = config.with_tag(k.clone(), v.clone());
        }
        let cluster = fleet_spec.configuration.placement
            == Some(crate::models::fleets::InstanceGroupPlacement::Cluster);
        let fleet_id = row.fleet_id.clone().unwrap_or_default();
        let _placement_lock = if cluster {
            Some(FleetPlacement::lock(&fleet_id).await)
        } else {
            None
        };
        let mut placement = self
            .fleet_placement(&row.project_id, &fleet_id, fleet_name, &row.id, cluster)
            .await?;
        // Offers often fail with the same error: each distinct one is reported once.
        let mut errors: Vec<(String, String)> = Vec::new();
        let mut skipped: Vec<String> = Vec::new();
        let mut tried = 0;
        let mut created = None;
        for (compute, offer) in &candidates {
            if tried == provision::MAX_OFFERS_TRIED {
                break;
            }
            let pg = match placement.as_mut() {
                Some(p) => match p.for_offer(self, &**compute, offer).await? {
                    Ok(pg) => pg,
                    Err(reason) => {
                        if !skipped.contains(&reason) {
                            skipped.push(reason);
                        }
                        continue;
                    }
                },
                None => None,
            };
            tried += 1;
            match provision::create_first_available(
                &**compute,
                std::slice::from_ref(offer),
                &config,
                pg.as_ref(),
            )
            .await
            {
                Ok((offer, jpd)) => {
                    created = Some((jpd, offer.clone(), pg));
                    break;
                }
                Err(e @ BackendError::InvalidCredentials { .. }) => {
                    if let Some(p) = placement {
                        p.finish(self, None).await;
                    }
                    return Ok(Provisioned::Failed(e.to_string()));
                }
                Err(e) => {
                    let e = e.to_string();
                    if !errors.iter().any(|(_, m)| *m == e) {
                        let at = format!(
                            "{}/{}/{}",
                            offer.backend.as_str(),
                            offer.region,
                            offer.instance.name
                        );
                        errors.push((at, e));
                    }
                }
            }
        }
        if let Some(p) = placement {
            p.finish(self, created.as_ref().and_then(|c| c.2.as_ref()))
                .await;
        }
        if let Some((jpd, offer, _)) = created {
            return Ok(Provisioned::Created(Box::new(jpd), Box::new(offer)));
        }
        if tried == 0 {
            return Ok(Provisioned::Failed(format!(
                "None of the {} offers in fleet '{fleet_name}' could be tried: {}.\nSee \
                 {TROUBLESHOOTING_URL}",
                candidates.len(),
                skipped.join("; ")
            )));
        }
        let limit = if tried == provision::MAX_OFFERS_TRIED && candidates.len() > tried {
            " (attempt limit reached)"
        } else {
            ""
        };
        let errors: Vec<String> = errors
            .iter()
            .take(3)
            .map(|(at, e)| format!("{at}: {e}"))
            .collect();
        Ok(Provisioned::Failed(format!(
            "Failed to provision in fleet '{fleet_name}': tried {tried} of {} offers{limit}, \
             all failed.\nErrors: {}.\nSee {TROUBLESHOOTING_URL}",
            candidates.len(),
            errors.join("; ")
        )))
    }

    /// Polls a provisioning cloud instance; `Ok(true)` once it has an address.
    pub(crate) async fn poll_cloud_instance(
        &self,
        row: &InstanceRow,
        jpd: &mut JobProvisioningData,
    ) -> crate::Result<bool> {
        let Some(compute) = self
            .compute_for(&row.project_id, jpd.backend.as_str())
            .await?
        else {
            return Err(Error::new(
                ErrorKind::BackendNotAvailable,
                format!("backend {} is no longer configured", jpd.backend.as_str()),
            ));
        };
        compute
            .update_provisioning_data(jpd)
            .await
            .map_err(Error::from)?;
        Ok(jpd.hostname.is_some())
    }

    /// Terminates a cloud instance (idempotent). `Ok(false)`: not yet, call again later.
    pub(crate) async fn terminate_cloud_instance(
        &self,
        row: &InstanceRow,
        jpd: &JobProvisioningData,
    ) -> crate::Result<bool> {
        let Some(compute) = self
            .compute_for(&row.project_id, jpd.backend.as_str())
            .await?
        else {
            tracing::warn!(instance = %row.name, backend = %jpd.backend.as_str(),
                "the backend is gone; the cloud instance cannot be terminated from here");
            return Ok(true);
        };
        match compute
            .terminate_instance(&jpd.instance_id, &jpd.region, jpd.backend_data.as_deref())
            .await
        {
            Ok(()) => Ok(true),
            Err(BackendError::NotYetTerminated { .. }) => Ok(false),
            Err(e) => Err(Error::from(e)),
        }
    }
}

/// The host the server uses to reach a cloud instance: its hostname, unless
/// `DSTACK_SERVER_INSTANCE_SSH_OVERRIDE` (`host:port`) redirects every cloud instance — for
/// a server behind NAT or a bastion, and for tests where an emulator's "VMs" are one local
/// sshd.
pub(crate) fn ssh_endpoint(jpd: &JobProvisioningData) -> Option<(String, u16)> {
    if let Ok(o) = std::env::var("DSTACK_SERVER_INSTANCE_SSH_OVERRIDE")
        && let Some((h, p)) = o.rsplit_once(':')
        && let Ok(p) = p.parse()
    {
        return Some((h.to_string(), p));
    }
    let host = jpd.hostname.clone()?;
    let port = jpd
        .ssh_port
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(22);
    Some((host, port))
}
