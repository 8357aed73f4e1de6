#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The engine's sweep of leaked cloud instances and Elastic IPs against moto (`moto_server`
//! from the oracle venv that `scripts/oracle-venv.sh` creates).
//!
//! The engine builds its AWS backend from the stored config, and the EC2 endpoint override
//! comes from `DSTACK_ENDPOINT_URL_AWS`, which must be set before the process reads it (and
//! the crate forbids the `unsafe` `set_var`): the test starts moto, then runs itself again as
//! a child process with the variable set; the child does the work.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use dstack_sdk::client::Client;
use dstack_sdk::engine::{Engine, EngineOptions};
use serde_json::json;
use uuid::Uuid;

const REGION: &str = "us-east-1";
const SERVER_ID: &str = "srv-sweep";
/// Set in the child process: the moto URL.
const CHILD_ENV: &str = "DSTACK_SWEEP_TEST_MOTO_URL";

fn moto_server_bin() -> PathBuf {
    let venv = std::env::var_os("DSTACK_ORACLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/dstack-sdk/oracle-venv")
        });
    let bin = venv.join("bin/moto_server");
    assert!(
        bin.exists(),
        "moto_server not found at {}: run scripts/oracle-venv.sh",
        bin.display()
    );
    bin
}

struct Moto {
    addr: SocketAddr,
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto() -> Moto {
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(moto_server_bin())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto { addr, child }
}

fn ec2_client(url: &str) -> aws_sdk_ec2::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .http_client(http)
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

/// Starts a `t3.micro` with `tags` directly in moto; returns its id.
async fn run_tagged(ec2: &aws_sdk_ec2::Client, ami: &str, tags: &[(&str, &str)]) -> String {
    let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
    for (k, v) in tags {
        spec = spec.tags(Tag::builder().key(*k).value(*v).build());
    }
    let out = ec2
        .run_instances()
        .image_id(ami)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec.build())
        .send()
        .await
        .unwrap();
    out.instances()[0].instance_id().unwrap().to_string()
}

/// Allocates an Elastic IP with `tags` directly in moto; returns its allocation id.
async fn allocate_tagged(ec2: &aws_sdk_ec2::Client, tags: &[(&str, String)]) -> String {
    let mut spec = TagSpecification::builder().resource_type(ResourceType::ElasticIp);
    for (k, v) in tags {
        spec = spec.tags(Tag::builder().key(*k).value(v).build());
    }
    let out = ec2
        .allocate_address()
        .domain(aws_sdk_ec2::types::DomainType::Vpc)
        .tag_specifications(spec.build())
        .send()
        .await
        .unwrap();
    out.allocation_id().unwrap().to_string()
}

/// The allocation ids of the Elastic IPs that exist.
async fn addresses(ec2: &aws_sdk_ec2::Client) -> Vec<String> {
    let out = ec2.describe_addresses().send().await.unwrap();
    let mut ids: Vec<String> = out
        .addresses()
        .iter()
        .filter_map(|a| a.allocation_id().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn state(ec2: &aws_sdk_ec2::Client, id: &str) -> String {
    let out = ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    out.reservations()[0].instances()[0]
        .state()
        .unwrap()
        .name()
        .unwrap()
        .as_str()
        .to_string()
}

#[test]
fn sweep_terminates_only_old_instances_the_database_does_not_know() {
    if let Ok(url) = std::env::var(CHILD_ENV) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child(url));
        return;
    }
    let moto = start_moto();
    let url = format!("http://{}", moto.addr);
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "sweep_terminates_only_old_instances_the_database_does_not_know",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &url)
        .env("DSTACK_ENDPOINT_URL_AWS", &url)
        .status()
        .unwrap();
    assert!(status.success(), "the child test failed: {status}");
}

