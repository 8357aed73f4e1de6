//! Outgoing HTTP plumbing shared by the client, catalog downloads and cloud backends.

/// Installs rustls' ring crypto provider once per process (reqwest is built without a
/// default provider to keep aws-lc out of the build). Safe to call any number of times.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another library may have installed a provider already; that one is used then.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
