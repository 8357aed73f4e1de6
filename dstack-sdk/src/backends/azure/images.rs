//! VM images: dstack's community gallery images (Gen2), as in dstack.
//!
//! `dstack-<version>` for CPU sizes, `dstack-cuda-<version>` for NVIDIA sizes and
//! `dstack-grid-<version>` for the A10 v5 sizes (GRID drivers), looked up per location with
//! `GET …/locations/{location}/communityGalleries/{gallery}/images/{image}` and referenced by
//! `communityGalleryImageId` (the image's `identifier.uniqueId`). Cached per location.

use serde_json::Value;

use super::AzureCompute;
use super::arm::api;
use crate::backends::error::{BackendError, BackendResult};
use crate::models::offers::InstanceType;

/// dstack's public community gallery (Gen2 images).
pub const COMMUNITY_GALLERY: &str = "dstack-ebac134d-04b9-4c2b-8b6c-ad3e73904aa7";
/// The VM image version (dstack's `vm_base_image`).
pub const VM_BASE_IMAGE: &str = "0.14";
/// The SSH user of the images.
pub const IMAGE_USER: &str = "ubuntu";

/// Which image a size needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageVariant {
    /// CPU only.
    Standard,
    /// NVIDIA GPUs (CUDA drivers).
    Cuda,
    /// NVIDIA A10 v5 sizes (GRID drivers).
    Grid,
}

impl ImageVariant {
    /// The variant for an instance type.
    pub fn for_instance(instance: &InstanceType) -> Self {
        if instance.name.contains("_A10_v5") {
            Self::Grid
        } else if !instance.resources.gpus.is_empty() {
            Self::Cuda
        } else {
            Self::Standard
        }
    }

    /// The gallery image name.
    pub fn image_name(self) -> String {
        match self {
            Self::Standard => format!("dstack-{VM_BASE_IMAGE}"),
            Self::Cuda => format!("dstack-cuda-{VM_BASE_IMAGE}"),
            Self::Grid => format!("dstack-grid-{VM_BASE_IMAGE}"),
        }
    }
}

/// The `communityGalleryImageId` of `variant` in `location`.
pub async fn image_id(
    compute: &AzureCompute,
    location: &str,
    variant: ImageVariant,
) -> BackendResult<String> {
    let name = variant.image_name();
    let key = format!("{location}/{name}");
    if let Some(id) = compute.cache_get_image(&key) {
        return Ok(id);
    }
    let path = compute.arm.sub_path(&format!(
        "/providers/Microsoft.Compute/locations/{location}/communityGalleries/{COMMUNITY_GALLERY}/images/{name}"
    ));
    let v = compute
        .arm
        .get_opt(&path, api::GALLERY)
        .await?
        .ok_or_else(|| BackendError::Config {
            message: format!(
                "image {name} of gallery {COMMUNITY_GALLERY} is not available in {location}"
            ),
        })?;
    let id = v
        .pointer("/identifier/uniqueId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("/CommunityGalleries/{COMMUNITY_GALLERY}/Images/{name}"));
    compute.cache_put_image(key, id.clone());
    Ok(id)
}
