//! The [`Compute`] interface every backend implements, and the capability traits.
//!
//! A backend is one object behind `Arc<dyn Compute>`. What it can do beyond offers, polling and
//! termination is discovered with the `as_*` accessors (the Rust form of dstack's mix-in
//! classes) and summarised in [`Capabilities`]:
//!
//! - [`ComputeWithCreateInstance`]: VM backends; `create_instance` returns the provisioning
//!   data at once (often without a hostname) and [`Compute::update_provisioning_data`] is
//!   polled until the hostname is known.
//! - [`ComputeWithRunJob`]: container backends (one container per job, no fleets).
//! - [`ComputeWithPlacementGroups`]: cluster placement for multi-node fleets.
//! - [`ComputeWithSweep`]: listing the cloud resources this server tagged (VMs, TPU nodes,
//!   Elastic IPs, job containers; see [`TaggedKind`]), so that the engine's sweep can delete
//!   those the database does not know ([`ComputeWithSweep::delete_tagged`], which for
//!   instances is [`Compute::terminate_instance`]).

use std::fmt;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use uuid::Uuid;

use super::error::BackendResult;
use crate::models::backends::BackendType;
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::resources::Requirements;

/// What a backend supports beyond the base interface (dstack's feature mix-ins).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// VMs can be created without a job (fleets); see [`ComputeWithCreateInstance`].
    pub create_instance: bool,
    /// Jobs run as provider containers; see [`ComputeWithRunJob`].
    pub run_job: bool,
    /// Multi-node (cluster) runs.
    pub multinode: bool,
    /// Cluster placement groups; see [`ComputeWithPlacementGroups`].
    pub placement_groups: bool,
    /// Capacity reservations (`reservation` in the fleet or run profile).
    pub reservation: bool,
    /// Privileged job containers.
    pub privileged: bool,
    /// Host-path (instance) volumes.
    pub instance_volumes: bool,
    /// Network volumes.
    pub volumes: bool,
    /// Gateways.
    pub gateways: bool,
}

/// What `create_instance` needs besides the offer: who the instance is for, how to reach it,
/// and the ids every created resource is tagged with.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InstanceConfiguration {
    /// The project.
    pub project_name: String,
    /// The dstack instance id (tagged on every resource; the sweep key).
    pub instance_id: Uuid,
    /// The instance name, e.g. `my-fleet-0` (the `Name` tag).
    pub instance_name: String,
    /// The fleet id, when the instance belongs to a fleet.
    pub fleet_id: Option<Uuid>,
    /// The user that asked for it.
    pub user: String,
    /// SSH public keys (OpenSSH one-line form) authorised for the default user: the project
    /// key first, then user keys.
    pub ssh_public_keys: Vec<String>,
    /// A capacity reservation id to launch into.
    pub reservation: Option<String>,
    /// Extra tags from the fleet or run profile (merged under the backend's tags; the
    /// dstack tags always win).
    pub tags: IndexMap<String, String>,
    /// Disk size, GB (the offer's when `None`).
    pub disk_size_gb: Option<u32>,
}

impl InstanceConfiguration {
    /// A configuration with the required fields; the rest empty.
    pub fn new(
        project_name: impl Into<String>,
        instance_id: Uuid,
        instance_name: impl Into<String>,
        ssh_public_keys: Vec<String>,
    ) -> Self {
        Self {
            project_name: project_name.into(),
            instance_id,
            instance_name: instance_name.into(),
            fleet_id: None,
            user: "admin".into(),
            ssh_public_keys,
            reservation: None,
            tags: IndexMap::new(),
            disk_size_gb: None,
        }
    }

    /// Sets the fleet id.
    pub fn with_fleet(mut self, fleet_id: Uuid) -> Self {
        self.fleet_id = Some(fleet_id);
        self
    }

    /// Sets the user.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Sets the reservation.
    pub fn with_reservation(mut self, reservation: impl Into<String>) -> Self {
        self.reservation = Some(reservation.into());
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }
}