async fn child(url: String) {
    let tmp = tempfile::tempdir().unwrap();
    let server_dir = tmp.path().join("server");
    std::fs::create_dir_all(server_dir.join("data")).unwrap();
    std::fs::write(server_dir.join("data").join("server_id"), SERVER_ID).unwrap();
    let mut o = EngineOptions::new(&server_dir);
    o.config_disabled = true;
    // No pipelines (and no periodic sweep): the test drives one pass at a time.
    o.pipelines.enabled = false;
    let (engine, info) = Engine::open(o).await.unwrap();
    let client = Client::with_engine(engine.clone(), &info.admin_token);
    client
        .project("main")
        .backends()
        .create(&json!({
            "type": "aws",
            "creds": {"type": "access_key", "access_key": "AKIDTEST", "secret_key": "secret"},
            "regions": [REGION],
        }))
        .await
        .unwrap();

    // Instance rows: one IDLE, one TERMINATED, one IDLE whose provisioning data names
    // another cloud instance (the one tagged with it is left over from an earlier attempt).
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        server_dir.join("data").join("sqlite.db").display()
    ))
    .await
    .unwrap();
    let (project_id,): (String,) = sqlx::query_as("SELECT id FROM projects WHERE name = 'main'")
        .fetch_one(&db)
        .await
        .unwrap();
    let (idle_row, terminated_row, superseded_row) = (
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
    );
    let current = json!({"backend": "aws", "instance_id": "i-0123456789abcdef0"}).to_string();
    for (num, (id, status, jpd)) in [
        (&idle_row, "IDLE", None),
        (&terminated_row, "TERMINATED", None),
        (&superseded_row, "IDLE", Some(current)),
    ]
    .into_iter()
    .enumerate()
    {
        sqlx::query(
            "INSERT INTO instances (id, name, instance_num, project_id, created_at, \
             last_processed_at, status, backend, region, job_provisioning_data) \
             VALUES ($1, $2, $3, $4, '2024-01-01T00:00:00.000000+00:00', \
             '2024-01-01T00:00:00.000000+00:00', $5, 'aws', $6, $7)",
        )
        .bind(id)
        .bind(format!("fleet-{num}"))
        .bind(num as i64)
        .bind(&project_id)
        .bind(status)
        .bind(REGION)
        .bind(jpd)
        .execute(&db)
        .await
        .unwrap();
    }

    // Cloud instances.
    let ec2 = ec2_client(&url);
    let ami = ec2
        .register_image()
        .name("sweep-test")
        .root_device_name("/dev/sda1")
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();
    let ours = |instance: &str| -> Vec<(&'static str, String)> {
        vec![
            ("owner", "dstack".to_string()),
            ("dstack_server_id", SERVER_ID.to_string()),
            ("dstack_instance_id", instance.to_string()),
        ]
    };
    let run = |tags: Vec<(&'static str, String)>| {
        let ec2 = ec2.clone();
        let ami = ami.clone();
        async move {
            let t: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run_tagged(&ec2, &ami, &t).await
        }
    };
    let unknown = run(ours(&Uuid::new_v4().to_string())).await;
    let idle = run(ours(&idle_row)).await;
    let terminated = run(ours(&terminated_row)).await;
    let superseded = run(ours(&superseded_row)).await;
    let no_instance_tag = run(vec![("dstack_server_id", SERVER_ID.to_string())]).await;
    let other_server = run(vec![
        ("dstack_server_id", "another-server".to_string()),
        ("dstack_instance_id", Uuid::new_v4().to_string()),
    ])
    .await;

    // Elastic IPs, tagged as `create_instance` tags them (with the allocation time).
    let allocated_now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let eip = |instance: &str| {
        let mut tags = ours(instance);
        tags.push(("dstack_allocated_at", allocated_now.clone()));
        tags
    };
    let eip_unknown = allocate_tagged(&ec2, &eip(&Uuid::new_v4().to_string())).await;
    let eip_terminated = allocate_tagged(&ec2, &eip(&terminated_row)).await;
    let eip_idle = allocate_tagged(&ec2, &eip(&idle_row)).await;
    // Associated (with an instance that is not ours): left alone whatever its row says.
    let eip_associated = allocate_tagged(&ec2, &eip(&Uuid::new_v4().to_string())).await;
    ec2.associate_address()
        .allocation_id(&eip_associated)
        .instance_id(&other_server)
        .send()
        .await
        .unwrap();
    // No allocation time: its age is unknown, so it is never released.
    let eip_no_time = allocate_tagged(&ec2, &ours(&Uuid::new_v4().to_string())).await;
    let eip_other = allocate_tagged(
        &ec2,
        &[
            ("dstack_server_id", "another-server".to_string()),
            ("dstack_instance_id", Uuid::new_v4().to_string()),
        ],
    )
    .await;
    let all_eips = sorted(vec![
        eip_unknown.clone(),
        eip_terminated.clone(),
        eip_idle.clone(),
        eip_associated.clone(),
        eip_no_time.clone(),
        eip_other.clone(),
    ]);

    // Within the grace period nothing is touched.
    let report = engine
        .sweep_cloud_instances(Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.listed, 5 + 5, "{report:?}");
    assert!(report.terminated.is_empty(), "{report:?}");
    let leaked = sorted(vec![
        unknown.clone(),
        terminated.clone(),
        superseded.clone(),
        eip_unknown.clone(),
        eip_terminated.clone(),
    ]);
    let mut young = leaked.clone();
    young.push(eip_no_time.clone());
    assert_eq!(sorted(report.too_young.clone()), sorted(young));
    for id in [
        &unknown,
        &idle,
        &terminated,
        &superseded,
        &no_instance_tag,
        &other_server,
    ] {
        assert_eq!(state(&ec2, id).await, "running", "{id}");
    }
    assert_eq!(addresses(&ec2).await, all_eips);

    // Past it, the instance without a row, the one whose row is TERMINATED, the one its row
    // no longer names, and the unassociated addresses of unknown or terminated rows go.
    let report = engine.sweep_cloud_instances(Duration::ZERO).await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(sorted(report.terminated.clone()), leaked);
    assert_eq!(report.too_young, std::slice::from_ref(&eip_no_time));
    for id in [&unknown, &terminated, &superseded] {
        let s = state(&ec2, id).await;
        assert!(s == "shutting-down" || s == "terminated", "{id}: {s}");
    }
    for id in [&idle, &no_instance_tag, &other_server] {
        assert_eq!(state(&ec2, id).await, "running", "{id}");
    }
    assert_eq!(
        addresses(&ec2).await,
        sorted(vec![eip_idle, eip_associated, eip_no_time, eip_other])
    );

    // A later pass finds nothing more to do.
    let report = engine.sweep_cloud_instances(Duration::ZERO).await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.listed, 2 + 3, "{report:?}");
    assert!(report.terminated.is_empty(), "{report:?}");
}
