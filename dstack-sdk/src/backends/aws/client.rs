//! Credentials and SDK clients: one `SdkConfig` per backend (static keys or the default
//! chain: env, profile, web identity, ECS, IMDS), one EC2 and one Service Quotas client per
//! region, with the endpoint override applied and SDK retries off (the shared back-off of
//! [`retry`](crate::backends::common::retry) does that, so throttling is handled in one place).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::Region;
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use crate::backends::common::settings::BackendSettings;
use crate::models::backends::aws::AwsCreds;

/// The region used for account-wide calls when the config names none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The SDK clients of one region.
#[derive(Debug, Clone)]
pub struct RegionClients {
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// Service Quotas.
    pub quotas: aws_sdk_servicequotas::Client,
}

/// Builds and caches per-region clients.
#[derive(Debug)]
pub struct AwsClients {
    sdk: aws_config::SdkConfig,
    ec2_endpoint: Option<String>,
    quotas_endpoint: Option<String>,
    cache: Mutex<HashMap<String, RegionClients>>,
}

impl AwsClients {
    /// Loads the credentials (`access_key` or the default chain) and HTTP client.
    pub async fn new(creds: &AwsCreds, home_region: &str, settings: &BackendSettings) -> Self {
        // rustls + ring: the TLS stack the rest of the SDK uses; no aws-lc, no hyper 0.14.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(home_region.to_string()))
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(settings.request_timeout)
                    .build(),
            );
        if let AwsCreds::AccessKey(k) = creds {
            let static_creds = Credentials::new(
                k.access_key.clone(),
                k.secret_key.clone(),
                None,
                None,
                "dstack-backend-config",
            );
            loader = loader.credentials_provider(SharedCredentialsProvider::new(static_creds));
        }
        let sdk = loader.load().await;
        Self {
            sdk,
            ec2_endpoint: settings.endpoints.get("aws", "ec2").map(str::to_string),
            quotas_endpoint: settings
                .endpoints
                .get("aws", "servicequotas")
                .map(str::to_string),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The clients of `region` (built on first use).
    pub fn region(&self, region: &str) -> RegionClients {
        let mut cache = match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(c) = cache.get(region) {
            return c.clone();
        }
        let mut ec2 =
            aws_sdk_ec2::config::Builder::from(&self.sdk).region(Region::new(region.to_string()));
        if let Some(url) = &self.ec2_endpoint {
            ec2 = ec2.endpoint_url(url.clone());
        }
        let mut quotas = aws_sdk_servicequotas::config::Builder::from(&self.sdk)
            .region(Region::new(region.to_string()));
        if let Some(url) = &self.quotas_endpoint {
            quotas = quotas.endpoint_url(url.clone());
        }
        let clients = RegionClients {
            ec2: aws_sdk_ec2::Client::from_conf(ec2.build()),
            quotas: aws_sdk_servicequotas::Client::from_conf(quotas.build()),
        };
        cache.insert(region.to_string(), clients.clone());
        clients
    }
}