/// A cluster placement group to create (one per cluster fleet and region).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementGroupConfig {
    /// The name (unique per project and region).
    pub name: String,
    /// The project.
    pub project_name: String,
    /// The region.
    pub region: String,
    /// The fleet it belongs to.
    pub fleet_id: Option<Uuid>,
}

/// A created placement group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementGroupProvisioningData {
    /// The backend.
    pub backend: BackendType,
    /// The provider's name or id (what `create_instance` passes to the cloud).
    pub name: String,
    /// The region.
    pub region: String,
    /// Backend-specific data (a JSON string).
    pub backend_data: Option<String>,
}

/// What a container backend needs to start one job (the runner is the container's main
/// process; there is no shim).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobLaunch {
    /// The run name.
    pub run_name: String,
    /// The job name.
    pub job_name: String,
    /// The container image.
    pub image_name: String,
    /// Environment for the container.
    pub env: IndexMap<String, String>,
    /// Registry credentials as `(username, password)`.
    pub registry_auth: Option<(String, String)>,
    /// Whether the container runs privileged.
    pub privileged: bool,
    /// The job's requirements: container backends size the container from them (requests
    /// from the minimums, limits from the maximums); the offer's resources when `None`.
    pub requirements: Option<Requirements>,
}

impl JobLaunch {
    /// A launch of `image_name` for `run_name`/`job_name`; the rest empty.
    pub fn new(
        run_name: impl Into<String>,
        job_name: impl Into<String>,
        image_name: impl Into<String>,
    ) -> Self {
        Self {
            run_name: run_name.into(),
            job_name: job_name.into(),
            image_name: image_name.into(),
            env: IndexMap::new(),
            registry_auth: None,
            privileged: false,
            requirements: None,
        }
    }

    /// Adds an environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the registry credentials.
    pub fn with_registry_auth(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.registry_auth = Some((username.into(), password.into()));
        self
    }

    /// Sets whether the container runs privileged.
    pub fn with_privileged(mut self, privileged: bool) -> Self {
        self.privileged = privileged;
        self
    }

    /// Sets the requirements.
    pub fn with_requirements(mut self, requirements: Requirements) -> Self {
        self.requirements = Some(requirements);
        self
    }
}

/// The base interface of a backend: offers, provisioning-data polling and termination.
#[async_trait::async_trait]
pub trait Compute: Send + Sync + fmt::Debug {
    /// The backend type.
    fn backend_type(&self) -> BackendType;

    /// What the backend supports beyond this trait.
    fn capabilities(&self) -> Capabilities;

    /// Checks the credentials against the cloud with a cheap read-only call.
    /// [`BackendError::InvalidCredentials`](super::BackendError::InvalidCredentials) when rejected.
    async fn validate_credentials(&self) -> BackendResult<()>;

    /// Offers that satisfy `requirements` (all offers when `None`), each with its availability
    /// and, where the backend knows, the zones it can go to; cheapest first.
    async fn get_offers(
        &self,
        requirements: Option<&Requirements>,
    ) -> BackendResult<Vec<InstanceOfferWithAvailability>>;

    /// Fills what `create_instance` could not know yet (hostname, internal IP, SSH port).
    /// Polled by the caller; returns quickly and leaves `jpd` unchanged while the instance is
    /// still starting. [`BackendError::Provisioning`](super::BackendError::Provisioning) when
    /// the instance failed or vanished.
    async fn update_provisioning_data(&self, jpd: &mut JobProvisioningData) -> BackendResult<()>;

    /// Terminates an instance and what was created with it. Idempotent: an instance that does
    /// not exist is a success. May return
    /// [`BackendError::NotYetTerminated`](super::BackendError::NotYetTerminated): call again
    /// a few seconds later.
    async fn terminate_instance(
        &self,
        instance_id: &str,
        region: &str,
        backend_data: Option<&str>,
    ) -> BackendResult<()>;

