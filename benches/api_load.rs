//! A small closed-loop load generator for the dstack API: `C` concurrent clients each send
//! requests back to back for `D` seconds; prints p50/p99 latency per route as JSON.
//!
//! `cargo run --release -p server-bin --example api_load -- URL TOKEN [CONCURRENCY] [SECONDS]`
//! (used by `benches/server_vs_dstack.py`, which runs it against both servers).

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let token = args.get(2).cloned().unwrap_or_default();
    let conc: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50);
    let secs: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5);
    let routes = [
        "/api/projects/list",
        "/api/users/get_my_user",
        "/api/projects/main/get",
    ];
    dstack_sdk::http::install_crypto_provider();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conc)
        .build()?;
    let mut out = serde_json::Map::new();
    for route in routes {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let http = http.clone();
            let full = format!("{url}{route}");
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = http
                        .post(&full)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body("{}")
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status().is_success() => {
                            let _ = resp.bytes().await;
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await?;
            all.extend(l);
            errors += e;
        }
        all.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .copied()
        };
        out.insert(
            route.to_string(),
            serde_json::json!({"requests": all.len(), "errors": errors, "rps": all.len() as f64 / secs as f64,
                "p50_ms": pct(0.5), "p99_ms": pct(0.99)}),
        );
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
