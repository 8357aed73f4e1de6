//! gpuhunt's provider names and the canonical provider order.

/// Providers whose catalogs gpuhunt pre-collects and publishes (gpuhunt 0.1.34), in gpuhunt's
/// order. This order is also the tie-break between providers when offers are merged by price.
pub const OFFLINE_PROVIDERS: &[&str] = &[
    "aws",
    "azure",
    "verda",
    "gcp",
    "lambdalabs",
    "nebius",
    "oci",
    "runpod",
    "cloudrift",
];

/// Providers gpuhunt queries live (gpuhunt 0.1.34). A catalog built here may still hold a CSV
/// for one of them.
pub const ONLINE_PROVIDERS: &[&str] = &[
    "crusoe",
    "daytona",
    "digitalocean",
    "hotaisle",
    "jarvislabs",
    "lium",
    "seeweb",
    "vastai",
    "vultr",
];

/// Whether `name` (any case) is one of gpuhunt's offline or online providers.
pub fn is_known_provider(name: &str) -> bool {
    let lower = name.to_lowercase();
    OFFLINE_PROVIDERS
        .iter()
        .chain(ONLINE_PROVIDERS)
        .any(|p| *p == lower)
}

/// Whether `name` (any case) is one of gpuhunt's online providers.
pub fn is_online_provider(name: &str) -> bool {
    let lower = name.to_lowercase();
    ONLINE_PROVIDERS.contains(&lower.as_str())
}

/// The sort key that puts providers in canonical order: gpuhunt's offline providers first (in
/// gpuhunt's order), then its online providers, then any other name alphabetically.
pub(crate) fn provider_sort_key(name: &str) -> (usize, String) {
    let rank = OFFLINE_PROVIDERS
        .iter()
        .chain(ONLINE_PROVIDERS)
        .position(|p| *p == name)
        .unwrap_or(OFFLINE_PROVIDERS.len() + ONLINE_PROVIDERS.len());
    (rank, name.to_string())
}