    /// The VM-creation capability, when the backend has it.
    fn as_create_instance(&self) -> Option<&dyn ComputeWithCreateInstance> {
        None
    }

    /// The container (run one job) capability, when the backend has it.
    fn as_run_job(&self) -> Option<&dyn ComputeWithRunJob> {
        None
    }

    /// The placement-group capability, when the backend has it.
    fn as_placement_groups(&self) -> Option<&dyn ComputeWithPlacementGroups> {
        None
    }

    /// The sweep capability (listing the instances this server tagged), when the backend
    /// has it.
    fn as_sweep(&self) -> Option<&dyn ComputeWithSweep> {
        None
    }
}

/// VM backends: create an instance that runs the host agent (fleets).
#[async_trait::async_trait]
pub trait ComputeWithCreateInstance: Compute {
    /// Starts creating an instance for `offer` and returns its provisioning data at once
    /// (the hostname usually arrives later through `update_provisioning_data`).
    ///
    /// Tries each zone the offer allows; [`BackendError::NoCapacity`](super::BackendError::NoCapacity)
    /// when none has capacity, so the caller can try its next offer.
    async fn create_instance(
        &self,
        offer: &InstanceOfferWithAvailability,
        config: &InstanceConfiguration,
        placement_group: Option<&PlacementGroupProvisioningData>,
    ) -> BackendResult<JobProvisioningData>;
}

/// Container backends: start one job as a provider container running the runner.
#[async_trait::async_trait]
pub trait ComputeWithRunJob: Compute {
    /// Starts the job's container and returns its provisioning data at once.
    async fn run_job(
        &self,
        offer: &InstanceOfferWithAvailability,
        config: &InstanceConfiguration,
        job: &JobLaunch,
    ) -> BackendResult<JobProvisioningData>;
}

/// Backends with cluster placement groups.
#[async_trait::async_trait]
pub trait ComputeWithPlacementGroups: Compute {
    /// Creates a placement group (tagged like instances).
    async fn create_placement_group(
        &self,
        config: &PlacementGroupConfig,
    ) -> BackendResult<PlacementGroupProvisioningData>;

    /// Deletes a placement group; a missing one is a success.
    async fn delete_placement_group(
        &self,
        pg: &PlacementGroupProvisioningData,
    ) -> BackendResult<()>;

    /// Whether instances of `offer` can go into `pg` (same region, type supports clusters).
    fn is_suitable_placement_group(
        &self,
        pg: &PlacementGroupProvisioningData,
        offer: &InstanceOfferWithAvailability,
    ) -> bool;
}

/// What kind of cloud resource a [`TaggedInstance`] is: it says which row owns the resource
/// (the `dstack_instance_id` tag names an `instances` row or a `jobs` row) and how the sweep
/// judges and deletes it (see `engine::sweep`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaggedKind {
    /// A VM created for an instance row; deleted with [`Compute::terminate_instance`].
    #[default]
    Vm,
    /// A Cloud TPU node created for an instance row (GCP); deleted with
    /// [`Compute::terminate_instance`] (its backend data says it is a TPU node).
    TpuNode,
    /// A public address allocated for an instance row's VM (an AWS Elastic IP); released with
    /// [`ComputeWithSweep::delete_tagged`]. Never swept while attached to anything
    /// ([`TaggedInstance::attached_to`]).
    Address,
    /// A job container created for a job row (a Kubernetes job pod with its service and
    /// registry secret); deleted with [`Compute::terminate_instance`]. Its
    /// `dstack_instance_id` tag is the job id.
    JobContainer,
}

impl TaggedKind {
    /// Whether the `dstack_instance_id` tag names a `jobs` row (else an `instances` row).
    pub fn owned_by_job(self) -> bool {
        matches!(self, Self::JobContainer)
    }

    /// A short name for logs and reports (`vm`, `tpu_node`, `address`, `job_container`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vm => "vm",
            Self::TpuNode => "tpu_node",
            Self::Address => "address",
            Self::JobContainer => "job_container",
        }
    }
}

