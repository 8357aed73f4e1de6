//! AWS (`type: aws`): access-key or default (boto chain) credentials, VPC, AMI and tag options.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::fmt;

use super::{FieldError, Redacted, Validate};

/// A custom AMI: `{name, owner, user}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsOsImage {
    /// The AMI name.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub name: String,
    /// The AMI owner: a 12-digit account ID or `self` (default `self`).
    #[serde(
        default = "default_owner",
        deserialize_with = "crate::models::backends::lenient::string"
    )]
    pub owner: String,
    /// The OS user used for provisioning.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub user: String,
}

fn default_owner() -> String {
    "self".to_string()
}

/// AMIs per instance category.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsOsImageConfig {
    /// The AMI for CPU instances.
    #[serde(default)]
    pub cpu: Option<AwsOsImage>,
    /// The AMI for NVIDIA GPU instances.
    #[serde(default)]
    pub nvidia: Option<AwsOsImage>,
}

/// `{type: access_key, access_key, secret_key}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsAccessKeyCreds {
    /// The access key ID.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub access_key: String,
    /// The secret access key.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub secret_key: String,
}

impl fmt::Debug for AwsAccessKeyCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsAccessKeyCreds")
            .field("access_key", &Redacted)
            .field("secret_key", &Redacted)
            .finish()
    }
}

/// `{type: default}`: the default credential chain of the server's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsDefaultCreds {}

/// AWS credentials, discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AwsCreds {
    /// `access_key`.
    #[serde(rename = "access_key")]
    AccessKey(AwsAccessKeyCreds),
    /// `default`.
    #[serde(rename = "default")]
    Default(AwsDefaultCreds),
}

backend_config! {
    /// The AWS backend config without credentials.
    pub struct AwsBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
        /// The name of custom VPCs (the same name in every region).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string")]
        pub vpc_name: Option<String>,
        /// Region → VPC ID.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_map")]
        pub vpc_ids: Option<IndexMap<String, String>>,
        /// Use default VPCs in regions not in `vpc_ids` (default true).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_bool")]
        pub default_vpcs: Option<bool>,
        /// Assign public IPs (default true).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_bool")]
        pub public_ips: Option<bool>,
        /// The IAM instance profile for EC2 instances.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string")]
        pub iam_instance_profile: Option<String>,
        /// Tags for created resources.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_map")]
        pub tags: Option<IndexMap<String, String>>,
        /// Custom AMIs.
        #[serde(default)]
        pub os_images: Option<AwsOsImageConfig>,
        /// Extra instance types allowed beyond the standard families.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub experimental_instance_types: Option<Vec<String>>,
    }
    /// The AWS backend config with credentials.
    with_creds AwsBackendConfigWithCreds {
        /// The credentials.
        pub creds: AwsCreds,
    }
}

impl AwsBackendConfig {
    /// Whether instances get public IPs (`public_ips`, default true).
    pub fn allocate_public_ips(&self) -> bool {
        self.public_ips.unwrap_or(true)
    }

    /// Whether default VPCs are used (`default_vpcs`, default true).
    pub fn use_default_vpcs(&self) -> bool {
        self.default_vpcs.unwrap_or(true)
    }
}

fn validate_os_images(images: &Option<AwsOsImageConfig>) -> Result<(), FieldError> {
    let Some(images) = images else { return Ok(()) };
    for (name, image) in [("cpu", &images.cpu), ("nvidia", &images.nvidia)] {
        if let Some(image) = image {
            let ok = image.owner == "self"
                || (image.owner.len() == 12 && image.owner.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                return Err(FieldError::new(
                    &["os_images", name, "owner"],
                    format!(
                        "String should match pattern '^(\\d{{12}}|self)$', got {:?}",
                        image.owner
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl Validate for AwsBackendConfig {
    fn validate(&self) -> Result<(), FieldError> {
        validate_os_images(&self.os_images)
    }
}

impl Validate for AwsBackendConfigWithCreds {
    fn validate(&self) -> Result<(), FieldError> {
        validate_os_images(&self.os_images)
    }
}
