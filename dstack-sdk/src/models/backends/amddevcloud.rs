//! AMD Developer Cloud (`type: amddevcloud`): the DigitalOcean config at another API URL.

pub use super::digitalocean::{
    DigitalOceanBackendConfig as AmdDevCloudBackendConfig,
    DigitalOceanBackendConfigWithCreds as AmdDevCloudBackendConfigWithCreds,
    DigitalOceanCreds as AmdDevCloudCreds,
};
