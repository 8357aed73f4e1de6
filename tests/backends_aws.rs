#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The AWS backend against moto (`moto_server` on loopback, from the oracle venv that
//! `scripts/oracle-venv.sh` creates), with a small fake EC2 Query endpoint in front of it.
//!
//! The fake forwards every request to moto unchanged, except what a test scripts: error
//! answers (`InsufficientInstanceCapacity`, `RequestLimitExceeded`, `AuthFailure`, quota
//! errors) and the calls moto does not implement (`CreatePlacementGroup`,
//! `DeletePlacementGroup`, `DescribeCapacityReservations`, Service Quotas
//! `ListServiceQuotas`), which it answers itself in the EC2 Query XML / AWS JSON shapes. It
//! also records every action, so tests can count calls and inspect request parameters.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use dstack_sdk::backends::aws::AwsCompute;
use dstack_sdk::backends::common::endpoint::Endpoints;
use dstack_sdk::backends::common::provision::{MAX_OFFERS_TRIED, create_first_available};
use dstack_sdk::backends::common::retry::Backoff;
use dstack_sdk::backends::compute::ComputeWithSweep;
use dstack_sdk::backends::{
    BackendError, BackendSettings, Compute, ComputeWithCreateInstance, ComputeWithPlacementGroups,
    InstanceConfiguration, PlacementGroupConfig,
};
use dstack_sdk::models::backends::AnyBackendConfigWithCreds;
use dstack_sdk::models::backends::aws::AwsBackendConfigWithCreds;
use dstack_sdk::models::offers::{InstanceAvailability, InstanceOfferWithAvailability};
use dstack_sdk::offers::{Catalog, SharedCatalog};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

const REGION: &str = "us-east-1";
const PROJECT_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGtestkeyforprojectmain project@dstack";

// ---------------------------------------------------------------------------------------------
// moto

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

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
        "moto_server not found at {}: run `bash {}` (it installs moto[server] into the oracle venv)",
        bin.display(),
        repo_root().join("scripts/oracle-venv.sh").display()
    );
    bin
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

async fn start_moto() -> Moto {
    let port = free_port();
    let child = Command::new(moto_server_bin())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Moto { addr, child }
}

// ---------------------------------------------------------------------------------------------
// The fake EC2 Query endpoint (a recording, scriptable proxy in front of moto)

#[derive(Clone)]
struct Rule {
    action: String,
    body_contains: Option<String>,
    times: Option<usize>,
    status: u16,
    body: String,
}

#[derive(Clone, Debug)]
struct Logged {
    action: String,
    body: String,
}

#[derive(Default)]
struct FakeState {
    rules: Vec<Rule>,
    log: Vec<Logged>,
    quotas: Option<Vec<(String, f64)>>,
}

#[derive(Clone)]
struct Fake {
    url: String,
    state: Arc<Mutex<FakeState>>,
}

fn ec2_error(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>{message}</Message></Error></Errors><RequestID>fake-request</RequestID></Response>"
    )
}

impl Fake {
    async fn start(upstream: SocketAddr) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(FakeState::default()));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, upstream, st).await;
                });
            }
        });
        Fake { url, state }
    }

    /// Answers `action` (optionally only requests whose body contains `needle`) with `status`
    /// and `body`, `times` times (`None` = always).
    fn rule(
        &self,
        action: &str,
        needle: Option<&str>,
        times: Option<usize>,
        status: u16,
        body: String,
    ) {
        self.state.lock().unwrap().rules.push(Rule {
            action: action.into(),
            body_contains: needle.map(str::to_string),
            times,
            status,
            body,
        });
    }

    fn error(
        &self,
        action: &str,
        needle: Option<&str>,
        times: Option<usize>,
        status: u16,
        code: &str,
    ) {
        self.rule(
            action,
            needle,
            times,
            status,
            ec2_error(code, &format!("fake {code}")),
        );
    }

    fn set_quotas(&self, quotas: &[(&str, f64)]) {
        self.state.lock().unwrap().quotas =
            Some(quotas.iter().map(|(c, v)| (c.to_string(), *v)).collect());
    }

    fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    fn count(&self, action: &str) -> usize {
        self.log().iter().filter(|l| l.action == action).count()
    }

    fn bodies(&self, action: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| l.action == action)
            .map(|l| l.body)
            .collect()
    }
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve(
    mut sock: TcpStream,
    upstream: SocketAddr,
    state: Arc<Mutex<FakeState>>,
) -> std::io::Result<()> {
    // Read the head.
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| -> Option<String> {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body_bytes = buf[head_end..].to_vec();
    let body = url_decode(&String::from_utf8_lossy(&body_bytes));
    let target = header("x-amz-target");
    let action = match &target {
        Some(t) => t.rsplit('.').next().unwrap_or_default().to_string(),
        None => body
            .split('&')
            .find_map(|kv| kv.strip_prefix("Action="))
            .unwrap_or("?")
            .to_string(),
    };
    let auth = header("authorization").unwrap_or_default();

    let canned: Option<(u16, String, &str)> = {
        let mut st = state.lock().unwrap();
        st.log.push(Logged {
            action: action.clone(),
            body: body.clone(),
        });
        if auth.contains("Credential=BADKEY/") {
            Some((
                401,
                ec2_error(
                    "AuthFailure",
                    "AWS was not able to validate the provided access credentials",
                ),
                "text/xml",
            ))
        } else if action == "ListServiceQuotas" && st.quotas.is_some() {
            let quotas: Vec<_> = st
                .quotas
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(c, v)| json!({"ServiceCode": "ec2", "QuotaCode": c, "QuotaName": c, "Value": v}))
                .collect();
            Some((
                200,
                json!({"Quotas": quotas}).to_string(),
                "application/x-amz-json-1.1",
            ))
        } else {
            let idx = st.rules.iter().position(|r| {
                r.action == action
                    && r.times != Some(0)
                    && r.body_contains
                        .as_ref()
                        .is_none_or(|n| body.contains(n.as_str()))
            });
            idx.map(|i| {
                let r = &mut st.rules[i];
                if let Some(t) = r.times.as_mut() {
                    *t -= 1;
                }
                (r.status, r.body.clone(), "text/xml")
            })
        }
    };
    let response: Vec<u8> = match canned {
        Some((status, body, ctype)) => format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
        None => {
            // Forward unchanged (but one request per connection).
            let mut up = TcpStream::connect(upstream).await?;
            let mut fwd = String::new();
            for (i, line) in head.split("\r\n").enumerate() {
                if line.is_empty() {
                    continue;
                }
                if i > 0 && line.to_ascii_lowercase().starts_with("connection:") {
                    continue;
                }
                fwd.push_str(line);
                fwd.push_str("\r\n");
            }
            fwd.push_str("connection: close\r\n\r\n");
            up.write_all(fwd.as_bytes()).await?;
            up.write_all(&body_bytes).await?;
            let mut resp = Vec::new();
            up.read_to_end(&mut resp).await?;
            resp
        }
    };
    sock.write_all(&response).await?;
    sock.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fixtures

struct Env {
    _moto: Moto,
    fake: Fake,
    ec2: aws_sdk_ec2::Client,
}

async fn env() -> Env {
    let moto = start_moto().await;
    let fake = Fake::start(moto.addr).await;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new(REGION))
        .endpoint_url(format!("http://{}", moto.addr))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .http_client(http)
        .build();
    Env {
        _moto: moto,
        fake,
        ec2: aws_sdk_ec2::Client::from_conf(conf),
    }
}

