//! Volumes: configurations (discriminated by `backend`), the `Volume` resource, plans, and the
//! mount points that run configurations use (`volumes:`).

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::Serialize;
use uuid::Uuid;

use crate::models::common::{BackendType, string_enum};
use crate::spec::lax::deserialize_from_value;

/// Fields every volume configuration has.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VolumeCommon {
    /// The volume name.
    pub name: Option<String>,
    /// Seconds to wait after the volume is unused before deleting it (`-1` = never).
    pub auto_cleanup_duration: Option<i64>,
    /// Resource tags.
    pub tags: Option<IndexMap<String, String>>,
}

/// A network volume configuration (`type: volume`), one variant per backend that supports
/// volumes.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeConfiguration {
    /// An AWS EBS volume.
    Aws(VolumeWithZone),
    /// A GCP persistent disk.
    Gcp(VolumeWithZone),
    /// A RunPod network volume.
    Runpod(RunpodVolume),
    /// A Kubernetes PersistentVolumeClaim.
    Kubernetes(KubernetesVolume),
    /// A Daytona volume.
    Daytona(VolumeById),
    /// A Lium volume.
    Lium(VolumeById),
}

/// AWS and GCP volume fields.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeWithZone {
    /// Common fields.
    pub common: VolumeCommon,
    /// The size in GB (required to create a new volume).
    pub size: Option<f64>,
    /// An existing volume to register instead of creating one.
    pub volume_id: Option<String>,
    /// The region.
    pub region: String,
    /// The availability zone.
    pub availability_zone: Option<String>,
}

/// RunPod volume fields. (`availability_zone` is accepted on input and dropped.)
#[derive(Debug, Clone, PartialEq)]
pub struct RunpodVolume {
    /// Common fields.
    pub common: VolumeCommon,
    /// The size in GB.
    pub size: Option<f64>,
    /// An existing volume to register.
    pub volume_id: Option<String>,
    /// The region (data center).
    pub region: String,
}

/// Kubernetes volume (PVC) fields.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesVolume {
    /// Common fields.
    pub common: VolumeCommon,
    /// The requested size in GB.
    pub size: Option<f64>,
    /// The region (cluster); `""` by default.
    pub region: String,
    /// An existing PVC to register.
    pub claim_name: Option<String>,
    /// The StorageClass.
    pub storage_class_name: Option<String>,
    /// Accepted access modes.
    pub access_modes: Vec<String>,
    /// Mount read-only.
    pub read_only: bool,
}

/// Volume fields of backends that only register existing volumes by id.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeById {
    /// Common fields.
    pub common: VolumeCommon,
    /// The volume id.
    pub volume_id: Option<String>,
}

impl VolumeConfiguration {
    /// The backend.
    pub fn backend(&self) -> BackendType {
        match self {
            VolumeConfiguration::Aws(_) => BackendType::Aws,
            VolumeConfiguration::Gcp(_) => BackendType::Gcp,
            VolumeConfiguration::Runpod(_) => BackendType::RunPod,
            VolumeConfiguration::Kubernetes(_) => BackendType::Kubernetes,
            VolumeConfiguration::Daytona(_) => BackendType::Daytona,
            VolumeConfiguration::Lium(_) => BackendType::Lium,
        }
    }

    /// The common fields.
    pub fn common(&self) -> &VolumeCommon {
        match self {
            VolumeConfiguration::Aws(v) | VolumeConfiguration::Gcp(v) => &v.common,
            VolumeConfiguration::Runpod(v) => &v.common,
            VolumeConfiguration::Kubernetes(v) => &v.common,
            VolumeConfiguration::Daytona(v) | VolumeConfiguration::Lium(v) => &v.common,
        }
    }

    /// The region, or `""` for backends without regions.
    pub fn region(&self) -> &str {
        match self {
            VolumeConfiguration::Aws(v) | VolumeConfiguration::Gcp(v) => &v.region,
            VolumeConfiguration::Runpod(v) => &v.region,
            VolumeConfiguration::Kubernetes(v) => &v.region,
            VolumeConfiguration::Daytona(_) | VolumeConfiguration::Lium(_) => "",
        }
    }

    /// The id of an existing volume being registered, if any (then the volume is external).
    pub fn external_volume_id(&self) -> Option<&str> {
        match self {
            VolumeConfiguration::Aws(v) | VolumeConfiguration::Gcp(v) => v.volume_id.as_deref(),
            VolumeConfiguration::Runpod(v) => v.volume_id.as_deref(),
            VolumeConfiguration::Kubernetes(v) => v.claim_name.as_deref(),
            VolumeConfiguration::Daytona(v) | VolumeConfiguration::Lium(v) => {
                v.volume_id.as_deref()
            }
        }
    }
}

impl Serialize for VolumeConfiguration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let common = self.common();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", "volume")?;
        m.serialize_entry("backend", &self.backend())?;
        m.serialize_entry("name", &common.name)?;
        m.serialize_entry("auto_cleanup_duration", &common.auto_cleanup_duration)?;
        m.serialize_entry("tags", &common.tags)?;
        match self {
            VolumeConfiguration::Aws(v) | VolumeConfiguration::Gcp(v) => {
                m.serialize_entry("size", &v.size)?;
                m.serialize_entry("volume_id", &v.volume_id)?;
                m.serialize_entry("region", &v.region)?;
                m.serialize_entry("availability_zone", &v.availability_zone)?;
            }
            VolumeConfiguration::Runpod(v) => {
                m.serialize_entry("size", &v.size)?;
                m.serialize_entry("volume_id", &v.volume_id)?;
                m.serialize_entry("region", &v.region)?;
            }
            VolumeConfiguration::Kubernetes(v) => {
                m.serialize_entry("size", &v.size)?;
                m.serialize_entry("region", &v.region)?;
                m.serialize_entry("claim_name", &v.claim_name)?;
                m.serialize_entry("storage_class_name", &v.storage_class_name)?;
                m.serialize_entry("access_modes", &v.access_modes)?;
                m.serialize_entry("read_only", &v.read_only)?;
            }
            VolumeConfiguration::Daytona(v) | VolumeConfiguration::Lium(v) => {
                m.serialize_entry("volume_id", &v.volume_id)?;
            }
        }
        m.end()
    }
}

