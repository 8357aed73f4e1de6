//! AMI selection: `os_images.{cpu,nvidia}` (name + owner + user) when configured, else
//! Canonical's Ubuntu 22.04 for CPU and AWS's Deep Learning Base OSS NVIDIA driver AMI
//! (Ubuntu 22.04) for NVIDIA GPUs; the newest image matching the name wins.

use aws_sdk_ec2::types::Filter;

use super::AwsCompute;
use super::errors::map_sdk_error;
use crate::backends::error::{BackendError, BackendResult};

/// Canonical's account.
pub const CANONICAL_OWNER: &str = "099720109477";
/// Amazon's account for the Deep Learning AMIs.
pub const AMAZON_DLAMI_OWNER: &str = "898082745236";

/// The AMI to launch and the SSH user it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChoice {
    /// The AMI id.
    pub image_id: String,
    /// The default user (where `authorized_keys` goes).
    pub username: String,
    /// The root device name (for the root volume size).
    pub root_device_name: String,
}

/// The name pattern, owner and user to look for.
pub fn image_query(compute: &AwsCompute, nvidia: bool, arch: &str) -> (String, String, String) {
    let images = compute.config.os_images.as_ref();
    let custom = if nvidia {
        images.and_then(|i| i.nvidia.as_ref())
    } else {
        images.and_then(|i| i.cpu.as_ref())
    };
    if let Some(img) = custom {
        return (img.name.clone(), img.owner.clone(), img.user.clone());
    }
    let ubuntu_arch = if arch == "arm64" { "arm64" } else { "amd64" };
    if nvidia {
        (
            "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *".into(),
            AMAZON_DLAMI_OWNER.into(),
            "ubuntu".into(),
        )
    } else {
        (
            format!("ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-{ubuntu_arch}-server-*"),
            CANONICAL_OWNER.into(),
            "ubuntu".into(),
        )
    }
}

/// Finds the newest available AMI for the instance kind in `region` (cached per region and
/// query for [`IMAGE_TTL`](super::cache::IMAGE_TTL)).
pub async fn find_image(
    compute: &AwsCompute,
    region: &str,
    nvidia: bool,
    arch: &str,
) -> BackendResult<ImageChoice> {
    let (name, owner, username) = image_query(compute, nvidia, arch);
    let aws_arch = if arch == "arm64" { "arm64" } else { "x86_64" };
    let key = (
        region.to_string(),
        name.clone(),
        owner.clone(),
        aws_arch.to_string(),
        username.clone(),
    );
    compute
        .lookups
        .images
        .get_or_try_fetch(key, || {
            lookup_image(compute, region, name, owner, username, aws_arch)
        })
        .await
}

/// The uncached `DescribeImages` lookup behind [`find_image`].
async fn lookup_image(
    compute: &AwsCompute,
    region: &str,
    name: String,
    owner: String,
    username: String,
    aws_arch: &str,
) -> BackendResult<ImageChoice> {
    let ec2 = compute.region(region).ec2;
    let out = compute
        .call("DescribeImages", || {
            let ec2 = ec2.clone();
            let (name, owner) = (name.clone(), owner.clone());
            async move {
                ec2.describe_images()
                    .owners(owner)
                    .filters(Filter::builder().name("name").values(name).build())
                    .filters(Filter::builder().name("state").values("available").build())
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await?;
    let best = out
        .images()
        .iter()
        .filter(|i| i.image_id().is_some())
        // Architecture is matched here rather than by a server-side filter so that images
        // registered without one (emulators) still match.
        .filter(|i| i.architecture().is_none_or(|a| a.as_str() == aws_arch))
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()));
    let Some(image) = best else {
        return Err(BackendError::Config {
            message: format!(
                "No AMI named {name:?} owned by {owner} ({aws_arch}) in {region}; \
                 set os_images in the AWS backend config"
            ),
        });
    };
    Ok(ImageChoice {
        image_id: image.image_id().unwrap_or_default().to_string(),
        username,
        root_device_name: image.root_device_name().unwrap_or("/dev/sda1").to_string(),
    })
}
