//! `config.yml` at startup: encryption keys (nothing secret in the database in plain text),
//! backends created / updated / deleted to match the file, default permissions, and the
//! default file written when there is none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use dstack_sdk::client::Client;
use dstack_sdk::models::users::{GlobalRole, ProjectRole};

const KEY: &str = "E5yzN6V3XvBq/f085ISWFCdgnOGED0kuFaAkASlmmO4=";

fn write_config(dir: &std::path::Path, backends: &str) {
    let text = format!(
        "projects:\n- name: main\n  backends:\n{backends}\nencryption:\n  keys:\n  - type: aes\n    name: key1\n    secret: {KEY}\ndefault_permissions:\n  allow_managers_manage_secrets: true\n"
    );
    std::fs::write(dir.join("config.yml"), text).unwrap();
}

fn db_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["sqlite.db", "sqlite.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join("data").join(name)) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn config_yml_is_applied_and_secrets_are_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        "  - type: lambda\n    creds:\n      type: api_key\n      api_key: LAMBDA-SECRET-KEY\n  - type: vastai\n    creds:\n      type: api_key\n      api_key: VAST-SECRET-KEY\n",
    );
    let mut srv = support::start_ours(Some(dir), "ADMIN-SECRET-TOKEN-123");
    let admin = Client::new(&srv.url, &srv.admin_token).unwrap();
    let main = admin.project("main").get().await.unwrap();
    let names: Vec<_> = main.backends.iter().map(|b| b.name.clone()).collect();
    assert_eq!(names, vec!["lambda", "vastai"]);
    // default_permissions.allow_managers_manage_secrets: a manager may manage secrets.
    admin
        .users()
        .create("mgr", GlobalRole::User, None)
        .await
        .unwrap();
    let mgr_token = admin.users().get("mgr").await.unwrap().creds.token;
    admin
        .project("main")
        .members()
        .add(&[("mgr", ProjectRole::Manager)])
        .await
        .unwrap();
    let as_mgr = admin.with_token(&mgr_token);
    as_mgr
        .project("main")
        .secrets()
        .set("DB_PASSWORD", "SECRET-VALUE-456")
        .await
        .unwrap();
    srv.kill9();

    let dir = std::mem::replace(&mut srv.dir, tempfile::tempdir().unwrap());
    let bytes = db_bytes(dir.path());
    assert!(!bytes.is_empty());
    for secret in [
        "LAMBDA-SECRET-KEY",
        "VAST-SECRET-KEY",
        "SECRET-VALUE-456",
        "ADMIN-SECRET-TOKEN-123",
    ] {
        assert!(
            !contains(&bytes, secret),
            "{secret} is stored in plain text"
        );
    }
    assert!(contains(&bytes, "enc:aes:key1:"));

    // Restart with vastai removed and lambda changed: update + delete.
    write_config(
        dir.path(),
        "  - type: lambda\n    regions: [us-west-1]\n    creds:\n      type: api_key\n      api_key: LAMBDA-SECRET-KEY\n",
    );
    let srv2 = support::start_ours(Some(dir), "ignored");
    let admin = Client::new(&srv2.url, "ADMIN-SECRET-TOKEN-123").unwrap();
    let main = admin.project("main").get().await.unwrap();
    assert_eq!(main.backends.len(), 1);
    let cfg = admin
        .project("main")
        .backends()
        .config_info("lambda")
        .await
        .unwrap();
    assert_eq!(cfg["regions"], serde_json::json!(["us-west-1"]));
    assert_eq!(
        admin
            .project("main")
            .secrets()
            .get("DB_PASSWORD")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("SECRET-VALUE-456")
    );
}

#[tokio::test]
async fn default_config_is_written_and_bad_config_stops_the_server() {
    let srv = support::start_ours(None, "t");
    let text = std::fs::read_to_string(srv.dir.path().join("config.yml")).unwrap();
    assert!(text.contains("main"), "{text}");
    drop(srv);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yml"),
        "projects:\n- name: main\n  backends:\n  - type: lambda\n    creds: {type: api_key}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dstack-server"))
        .env("DSTACK_SERVER_DIR", dir.path())
        .env("DSTACK_SERVER_PORT", support::free_port().to_string())
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.yml") && err.contains("api_key"),
        "{err}"
    );
}

#[test]
fn cli_config_points_at_this_server() {
    use std::io::{BufRead, BufReader};
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".dstack")).unwrap();
    // An existing default project elsewhere stays the default; `main` is added beside it.
    std::fs::write(
        home.path().join(".dstack/config.yml"),
        "projects:\n- name: other\n  url: http://example:3000\n  token: x\n  default: true\n",
    )
    .unwrap();
    let port = support::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dstack-server"))
        .env("DSTACK_SERVER_DIR", home.path().join("server"))
        .env("DSTACK_SERVER_PORT", port.to_string())
        .env("DSTACK_SERVER_ADMIN_TOKEN", "cli-token")
        .env_remove("DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT")
        .env("HOME", home.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains("is running at") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let cfg: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(home.path().join(".dstack/config.yml")).unwrap(),
    )
    .unwrap();
    let projects = cfg["projects"].as_sequence().unwrap();
    let main = projects.iter().find(|p| p["name"] == "main").unwrap();
    assert_eq!(
        main["url"].as_str().unwrap(),
        format!("http://127.0.0.1:{port}")
    );
    assert_eq!(main["token"].as_str().unwrap(), "cli-token");
    assert_eq!(main["default"].as_bool(), Some(false));
    let other = projects.iter().find(|p| p["name"] == "other").unwrap();
    assert_eq!(other["default"].as_bool(), Some(true));
}