impl Env {
    fn settings(&self) -> BackendSettings {
        let catalog = Catalog::from_dir(repo_root().join("tests/fixtures/catalog/aws")).unwrap();
        BackendSettings::new("srv-test")
            .with_catalog(SharedCatalog::new(catalog))
            .with_endpoints(Endpoints::none().with("aws", self.fake.url.clone()))
            .with_retry(Backoff::fast(Duration::from_millis(20), 5))
    }

    async fn compute(&self, extra: serde_json::Value) -> AwsCompute {
        let mut cfg = json!({
            "type": "aws",
            "creds": {"type": "access_key", "access_key": "AKIDTEST", "secret_key": "secret"},
            "regions": [REGION],
            "os_images": {
                "cpu": {"name": "dstack-test-cpu-*", "owner": "self", "user": "dstack"},
                "nvidia": {"name": "dstack-test-cuda-*", "owner": "self", "user": "ubuntu"}
            },
            "tags": {"team": "ml"}
        });
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let parsed = AnyBackendConfigWithCreds::parse(&cfg, true).unwrap();
        let AnyBackendConfigWithCreds::Aws(c) = parsed else {
            panic!("not aws")
        };
        let c: AwsBackendConfigWithCreds = c;
        AwsCompute::new(c, self.settings()).await.unwrap()
    }

    async fn register_images(&self) -> (String, String) {
        let mut ids = Vec::new();
        for name in ["dstack-test-cpu-1", "dstack-test-cuda-1"] {
            let out = self
                .ec2
                .register_image()
                .name(name)
                .root_device_name("/dev/sda1")
                .send()
                .await
                .unwrap();
            ids.push(out.image_id().unwrap().to_string());
        }
        (ids[0].clone(), ids[1].clone())
    }

    /// moto's default VPC has no internet gateway: add one, like real AWS default VPCs.
    async fn make_default_vpc_public(&self) -> String {
        let vpcs = self
            .ec2
            .describe_vpcs()
            .filters(Filter::builder().name("is-default").values("true").build())
            .send()
            .await
            .unwrap();
        let vpc = vpcs.vpcs()[0].vpc_id().unwrap().to_string();
        let igw = self.ec2.create_internet_gateway().send().await.unwrap();
        let igw = igw
            .internet_gateway()
            .unwrap()
            .internet_gateway_id()
            .unwrap()
            .to_string();
        self.ec2
            .attach_internet_gateway()
            .internet_gateway_id(&igw)
            .vpc_id(&vpc)
            .send()
            .await
            .unwrap();
        let rts = self
            .ec2
            .describe_route_tables()
            .filters(Filter::builder().name("vpc-id").values(&vpc).build())
            .send()
            .await
            .unwrap();
        let main = rts.route_tables()[0].route_table_id().unwrap().to_string();
        self.ec2
            .create_route()
            .route_table_id(main)
            .destination_cidr_block("0.0.0.0/0")
            .gateway_id(igw)
            .send()
            .await
            .unwrap();
        vpc
    }

    async fn describe(&self, id: &str) -> aws_sdk_ec2::types::Instance {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
        out.reservations()[0].instances()[0].clone()
    }
}

