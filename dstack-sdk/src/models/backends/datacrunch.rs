//! DataCrunch (`type: datacrunch`): the old name of Verda, kept for existing configs.

pub use super::verda::{
    VerdaBackendConfig as DataCrunchBackendConfig,
    VerdaBackendConfigWithCreds as DataCrunchBackendConfigWithCreds, VerdaCreds as DataCrunchCreds,
};
