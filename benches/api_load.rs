//! A small closed-loop load generator for the dstack API: `C` concurrent clients each send
//! requests back to back for `D` seconds; prints p50/p99 latency per route as JSON.
//!
//! `cargo run --release -p server-bin --example api_load -- URL TOKEN [CONCURRENCY] [SECONDS] [ROUTES]`
//! (used by `benches/server_vs_dstack.py` and `benches/runs_vs_dstack.py`, which run it against
//! both servers).
//!
//! `ROUTES` (optional) is a JSON array, inline or `@file`, of `{"name": .., "path": .., "body": ..}`
//! (`name` defaults to `path`, `body` to `{}`; a string body is sent as is, anything else as
//! its JSON). Without it the three default routes below are loaded with `{}`.

use std::time::{Duration, Instant};

struct Route {
    name: String,
    path: String,
    body: String,
}

fn routes_arg(arg: Option<&String>) -> anyhow::Result<Vec<Route>> {
    let Some(arg) = arg else {
        return Ok([
            "/api/projects/list",
            "/api/users/get_my_user",
            "/api/projects/main/get",
        ]
        .into_iter()
        .map(|p| Route {
            name: p.into(),
            path: p.into(),
            body: "{}".into(),
        })
        .collect());
    };
    let text = match arg.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)?,
        None => arg.clone(),
    };
    let spec: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    spec.into_iter()
        .map(|r| {
            let path = r["path"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("route without \"path\": {r}"))?
                .to_string();
            let name = r["name"].as_str().unwrap_or(&path).to_string();
            let body = match &r["body"] {
                serde_json::Value::Null => "{}".to_string(),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            Ok(Route { name, path, body })
        })
        .collect()
}

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
    let routes = routes_arg(args.get(5))?;
    dstack_sdk::http::install_crypto_provider();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conc)
        .build()?;
    let mut out = serde_json::Map::new();
    for route in routes {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let http = http.clone();
            let full = format!("{url}{}", route.path);
            let token = token.clone();
            let body = route.body.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut last_error = None;
                let mut bytes = 0usize;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = http
                        .post(&full)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status().is_success() => {
                            let b = resp.bytes().await;
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                            bytes = b.map(|b| b.len()).unwrap_or(0);
                        }
                        Ok(resp) => {
                            errors += 1;
                            let status = resp.status();
                            let text = resp.text().await.unwrap_or_default();
                            let text: String = text.chars().take(300).collect();
                            last_error = Some(format!("{status}: {text}"));
                        }
                        Err(e) => {
                            errors += 1;
                            last_error = Some(e.to_string());
                        }
                    }
                }
                (lat, errors, last_error, bytes)
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        let mut last_error = None;
        let mut bytes = 0;
        for t in tasks {
            let (l, e, le, b) = t.await?;
            all.extend(l);
            errors += e;
            last_error = last_error.or(le);
            bytes = bytes.max(b);
        }
        // Requests in flight at the deadline finish after it: count rps over the real span.
        let span = started.elapsed().as_secs_f64().max(secs as f64);
        all.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .copied()
        };
        let mut entry = serde_json::json!({"requests": all.len(), "errors": errors,
            "rps": all.len() as f64 / span, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "response_bytes": bytes});
        if let Some(e) = last_error {
            entry["last_error"] = e.into();
        }
        out.insert(route.name, entry);
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