fn instance_config(name: &str) -> InstanceConfiguration {
    InstanceConfiguration::new("main", Uuid::new_v4(), name, vec![PROJECT_KEY.to_string()])
        .with_fleet(Uuid::new_v4())
        .with_user("alice")
}

fn pick<'a>(
    offers: &'a [InstanceOfferWithAvailability],
    name: &str,
    spot: bool,
) -> &'a InstanceOfferWithAvailability {
    offers
        .iter()
        .find(|o| {
            o.instance.name == name && o.instance.resources.spot == spot && o.region == REGION
        })
        .unwrap_or_else(|| panic!("no offer {name} spot={spot}"))
}

async fn poll_until_hostname(
    compute: &dyn Compute,
    jpd: &mut dstack_sdk::models::jobs::JobProvisioningData,
) -> u32 {
    let mut polls = 0;
    while jpd.hostname.is_none() {
        polls += 1;
        assert!(polls < 50, "instance never got a hostname");
        compute.update_provisioning_data(jpd).await.unwrap();
        if jpd.hostname.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    polls
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_running_terminate_on_demand_and_spot() {
    let env = env().await;
    let (cpu_ami, _) = env.register_images().await;
    env.make_default_vpc_public().await;
    let compute = env.compute(json!({})).await;
    compute.validate_credentials().await.unwrap();

    let offers = compute.get_offers(None).await.unwrap();
    // Only supported families, only the configured region; moto has no Service Quotas, so
    // availability is unknown, and zones come from DescribeInstanceTypeOfferings.
    assert!(offers.iter().all(|o| o.region == REGION));
    assert!(!offers.iter().any(|o| o.instance.name == "x2iedn.xlarge"));
    let od = pick(&offers, "t3.micro", false);
    assert_eq!(od.availability, InstanceAvailability::Unknown);
    assert!(
        od.availability_zones
            .as_ref()
            .unwrap()
            .contains(&"us-east-1a".to_string())
    );
    let prices: Vec<f64> = offers.iter().map(|o| o.price).collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "cheapest first");

    for spot in [false, true] {
        let offer = pick(&offers, "t3.micro", spot);
        let config = instance_config(if spot { "fleet-spot-0" } else { "fleet-0" });
        let calls_before = env.fake.log().len();
        let t0 = Instant::now();
        let mut jpd = compute.create_instance(offer, &config, None).await.unwrap();
        let t_created = t0.elapsed();
        assert_eq!(jpd.hostname, None, "create returns at once");
        assert_eq!(jpd.username, "dstack");
        assert_eq!(jpd.region, REGION);
        assert!(jpd.dockerized && jpd.public_ip_enabled);
        let polls = poll_until_hostname(&compute, &mut jpd).await;
        let t_running = t0.elapsed();

        let inst = env.describe(&jpd.instance_id).await;
        assert_eq!(jpd.hostname.as_deref(), inst.public_ip_address());
        assert_eq!(jpd.internal_ip.as_deref(), inst.private_ip_address());
        assert_eq!(jpd.ssh_port, Some(22));
        assert_eq!(inst.image_id(), Some(cpu_ami.as_str()));
        assert_eq!(
            inst.instance_lifecycle().map(|l| l.as_str()),
            spot.then_some("spot")
        );
        let tags: std::collections::HashMap<&str, &str> = inst
            .tags()
            .iter()
            .map(|t| (t.key().unwrap(), t.value().unwrap()))
            .collect();
        assert_eq!(tags["owner"], "dstack");
        assert_eq!(tags["dstack_server_id"], "srv-test");
        assert_eq!(tags["dstack_project"], "main");
        assert_eq!(tags["dstack_instance_id"], config.instance_id.to_string());
        assert_eq!(
            tags["dstack_fleet_id"],
            config.fleet_id.unwrap().to_string()
        );
        assert_eq!(tags["dstack_user"], "alice");
        assert_eq!(tags["Name"], config.instance_name);
        assert_eq!(tags["team"], "ml");
        // The sweep finds it by the server tag, with its instance row id and zone.
        let listed = compute.list_tagged_instances("srv-test").await.unwrap();
        let found = listed
            .iter()
            .find(|t| t.instance_id == jpd.instance_id)
            .expect("listed by the server tag");
        assert_eq!(found.region, REGION);
        assert_eq!(found.zone, jpd.availability_zone);
        assert_eq!(
            found.dstack_instance_id.as_deref(),
            Some(config.instance_id.to_string().as_str())
        );
        assert!(found.created_at.is_some());
        assert!(
            compute
                .list_tagged_instances("another-server")
                .await
                .unwrap()
                .is_empty()
        );

        // The user data is our cloud-config with the agent bootstrap and the project key.
        let ud = env
            .ec2
            .describe_instance_attribute()
            .instance_id(&jpd.instance_id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        use base64::Engine as _;
        let ud = base64::engine::general_purpose::STANDARD
            .decode(ud.user_data().unwrap().value().unwrap())
            .unwrap();
        let ud = String::from_utf8(ud).unwrap();
        assert!(ud.starts_with("#cloud-config\n"), "{ud}");
        assert!(ud.contains(PROJECT_KEY));
        assert!(ud.contains("systemctl enable --now dstack-agent.service"));
        let run_body = env.fake.bodies("RunInstances").pop().unwrap();
        assert_eq!(
            run_body.contains("InstanceMarketOptions.MarketType=spot"),
            spot,
            "{run_body}"
        );

        compute
            .terminate_instance(&jpd.instance_id, &jpd.region, jpd.backend_data.as_deref())
            .await
            .unwrap();
        let t_done = t0.elapsed();
        let ec2_calls = env.fake.log().len() - calls_before;
        let state = env.describe(&jpd.instance_id).await;
        let state = state.state().unwrap().name().unwrap().as_str().to_string();
        assert!(state == "shutting-down" || state == "terminated", "{state}");
        // Idempotent: terminating again (and an id that never existed) succeeds.
        compute
            .terminate_instance(&jpd.instance_id, &jpd.region, jpd.backend_data.as_deref())
            .await
            .unwrap();
        compute
            .terminate_instance("i-0123456789abcdef0", REGION, None)
            .await
            .unwrap();
        eprintln!(
            "TIMING spot={spot}: create {:?}, running after {:?} ({polls} polls), terminated after {:?}; {ec2_calls} API calls: {:?}",
            t_created,
            t_running,
            t_done,
            env.fake.log()[calls_before..calls_before + ec2_calls]
                .iter()
                .map(|l| l.action.as_str())
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_subnets_vpc_name_and_vpc_ids() {
    let env = env().await;
    env.register_images().await;
    // A named VPC with one public subnet (own route table → IGW) and one private subnet (main
    // table: local route + a NAT-like egress route through an ENI is not needed; local only).
    let vpc = env
        .ec2
        .create_vpc()
        .cidr_block("10.10.0.0/16")
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Vpc)
                .tags(Tag::builder().key("Name").value("dstack-vpc").build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let mk_subnet = |cidr: &'static str, az: &'static str| {
        let ec2 = env.ec2.clone();
        let vpc = vpc.clone();
        async move {
            ec2.create_subnet()
                .vpc_id(vpc)
                .cidr_block(cidr)
                .availability_zone(az)
                .send()
                .await
                .unwrap()
                .subnet()
                .unwrap()
                .subnet_id()
                .unwrap()
                .to_string()
        }
    };
    let public = mk_subnet("10.10.1.0/24", "us-east-1a").await;
    let private = mk_subnet("10.10.2.0/24", "us-east-1b").await;
    let igw = env.ec2.create_internet_gateway().send().await.unwrap();
    let igw = igw
        .internet_gateway()
        .unwrap()
        .internet_gateway_id()
        .unwrap()
        .to_string();
    env.ec2
        .attach_internet_gateway()
        .internet_gateway_id(&igw)
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap();
    let rt = env
        .ec2
        .create_route_table()
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap();
    let rt = rt
        .route_table()
        .unwrap()
        .route_table_id()
        .unwrap()
        .to_string();
    env.ec2
        .create_route()
        .route_table_id(&rt)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&igw)
        .send()
        .await
        .unwrap();
    env.ec2
        .associate_route_table()
        .route_table_id(&rt)
        .subnet_id(&public)
        .send()
        .await
        .unwrap();

    // public_ips: false + vpc_name → the private subnet; the hostname is the private IP.
    let compute = env
        .compute(json!({"vpc_name": "dstack-vpc", "public_ips": false}))
        .await;
    let offers = compute.get_offers(None).await.unwrap();
    let offer = pick(&offers, "t3.micro", false);
    let mut jpd = compute
        .create_instance(offer, &instance_config("private-0"), None)
        .await
        .unwrap();
    assert!(!jpd.public_ip_enabled);
    poll_until_hostname(&compute, &mut jpd).await;
    let inst = env.describe(&jpd.instance_id).await;
    assert_eq!(inst.subnet_id(), Some(private.as_str()));
    assert_eq!(inst.vpc_id(), Some(vpc.as_str()));
    assert_eq!(jpd.hostname.as_deref(), inst.private_ip_address());
    assert_eq!(jpd.availability_zone.as_deref(), Some("us-east-1b"));
    let run = env.fake.bodies("RunInstances").pop().unwrap();
    assert!(
        run.contains("NetworkInterface.1.AssociatePublicIpAddress=false"),
        "{run}"
    );

    // vpc_ids (public IPs) → the public subnet of the same VPC.
    let compute = env
        .compute(json!({"vpc_ids": {REGION: vpc.clone()}, "default_vpcs": false}))
        .await;
    let mut jpd = compute
        .create_instance(offer, &instance_config("public-0"), None)
        .await
        .unwrap();
    poll_until_hostname(&compute, &mut jpd).await;
    let inst = env.describe(&jpd.instance_id).await;
    assert_eq!(inst.subnet_id(), Some(public.as_str()));
    assert_eq!(jpd.hostname.as_deref(), inst.public_ip_address());

    // No VPC for the region and default VPCs off → a config error naming the fix.
    let compute = env
        .compute(json!({"vpc_ids": {"eu-west-1": vpc.clone()}, "default_vpcs": false}))
        .await;
    let err = compute
        .create_instance(offer, &instance_config("none-0"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("vpc_ids"), "{err}");
    // An unknown vpc_name too.
    let compute = env.compute(json!({"vpc_name": "nope"})).await;
    let err = compute
        .create_instance(offer, &instance_config("none-1"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_os_images_for_gpu_instances() {
    let env = env().await;
    let (_, cuda_ami) = env.register_images().await;
    env.make_default_vpc_public().await;
    let compute = env.compute(json!({})).await;
    let offers = compute.get_offers(None).await.unwrap();
    let offer = pick(&offers, "g4dn.xlarge", false);
    assert_eq!(offer.instance.resources.gpus[0].name, "T4");
    let jpd = compute
        .create_instance(offer, &instance_config("gpu-0"), None)
        .await
        .unwrap();
    assert_eq!(jpd.username, "ubuntu");
    let inst = env.describe(&jpd.instance_id).await;
    assert_eq!(inst.image_id(), Some(cuda_ami.as_str()));
    // An os_images name that matches nothing is a config error that names the setting.
    let compute = env
        .compute(json!({"os_images": {"cpu": {"name": "missing-*", "owner": "self", "user": "x"}}}))
        .await;
    let offer = pick(&offers, "t3.micro", false);
    let err = compute
        .create_instance(offer, &instance_config("cpu-0"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("os_images"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_fallback_across_zones_and_offers() {
    let env = env().await;
    env.register_images().await;
    env.make_default_vpc_public().await;
    let compute = env.compute(json!({})).await;
    let offers = compute.get_offers(None).await.unwrap();
    let t3 = pick(&offers, "t3.micro", false).clone();

    // The first zone has no capacity → the next zone.
    env.fake.error(
        "RunInstances",
        None,
        Some(1),
        500,
        "InsufficientInstanceCapacity",
    );
    let mut offer = t3.clone();
    offer.availability_zones = Some(vec!["us-east-1a".into(), "us-east-1b".into()]);
    let jpd = compute
        .create_instance(&offer, &instance_config("zone-0"), None)
        .await
        .unwrap();
    assert_eq!(jpd.availability_zone.as_deref(), Some("us-east-1b"));
    let runs = env.fake.bodies("RunInstances");
    assert_eq!(runs.len(), 2);
    assert!(runs[0].contains("Placement.AvailabilityZone=us-east-1a"));
    assert!(runs[1].contains("Placement.AvailabilityZone=us-east-1b"));

    // An offer whose every zone fails → the next offer.
    env.fake.error(
        "RunInstances",
        Some("InstanceType=g4dn.xlarge"),
        None,
        500,
        "InsufficientInstanceCapacity",
    );
    let gpu = pick(&offers, "g4dn.xlarge", false).clone();
    let list = vec![gpu.clone(), t3.clone()];
    let (chosen, _jpd) = create_first_available(&compute, &list, &instance_config("offer-0"), None)
        .await
        .unwrap();
    assert_eq!(chosen.instance.name, "t3.micro");

    // Every offer fails → NoCapacity after at most 25 offers.
    env.fake.error(
        "RunInstances",
        None,
        None,
        500,
        "InsufficientInstanceCapacity",
    );
    let before = env.fake.count("RunInstances");
    let mut one_zone = t3.clone();
    one_zone.availability_zones = Some(vec!["us-east-1c".into()]);
    let many = vec![one_zone; 30];
    let err = create_first_available(&compute, &many, &instance_config("offer-1"), None)
        .await
        .unwrap_err();
    assert!(err.is_no_capacity(), "{err:?}");
    assert_eq!(env.fake.count("RunInstances") - before, MAX_OFFERS_TRIED);
    let sdk: dstack_sdk::Error = err.into();
    assert_eq!(sdk.kind(), dstack_sdk::ErrorKind::NoCapacity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_give_availability_and_quota_errors_stop_the_offer() {
    let env = env().await;
    env.register_images().await;
    env.make_default_vpc_public().await;
    // Standard families: 16 vCPUs; G: 0 (no quota); P: 96.
    env.fake.set_quotas(&[
        ("L-1216C47A", 16.0),
        ("L-DB2E81BA", 0.0),
        ("L-417A185B", 96.0),
    ]);
    let compute = env.compute(json!({})).await;
    let offers = compute.get_offers(None).await.unwrap();
    assert_eq!(
        pick(&offers, "t3.micro", false).availability,
        InstanceAvailability::Available
    );
    assert_eq!(
        pick(&offers, "g4dn.xlarge", false).availability,
        InstanceAvailability::NoQuota
    );
    assert_eq!(
        pick(&offers, "p4d.24xlarge", false).availability,
        InstanceAvailability::Available
    );
    // Spot quota code not returned → unknown.
    assert_eq!(
        pick(&offers, "t3.micro", true).availability,
        InstanceAvailability::Unknown
    );
    assert_eq!(env.fake.count("ListServiceQuotas"), 1);

    // An account-wide quota error stops the offer after one RunInstances (no zone loop).
    env.fake
        .error("RunInstances", None, Some(1), 400, "VcpuLimitExceeded");
    let err = compute
        .create_instance(
            pick(&offers, "t3.micro", false),
            &instance_config("q-0"),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.is_no_capacity(), "{err:?}");
    assert!(err.to_string().contains("VcpuLimitExceeded"), "{err}");
    assert_eq!(env.fake.count("RunInstances"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_backoff() {
    let env = env().await;
    env.register_images().await;
    env.make_default_vpc_public().await;
    let compute = env.compute(json!({})).await;
    let offers = compute.get_offers(None).await.unwrap();
    let offer = pick(&offers, "t3.micro", false);
    env.fake
        .error("RunInstances", None, Some(2), 503, "RequestLimitExceeded");
    let t0 = Instant::now();
    let mut jpd = compute
        .create_instance(offer, &instance_config("throttled-0"), None)
        .await
        .unwrap();
    // Two throttled attempts, then success; back-off 20 ms + 40 ms.
    assert_eq!(env.fake.count("RunInstances"), 3);
    assert!(t0.elapsed() >= Duration::from_millis(60));

    env.fake
        .error("DescribeInstances", None, Some(2), 429, "Throttling");
    poll_until_hostname(&compute, &mut jpd).await;
    assert!(env.fake.count("DescribeInstances") >= 3);

    // Throttled for good → a retryable cloud error after max_attempts (5) attempts.
    env.fake.error(
        "TerminateInstances",
        None,
        None,
        503,
        "RequestLimitExceeded",
    );
    let err = compute
        .terminate_instance(&jpd.instance_id, REGION, jpd.backend_data.as_deref())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(env.fake.count("TerminateInstances"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_credentials_are_reported_as_such() {
    let env = env().await;
    let good = env.compute(json!({})).await;
    good.validate_credentials().await.unwrap();
    let bad = env
        .compute(
            json!({"creds": {"type": "access_key", "access_key": "BADKEY", "secret_key": "x"}}),
        )
        .await;
    let err = bad.validate_credentials().await.unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidCredentials { .. }),
        "{err:?}"
    );
    assert!(
        !err.to_string().contains("secret"),
        "no credentials in messages"
    );
    let sdk: dstack_sdk::Error = err.into();
    assert_eq!(sdk.kind(), dstack_sdk::ErrorKind::InvalidCredentials);
    assert_eq!(sdk.kind().dstack_code(), "invalid_credentials");
    // Not retried: one attempt.
    assert_eq!(env.fake.count("DescribeRegions"), 2);

    // The generic entry point gives the same backend.
    let cfg = AnyBackendConfigWithCreds::parse(
        &json!({"type": "aws", "creds": {"type": "access_key", "access_key": "BADKEY", "secret_key": "x"}, "regions": [REGION]}),
        true,
    )
    .unwrap();
    let compute = dstack_sdk::backends::for_config(&cfg, &env.settings())
        .await
        .unwrap();
    assert!(compute.capabilities().create_instance);
    assert!(matches!(
        compute.validate_credentials().await,
        Err(BackendError::InvalidCredentials { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_chain_without_credentials_is_invalid_credentials() {
    // `creds: {type: default}` uses the SDK's default chain (env, profile, web identity, ECS,
    // IMDS). With none of them configured it must say `invalid_credentials`, not fail
    // obscurely. Where the environment does provide AWS credentials this check cannot be
    // made, and the test says so.
    let configured = [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ]
    .iter()
    .find(|v| std::env::var_os(v).is_some());
    let home_creds = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".aws/credentials").exists())
        .unwrap_or(false);
    if configured.is_some() || home_creds {
        eprintln!(
            "NOTE: AWS credentials are configured in this environment ({configured:?}, ~/.aws/credentials: {home_creds}); the no-credentials check is not applicable here"
        );
        return;
    }
    let env = env().await;
    let compute = env.compute(json!({"creds": {"type": "default"}})).await;
    let t0 = Instant::now();
    let err = compute.validate_credentials().await.unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidCredentials { .. }),
        "{err:?}"
    );
    eprintln!("default chain gave up after {:?}: {err}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_vanishing_while_provisioning_fails_the_instance() {
    let env = env().await;
    env.register_images().await;
    env.make_default_vpc_public().await;
    let compute = env.compute(json!({})).await;
    let offers = compute.get_offers(None).await.unwrap();
    let jpd = compute
        .create_instance(
            pick(&offers, "t3.micro", true),
            &instance_config("gone-0"),
            None,
        )
        .await
        .unwrap();
    // Terminated behind our back (spot interruption, console) → a provisioning error.
    env.ec2
        .terminate_instances()
        .instance_ids(&jpd.instance_id)
        .send()
        .await
        .unwrap();
    let mut j = jpd.clone();
    let err = compute.update_provisioning_data(&mut j).await.unwrap_err();
    assert!(matches!(err, BackendError::Provisioning { .. }), "{err:?}");

    // Not found: tolerated right after launch (eventual consistency), an error later.
    let mut fresh = jpd.clone();
    fresh.instance_id = "i-0aaaaaaaaaaaaaaaa".into();
    compute.update_provisioning_data(&mut fresh).await.unwrap();
    assert_eq!(fresh.hostname, None);
    let mut old = fresh.clone();
    old.backend_data = Some(json!({"launched_at": 1_000_000, "public_ips": true}).to_string());
    let err = compute
        .update_provisioning_data(&mut old)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("vanished"), "{err}");
}

const PG_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<CreatePlacementGroupResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r1</requestId><return>true</return><placementGroup><groupName>fleet-pg</groupName><groupId>pg-0123456789abcdef0</groupId><strategy>cluster</strategy><state>available</state></placementGroup></CreatePlacementGroupResponse>"#;
const PG_DELETE_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DeletePlacementGroupResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r2</requestId><return>true</return></DeletePlacementGroupResponse>"#;
const CR_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeCapacityReservationsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r3</requestId><capacityReservationSet><item><capacityReservationId>cr-0123456789abcdef0</capacityReservationId><instanceType>g5.8xlarge</instanceType><availabilityZone>us-east-1c</availabilityZone><state>active</state><availableInstanceCount>1</availableInstanceCount><totalInstanceCount>1</totalInstanceCount><reservationType>default</reservationType></item></capacityReservationSet></DescribeCapacityReservationsResponse>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_groups_efa_and_reservations_via_the_fake() {
    // moto answers CreatePlacementGroup, DeletePlacementGroup and DescribeCapacityReservations
    // with HTTP 500 NotImplemented: the fake answers them in EC2's XML shape.
    let env = env().await;
    env.register_images().await;
    env.make_default_vpc_public().await;
    env.fake
        .rule("CreatePlacementGroup", None, None, 200, PG_XML.into());
    env.fake.rule(
        "DeletePlacementGroup",
        None,
        Some(1),
        200,
        PG_DELETE_XML.into(),
    );
    env.fake.error(
        "DeletePlacementGroup",
        None,
        None,
        400,
        "InvalidPlacementGroup.Unknown",
    );
    env.fake.rule(
        "DescribeCapacityReservations",
        None,
        None,
        200,
        CR_XML.into(),
    );
    let compute = env.compute(json!({})).await;
    let pg = compute
        .create_placement_group(&PlacementGroupConfig {
            name: "fleet-pg".into(),
            project_name: "main".into(),
            region: REGION.into(),
            fleet_id: Some(Uuid::new_v4()),
        })
        .await
        .unwrap();
    assert_eq!(pg.name, "fleet-pg");
    assert!(
        pg.backend_data
            .as_deref()
            .unwrap()
            .contains("pg-0123456789abcdef0")
    );
    let body = env.fake.bodies("CreatePlacementGroup").pop().unwrap();
    assert!(
        body.contains("Strategy=cluster") && body.contains("dstack_server_id"),
        "{body}"
    );

    let offers = compute.get_offers(None).await.unwrap();
    let g5 = pick(&offers, "g5.8xlarge", false);
    assert!(compute.is_suitable_placement_group(&pg, g5));
    // Burstable types cannot join a cluster placement group (dstack's rule).
    assert!(!compute.is_suitable_placement_group(&pg, pick(&offers, "t3.micro", false)));
    let config = instance_config("cluster-0").with_reservation("cr-0123456789abcdef0");
    let mut jpd = compute
        .create_instance(g5, &config, Some(&pg))
        .await
        .unwrap();
    // The reservation pins the zone; the placement group and an EFA interface are requested.
    assert_eq!(jpd.availability_zone.as_deref(), Some("us-east-1c"));
    assert_eq!(jpd.reservation.as_deref(), Some("cr-0123456789abcdef0"));
    let run = env.fake.bodies("RunInstances").pop().unwrap();
    for needle in [
        "Placement.GroupName=fleet-pg",
        "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId=cr-0123456789abcdef0",
        "NetworkInterface.1.InterfaceType=efa",
        "NetworkInterface.1.NetworkCardIndex=0",
    ] {
        assert!(run.contains(needle), "{needle} missing in {run}");
    }
    assert_eq!(env.fake.count("DescribeInstanceTypes"), 1);
    poll_until_hostname(&compute, &mut jpd).await;
    assert!(
        jpd.backend_data
            .as_deref()
            .unwrap()
            .contains("\"efa_interfaces\":1")
    );

    // A reservation for another type → no capacity for this offer.
    let t3 = pick(&offers, "t3.micro", false);
    let err = compute
        .create_instance(
            t3,
            &instance_config("cluster-1").with_reservation("cr-0123456789abcdef0"),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.is_no_capacity(), "{err:?}");

    compute
        .terminate_instance(&jpd.instance_id, REGION, jpd.backend_data.as_deref())
        .await
        .unwrap();
    compute.delete_placement_group(&pg).await.unwrap();
    compute.delete_placement_group(&pg).await.unwrap(); // missing = success
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_efa_instances_get_an_elastic_ip_released_on_terminate() {
    let env = env().await;
    env.register_images().await;
    env.make_default_vpc_public().await;
    env.fake
        .rule("CreatePlacementGroup", None, None, 200, PG_XML.into());
    let compute = env.compute(json!({})).await;
    let pg = compute
        .create_placement_group(&PlacementGroupConfig {
            name: "fleet-pg".into(),
            project_name: "main".into(),
            region: REGION.into(),
            fleet_id: None,
        })
        .await
        .unwrap();
    let offers = compute.get_offers(None).await.unwrap();
    let p4d = pick(&offers, "p4d.24xlarge", false);
    let mut jpd = compute
        .create_instance(p4d, &instance_config("p4d-0"), Some(&pg))
        .await
        .unwrap();
    let run = env.fake.bodies("RunInstances").pop().unwrap();
    assert!(
        run.contains("NetworkInterface.4.NetworkCardIndex=3"),
        "{run}"
    );
    assert!(!run.contains("AssociatePublicIpAddress"), "{run}");
    poll_until_hostname(&compute, &mut jpd).await;
    let data = jpd.backend_data.clone().unwrap();
    assert!(data.contains("eip_allocation_id"), "{data}");
    assert_eq!(env.fake.count("AllocateAddress"), 1);
    assert_eq!(env.fake.count("AssociateAddress"), 1);
    compute
        .terminate_instance(&jpd.instance_id, REGION, Some(&data))
        .await
        .unwrap();
    assert_eq!(env.fake.count("ReleaseAddress"), 1);
    let addrs = env.ec2.describe_addresses().send().await.unwrap();
    assert!(addrs.addresses().is_empty(), "EIP released");
    drop(env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_instance_lookups_are_cached_and_coalesced() {
    let env = env().await;
    env.register_images().await;
    env.make_default_vpc_public().await;
    let compute = env.compute(json!({})).await;
    let offers = compute.get_offers(None).await.unwrap();
    let offer = pick(&offers, "t3.micro", false);
    const LOOKUPS: [&str; 5] = [
        "DescribeImages",
        "DescribeVpcs",
        "DescribeSubnets",
        "DescribeRouteTables",
        "DescribeSecurityGroups",
    ];
    let counts = |env: &Env| -> Vec<usize> { LOOKUPS.iter().map(|a| env.fake.count(a)).collect() };

    // Five creates in one region: each lookup once, the group created once.
    let before_calls = compute.api_calls();
    let before = counts(&env);
    for i in 0..5 {
        compute
            .create_instance(offer, &instance_config(&format!("cached-{i}")), None)
            .await
            .unwrap();
    }
    let after = counts(&env);
    for (i, action) in LOOKUPS.iter().enumerate() {
        assert_eq!(after[i] - before[i], 1, "{action}");
    }
    assert_eq!(env.fake.count("CreateSecurityGroup"), 1);
    assert_eq!(env.fake.count("AuthorizeSecurityGroupIngress"), 1);
    assert_eq!(env.fake.count("RunInstances"), 5);
    let per_instance = (compute.api_calls() - before_calls) as f64 / 5.0;
    eprintln!("AWS calls per create_instance (5 sequential): {per_instance}");
    // 5 lookups + 2 for the new group, once; then one RunInstances per instance.
    assert_eq!(compute.api_calls() - before_calls, 5 + 2 + 5);

    // Five parallel first creates for another project: one security group lookup/create.
    let configs: Vec<InstanceConfiguration> = (0..5)
        .map(|i| {
            InstanceConfiguration::new(
                "other",
                Uuid::new_v4(),
                format!("parallel-{i}"),
                vec![PROJECT_KEY.to_string()],
            )
        })
        .collect();
    let before = counts(&env);
    let results = futures_util::future::join_all(
        configs
            .iter()
            .map(|c| compute.create_instance(offer, c, None)),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let after = counts(&env);
    // Image and network are still cached; the new project's group is looked up once.
    assert_eq!(after[0] - before[0], 0);
    assert_eq!(after[1] - before[1], 0);
    assert_eq!(after[4] - before[4], 1);
    assert_eq!(env.fake.count("CreateSecurityGroup"), 2);
    assert_eq!(env.fake.count("RunInstances"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_zones_are_cached_across_get_offers() {
    let env = env().await;
    env.fake.set_quotas(&[("L-1216C47A", 16.0)]);
    let compute = env.compute(json!({})).await;
    let first = compute.get_offers(None).await.unwrap();
    let calls = compute.api_calls();
    assert_eq!(env.fake.count("ListServiceQuotas"), 1);
    let offerings = env.fake.count("DescribeInstanceTypeOfferings");
    assert!(offerings >= 1);
    // A second refresh, and one with requirements, reuse both.
    let second = compute.get_offers(None).await.unwrap();
    let mut req = dstack_sdk::models::resources::Requirements::new(
        dstack_sdk::models::resources::ResourcesSpec::unconstrained(),
    );
    req.spot = Some(false);
    let on_demand = compute.get_offers(Some(&req)).await.unwrap();
    assert!(!on_demand.is_empty());
    assert_eq!(env.fake.count("ListServiceQuotas"), 1);
    assert_eq!(env.fake.count("DescribeInstanceTypeOfferings"), offerings);
    assert_eq!(compute.api_calls(), calls);
    let view = |o: &[InstanceOfferWithAvailability]| -> Vec<(String, bool, InstanceAvailability, Option<Vec<String>>)> {
        o.iter()
            .map(|o| {
                (
                    o.instance.name.clone(),
                    o.instance.resources.spot,
                    o.availability,
                    o.availability_zones.clone(),
                )
            })
            .collect()
    };
    assert_eq!(view(&first), view(&second));
    assert_eq!(
        pick(&second, "t3.micro", false).availability,
        InstanceAvailability::Available
    );
    assert!(
        pick(&second, "t3.micro", false)
            .availability_zones
            .as_ref()
            .is_some_and(|z| !z.is_empty())
    );

    // Concurrent first refreshes of a new backend make each call once too.
    let compute = env.compute(json!({})).await;
    let before_q = env.fake.count("ListServiceQuotas");
    let before_z = env.fake.count("DescribeInstanceTypeOfferings");
    let results = futures_util::future::join_all((0..4).map(|_| compute.get_offers(None))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(env.fake.count("ListServiceQuotas") - before_q, 1);
    assert_eq!(
        env.fake.count("DescribeInstanceTypeOfferings") - before_z,
        offerings
    );
}

/// Service Quotas failing with a 5xx (moto has none) leaves availability unknown and is not
/// asked again for `QUOTAS_RETRY_AFTER`: a burst of lookups makes one failing call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_quotas_are_not_asked_again_at_once() {
    let env = env().await;
    env.fake.rule(
        "ListServiceQuotas",
        None,
        None,
        503,
        json!({"__type": "ServiceUnavailableException", "message": "fake outage"}).to_string(),
    );
    let compute = env.compute(json!({})).await;
    for _ in 0..5 {
        let offers = compute.get_offers(None).await.unwrap();
        assert_eq!(
            pick(&offers, "t3.micro", false).availability,
            InstanceAvailability::Unknown
        );
    }
    assert_eq!(env.fake.count("ListServiceQuotas"), 1);
}