impl fmt::Display for TaggedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One cloud resource carrying this server's `dstack_server_id` tag (or GCP / Kubernetes
/// label), as [`ComputeWithSweep::list_tagged_instances`] finds it: a VM, a TPU node, an
/// Elastic IP or a job container ([`TaggedKind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaggedInstance {
    /// What kind of resource it is (default [`TaggedKind::Vm`]).
    pub kind: TaggedKind,
    /// The cloud's id of the resource: what [`Compute::terminate_instance`] takes for
    /// instances (EC2 instance id, GCP instance name, TPU node id, Azure VM name, Kubernetes
    /// pod name), the allocation id of an Elastic IP.
    pub instance_id: String,
    /// The region (the `region` argument of [`Compute::terminate_instance`]; the cluster's
    /// region for Kubernetes).
    pub region: String,
    /// The availability zone, when the cloud places the resource in one.
    pub zone: Option<String>,
    /// The `dstack_instance_id` tag: the instance row it was created for, or the job row for
    /// [`TaggedKind::JobContainer`] (`None` for resources not created for a row).
    pub dstack_instance_id: Option<String>,
    /// The cloud's state, as the cloud spells it (e.g. `running`, `RUNNING`, `Succeeded`).
    pub state: String,
    /// When the cloud created it, if it says (for Elastic IPs: the `dstack_allocated_at` tag
    /// written at allocation).
    pub created_at: Option<DateTime<Utc>>,
    /// What the resource is attached to, when it is (an Elastic IP's association). Attached
    /// resources are never swept: they go with what they are attached to.
    pub attached_to: Option<String>,
    /// What [`Compute::terminate_instance`] takes as `backend_data` to delete the resource
    /// and what was created with it.
    pub backend_data: Option<String>,
}

impl TaggedInstance {
    /// A [`TaggedKind::Vm`] with the required fields; the rest empty.
    pub fn new(
        instance_id: impl Into<String>,
        region: impl Into<String>,
        state: impl Into<String>,
    ) -> Self {
        Self {
            kind: TaggedKind::Vm,
            instance_id: instance_id.into(),
            region: region.into(),
            zone: None,
            dstack_instance_id: None,
            state: state.into(),
            created_at: None,
            attached_to: None,
            backend_data: None,
        }
    }

    /// Sets the kind.
    pub fn with_kind(mut self, kind: TaggedKind) -> Self {
        self.kind = kind;
        self
    }
}

/// Backends that can list the resources a server created, so that those the database lost
/// track of (a crash between the cloud call and the row write, a lost terminate) can be found
/// and deleted. The engine's sweep (`engine::sweep`) alone decides what is leaked; the
/// backend only lists and deletes.
#[async_trait::async_trait]
pub trait ComputeWithSweep: Compute {
    /// The resources tagged `dstack_server_id = server_id` in every region this backend is
    /// configured for (VMs and, where the backend creates them, TPU nodes, Elastic IPs or job
    /// containers), except those already terminated or being deleted.
    async fn list_tagged_instances(&self, server_id: &str) -> BackendResult<Vec<TaggedInstance>>;

    /// Deletes one listed resource; one already gone is a success. The default terminates
    /// instances, TPU nodes and job containers with [`Compute::terminate_instance`] (their
    /// id, region and backend data) and refuses [`TaggedKind::Address`]
    /// ([`BackendError::Unsupported`](super::BackendError::Unsupported)): backends that list
    /// addresses override it.
    async fn delete_tagged(&self, t: &TaggedInstance) -> BackendResult<()> {
        match t.kind {
            TaggedKind::Address => Err(super::BackendError::Unsupported(format!(
                "the {} backend cannot release address {}",
                self.backend_type().as_str(),
                t.instance_id
            ))),
            _ => {
                self.terminate_instance(&t.instance_id, &t.region, t.backend_data.as_deref())
                    .await
            }
        }
    }
}
