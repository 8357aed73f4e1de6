//! The typed client's suite for users, projects, members, secrets and backends, run against
//! our server and, unchanged, against the real dstack server (PyPI `dstack[server]==0.22.5`).
//! Any difference between the two is a bug on our side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use dstack_sdk::ErrorKind;
use dstack_sdk::client::Client;
use dstack_sdk::models::users::{GlobalRole, ProjectRole};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Peer {
    Ours,
    Python,
}

fn kind<T: std::fmt::Debug>(r: dstack_sdk::Result<T>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

async fn suite(url: &str, admin_token: &str, peer: Peer) {
    let admin = Client::new(url, admin_token).unwrap();
    assert!(admin.server_version().await.unwrap().is_some() || peer == Peer::Python);

    // Users.
    let me = admin.users().get_my_user().await.unwrap();
    assert_eq!(me.user.username, "admin");
    assert_eq!(me.user.global_role, GlobalRole::Admin);
    assert_eq!(me.creds.token, admin_token);
    let alice = admin
        .users()
        .create("alice", GlobalRole::User, Some("alice@example.com"))
        .await
        .unwrap();
    assert_eq!(alice.username, "alice");
    assert!(alice.permissions.can_create_projects);
    admin
        .users()
        .create("bob", GlobalRole::User, None)
        .await
        .unwrap();
    assert_eq!(
        kind(admin.users().create("ALICE", GlobalRole::User, None).await),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(
            admin
                .users()
                .create("bad name", GlobalRole::User, None)
                .await
        ),
        ErrorKind::Validation
    );
    let names: Vec<String> = admin
        .users()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    for n in ["admin", "alice", "bob"] {
        assert!(names.contains(&n.to_string()), "{names:?}");
    }
    let alice_token = admin.users().get("alice").await.unwrap().creds.token;
    let bob_token = admin.users().get("bob").await.unwrap().creds.token;
    let as_alice = admin.with_token(&alice_token);
    let as_bob = admin.with_token(&bob_token);
    let only_me: Vec<String> = as_alice
        .users()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(only_me, vec!["alice".to_string()]);
    assert!(
        as_alice
            .users()
            .get_my_user()
            .await
            .unwrap()
            .ssh_private_key
            .is_some()
    );
    assert_eq!(
        kind(
            as_alice
                .users()
                .create("carol", GlobalRole::User, None)
                .await
        ),
        ErrorKind::Forbidden
    );
    assert_eq!(kind(as_alice.users().get("bob").await), ErrorKind::NotFound);
    assert_eq!(
        kind(admin.with_token("not-a-token").users().get_my_user().await),
        ErrorKind::Unauthenticated
    );

    // Projects and members.
    let p = as_alice.projects().create("proj-a", false).await.unwrap();
    assert_eq!(p.project_name, "proj-a");
    assert_eq!(p.owner.username, "alice");
    assert_eq!(p.members.len(), 1);
    assert_eq!(p.members[0].project_role, ProjectRole::Admin);
    assert_eq!(
        kind(as_bob.projects().create("PROJ-A", false).await),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(as_bob.project("proj-a").get().await),
        ErrorKind::Forbidden
    );
    assert_eq!(
        kind(as_bob.project("no-such-project").get().await),
        ErrorKind::NotFound
    );
    let admin_sees: Vec<String> = admin
        .projects()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.project_name)
        .collect();
    assert!(admin_sees.contains(&"proj-a".to_string()) && admin_sees.contains(&"main".to_string()));
    let bob_sees: Vec<String> = as_bob
        .projects()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.project_name)
        .collect();
    assert!(!bob_sees.contains(&"proj-a".to_string()), "{bob_sees:?}");

    let p = as_alice
        .project("proj-a")
        .members()
        .add(&[("bob", ProjectRole::User)])
        .await
        .unwrap();
    assert_eq!(p.members.len(), 2);
    let got = as_bob.project("proj-a").get().await.unwrap();
    assert!(
        got.members
            .iter()
            .any(|m| m.user.username == "bob" && m.project_role == ProjectRole::User)
    );
    assert_eq!(
        kind(
            as_bob
                .project("proj-a")
                .members()
                .add(&[("admin", ProjectRole::User)])
                .await
        ),
        ErrorKind::Forbidden
    );
    assert_eq!(
        kind(
            as_alice
                .project("proj-a")
                .members()
                .add(&[("nobody", ProjectRole::User)])
                .await
        ),
        ErrorKind::Validation
    );

    // Secrets: project admins only (managers need the server setting).
    let secrets = as_alice.project("proj-a").secrets();
    let s = secrets.set("HF_TOKEN", "hf_123").await.unwrap();
    assert_eq!(s.value.as_deref(), Some("hf_123"));
    secrets.set("HF_TOKEN", "hf_456").await.unwrap();
    assert_eq!(
        secrets.get("HF_TOKEN").await.unwrap().value.as_deref(),
        Some("hf_456")
    );
    let listed = secrets.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].value, None);
    assert_eq!(
        kind(as_bob.project("proj-a").secrets().list().await),
        ErrorKind::Forbidden
    );
    assert_eq!(kind(secrets.get("MISSING").await), ErrorKind::NotFound);
    assert!(secrets.delete(&["MISSING"]).await.is_err());
    secrets.delete(&["HF_TOKEN"]).await.unwrap();
    assert!(secrets.list().await.unwrap().is_empty());

    // Backends: malformed YAML is a 400 on both servers.
    assert_eq!(
        kind(
            as_alice
                .project("proj-a")
                .backends()
                .create_yaml("type: [unclosed")
                .await
        ),
        ErrorKind::Validation
    );
    assert_eq!(
        kind(
            as_bob
                .project("proj-a")
                .backends()
                .create_yaml("type: lambda")
                .await
        ),
        ErrorKind::Forbidden
    );
    if peer == Peer::Ours {
        // Shape-only validation until the Lambda backend's credential check lands: the real
        // server calls Lambda's API here, which this machine cannot reach.
        let b = as_alice.project("proj-a").backends();
        b.create_yaml(
            "type: lambda\nregions: [us-east-1]\ncreds:\n  type: api_key\n  api_key: KEY123\n",
        )
        .await
        .unwrap();
        assert_eq!(
            kind(
                b.create_yaml("type: lambda\ncreds:\n  type: api_key\n  api_key: K\n")
                    .await
            ),
            ErrorKind::AlreadyExists
        );
        assert!(b.get_yaml("lambda").await.unwrap().contains("KEY123"));
        let proj = as_alice.project("proj-a").get().await.unwrap();
        let shown = serde_json::to_string(&proj.backends).unwrap();
        assert!(
            shown.contains("lambda") && !shown.contains("KEY123"),
            "{shown}"
        );
        assert_eq!(
            kind(b.create_yaml("type: nosuchcloud\n").await),
            ErrorKind::Validation
        );
        b.delete(&["lambda"]).await.unwrap();
        assert!(
            as_alice
                .project("proj-a")
                .get()
                .await
                .unwrap()
                .backends
                .is_empty()
        );
    }

    // Leaving, tokens, deletion.
    as_bob
        .project("proj-a")
        .members()
        .remove(&["bob"])
        .await
        .unwrap();
    assert_eq!(
        kind(as_bob.project("proj-a").get().await),
        ErrorKind::Forbidden
    );
    let refreshed = as_alice.users().refresh_token("alice").await.unwrap();
    assert_ne!(refreshed.creds.token, alice_token);
    assert_eq!(
        kind(as_alice.users().get_my_user().await),
        ErrorKind::Unauthenticated
    );
    let as_alice = admin.with_token(&refreshed.creds.token);
    assert_eq!(
        kind(as_alice.users().refresh_token("bob").await),
        ErrorKind::Forbidden
    );
    as_alice.projects().delete(&["proj-a"]).await.unwrap();
    assert_eq!(
        kind(as_alice.project("proj-a").get().await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(admin.users().delete(&["admin"]).await),
        ErrorKind::Validation
    );
    admin.users().delete(&["alice", "bob"]).await.unwrap();
    assert_eq!(
        kind(as_alice.users().get_my_user().await),
        ErrorKind::Unauthenticated
    );
    // A deleted name is free again.
    admin
        .users()
        .create("alice", GlobalRole::User, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn suite_against_our_server() {
    let srv = support::start_ours(None, "ours-admin-token");
    assert_eq!(srv.admin_token, "ours-admin-token");
    suite(&srv.url, &srv.admin_token, Peer::Ours).await;
}

#[tokio::test]
async fn suite_against_real_dstack_server() {
    let srv = support::start_python("py-admin-token");
    suite(&srv.url, &srv.admin_token, Peer::Python).await;
}

#[tokio::test]
async fn suite_on_embedded_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine_opts = dstack_sdk::engine::EngineOptions::new(dir.path());
    let (engine, info) = dstack_sdk::engine::Engine::open(engine_opts).await.unwrap();
    let client = Client::with_engine(engine, &info.admin_token);
    let p = client.projects().create("embedded", false).await.unwrap();
    assert_eq!(p.owner.username, "admin");
    assert!(
        client
            .projects()
            .list()
            .await
            .unwrap()
            .iter()
            .any(|p| p.project_name == "main")
    );
}

#[tokio::test]
async fn restart_keeps_committed_writes_and_admin_token() {
    let mut srv = support::start_ours(None, "restart-token");
    let admin = Client::new(&srv.url, &srv.admin_token).unwrap();
    admin
        .users()
        .create("dave", GlobalRole::User, None)
        .await
        .unwrap();
    admin.projects().create("kept", false).await.unwrap();
    admin.project("kept").secrets().set("S", "v").await.unwrap();
    srv.kill9();
    let dir = std::mem::replace(&mut srv.dir, tempfile::tempdir().unwrap());
    // Restart on the same directory with a different env token: the stored one wins.
    let srv2 = support::start_ours(Some(dir), "ignored-token");
    assert_eq!(srv2.admin_token, "restart-token");
    let admin = Client::new(&srv2.url, "restart-token").unwrap();
    assert!(
        admin
            .users()
            .list()
            .await
            .unwrap()
            .iter()
            .any(|u| u.username == "dave")
    );
    assert_eq!(
        admin
            .project("kept")
            .secrets()
            .get("S")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("v")
    );
}
