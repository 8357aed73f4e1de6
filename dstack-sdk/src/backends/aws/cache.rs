//! Per-[`AwsCompute`](super::AwsCompute) TTL caches for the lookups every `create_instance`
//! makes: the AMI (`DescribeImages`), the network (`DescribeVpcs`, `DescribeSubnets`,
//! `DescribeRouteTables`) and the project security group (`DescribeSecurityGroups`, plus
//! `CreateSecurityGroup`/`AuthorizeSecurityGroupIngress` on first use). Like dstack's
//! `_get_*_cache` TTL caches, so a fleet of N instances makes these calls once per region
//! and TTL rather than N times.
//!
//! Only successful results are cached. Concurrent first lookups of the same key coalesce:
//! each key has its own async mutex, held while the value is fetched, so ten parallel
//! creates make one `CreateSecurityGroup`, not ten. Different keys never wait on each other.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::images::ImageChoice;
use super::networking::NetworkChoice;

/// How long a found AMI is reused (dstack: 600 s).
pub const IMAGE_TTL: Duration = Duration::from_secs(600);
/// How long the VPC and its subnets are reused (dstack: 600 s).
pub const NETWORK_TTL: Duration = Duration::from_secs(600);
/// How long the project security group id is reused (dstack: 600 s).
pub const SECURITY_GROUP_TTL: Duration = Duration::from_secs(600);

type Slot<V> = Arc<tokio::sync::Mutex<Option<(Instant, V)>>>;

/// A TTL cache whose concurrent misses on one key run the fetch once.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    slots: Mutex<HashMap<K, Slot<V>>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// An empty cache whose entries live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The cached value for `key` if fresh; otherwise `fetch`'s result, stored when `Ok`.
    /// Callers that miss on the same key at the same time wait for the first one's fetch
    /// (and fetch again themselves only if it failed).
    pub async fn get_or_try_fetch<E, F, Fut>(&self, key: K, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let slot = {
            let mut slots = match self.slots.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            slots.entry(key).or_default().clone()
        };
        let mut entry = slot.lock().await;
        if let Some((at, value)) = entry.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(value.clone());
        }
        let value = fetch().await?;
        *entry = Some((Instant::now(), value.clone()));
        Ok(value)
    }
}

/// Image key: region, name pattern, owner, architecture, user.
pub type ImageKey = (String, String, String, String, String);
/// Network key: region, configured VPC id for the region, `vpc_name`, `default_vpcs`,
/// `public_ips`.
pub type NetworkKey = (String, Option<String>, Option<String>, bool, bool);
/// Security group key: region, project, VPC id, `public_ips`, VPC CIDR (the ingress rules).
pub type SecurityGroupKey = (String, String, String, bool, Option<String>);

/// The lookup caches of one [`AwsCompute`](super::AwsCompute).
#[derive(Debug)]
pub struct LookupCache {
    /// AMIs found by [`find_image`](super::images::find_image).
    pub images: TtlCache<ImageKey, ImageChoice>,
    /// Networks resolved by [`resolve`](super::networking::resolve).
    pub networks: TtlCache<NetworkKey, NetworkChoice>,
    /// Security group ids from
    /// [`ensure_security_group`](super::networking::ensure_security_group).
    pub security_groups: TtlCache<SecurityGroupKey, String>,
}

impl Default for LookupCache {
    fn default() -> Self {
        Self {
            images: TtlCache::new(IMAGE_TTL),
            networks: TtlCache::new(NETWORK_TTL),
            security_groups: TtlCache::new(SECURITY_GROUP_TTL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn coalesces_caches_successes_only_and_expires() {
        let cache: Arc<TtlCache<String, u32>> = Arc::new(TtlCache::new(Duration::from_secs(60)));
        let fetches = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_try_fetch("k".to_string(), || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, ()>(7)
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        // Errors are not cached.
        let r: Result<u32, &str> = cache
            .get_or_try_fetch("e".into(), || async { Err("x") })
            .await;
        assert_eq!(r, Err("x"));
        let r: Result<u32, &str> = cache.get_or_try_fetch("e".into(), || async { Ok(1) }).await;
        assert_eq!(r, Ok(1));

        // Expiry refetches.
        let short: TtlCache<String, u32> = TtlCache::new(Duration::from_millis(1));
        let _ = short
            .get_or_try_fetch("k".into(), || async { Ok::<_, ()>(1) })
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = short
            .get_or_try_fetch("k".into(), || async { Ok::<_, ()>(2) })
            .await;
        assert_eq!(r, Ok(2));
    }
}
