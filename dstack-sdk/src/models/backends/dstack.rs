//! dstack Sky (`type: dstack`): the config dstack Sky stores, and the bare `{type}` entries
//! it shows for its base backends.

use serde::{Deserialize, Serialize};

use super::Validate;

/// `{type: dstack, base_backends}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DstackBackendConfig {
    /// The backends dstack Sky provisions in.
    #[serde(deserialize_with = "crate::models::backends::lenient::string_list")]
    pub base_backends: Vec<String>,
}

impl Validate for DstackBackendConfig {}

/// `{type: <any>}`: a base backend of dstack Sky, shown with no other field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DstackBaseBackendConfig {
    /// The backend type string.
    #[serde(
        rename = "type",
        deserialize_with = "crate::models::backends::lenient::string"
    )]
    pub kind: String,
}

impl Validate for DstackBaseBackendConfig {}