string_enum! {
    /// The status of a volume.
    VolumeStatus {
        /// Submitted, not yet provisioned.
        Submitted = "submitted",
        /// Being provisioned.
        Provisioning = "provisioning",
        /// Ready to use.
        Active = "active",
        /// Provisioning failed.
        Failed = "failed",
    }
}

/// What the backend reported after creating or registering a volume.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct VolumeProvisioningData {
    /// The backend.
    #[serde(default)]
    pub backend: Option<BackendType>,
    /// The id in the cloud provider.
    pub volume_id: String,
    /// The provisioned size, if fixed.
    #[serde(default)]
    pub size_gb: Option<i64>,
    /// The availability zone.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// The monthly price.
    #[serde(default)]
    pub price: Option<f64>,
    /// Whether the volume is attached and detached explicitly.
    #[serde(default = "yes")]
    pub attachable: bool,
    /// Whether the volume can be detached.
    #[serde(default = "yes")]
    pub detachable: bool,
    /// Backend-specific JSON.
    #[serde(default)]
    pub backend_data: Option<String>,
}

fn yes() -> bool {
    true
}

/// Attachment details (the device name on the instance).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct VolumeAttachmentData {
    /// The device name, e.g. `/dev/sdf`.
    #[serde(default)]
    pub device_name: Option<String>,
}

/// The instance a volume is attached to.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct VolumeInstance {
    /// The instance name.
    pub name: String,
    /// The fleet name.
    #[serde(default)]
    pub fleet_name: Option<String>,
    /// The instance number in its fleet.
    pub instance_num: i64,
    /// The cloud instance id.
    #[serde(default)]
    pub instance_id: Option<String>,
}

/// One attachment of a volume.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct VolumeAttachment {
    /// The instance.
    pub instance: VolumeInstance,
    /// Attachment details.
    #[serde(default)]
    pub attachment_data: Option<VolumeAttachmentData>,
}

/// A volume as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Volume {
    /// The id.
    pub id: Uuid,
    /// The name.
    pub name: String,
    /// The creator's username.
    pub user: String,
    /// The project.
    pub project_name: String,
    /// The configuration.
    pub configuration: VolumeConfiguration,
    /// Whether the volume was registered rather than created.
    pub external: bool,
    /// Creation time.
    #[serde(with = "crate::models::datetime")]
    pub created_at: DateTime<Utc>,
    /// Last time a pipeline processed it.
    #[serde(with = "crate::models::datetime")]
    pub last_processed_at: DateTime<Utc>,
    /// The status.
    pub status: VolumeStatus,
    /// A human-readable status detail.
    #[serde(default)]
    pub status_message: Option<String>,
    /// Whether it was deleted.
    pub deleted: bool,
    /// Deletion time.
    #[serde(default, with = "crate::models::datetime::option")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// The id in the cloud provider.
    #[serde(default)]
    pub volume_id: Option<String>,
    /// Provisioning details.
    #[serde(default)]
    pub provisioning_data: Option<VolumeProvisioningData>,
    /// The accumulated cost.
    #[serde(default)]
    pub cost: f64,
    /// Current attachments.
    #[serde(default)]
    pub attachments: Option<Vec<VolumeAttachment>>,
    /// Deprecated attachment details (pre-`attachments`).
    #[serde(default)]
    pub attachment_data: Option<VolumeAttachmentData>,
}

/// A volume spec: the configuration and its file path.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct VolumeSpec {
    /// The configuration.
    pub configuration: VolumeConfiguration,
    /// The path of the configuration file.
    #[serde(default)]
    pub configuration_path: Option<String>,
}

/// What applying a volume configuration would do.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct VolumePlan {
    /// The project.
    pub project_name: String,
    /// The user.
    pub user: String,
    /// The spec to apply.
    pub spec: VolumeSpec,
    /// The existing volume, if any.
    #[serde(default)]
    pub current_resource: Option<Volume>,
}

/// A network volume mount (`name:/path`): one volume, or a list to pick one from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeMountPoint {
    /// The volume name, or names (one of them is mounted).
    pub name: VolumeNames,
    /// The absolute path in the container.
    pub path: String,
}

/// One volume name or a list of alternatives.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VolumeNames {
    /// A single volume.
    One(String),
    /// Alternatives (e.g. in different regions).
    Any(Vec<String>),
}

/// An instance (host) directory mount (`/host/path:/path`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceMountPoint {
    /// The absolute path on the host.
    pub instance_path: String,
    /// The absolute path in the container.
    pub path: String,
    /// Whether the run may proceed on backends without instance volumes.
    pub optional: bool,
}

/// A `volumes:` item of a run configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MountPoint {
    /// A network volume.
    Volume(VolumeMountPoint),
    /// A host directory.
    Instance(InstanceMountPoint),
}

deserialize_from_value!(
    VolumeConfiguration,
    MountPoint,
    VolumeMountPoint,
    InstanceMountPoint
);
