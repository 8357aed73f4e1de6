//! The fake Compute Engine server of `tests/support/fake_gcp.rs` as a process, for tests that
//! drive the real dstack CLI (`tests/oracle/test_cli_cloud_gcp.py`):
//! `cargo run -p dstack-sdk --example fake_gcp -- 127.0.0.1:PORT` prints its URL and serves
//! until killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "fake_gcp.rs"]
mod fake_gcp;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let fake = fake_gcp::start_fake_on(&addr).await;
    println!("{}", fake.url);
    std::future::pending::<()>().await;
}
