//! The job's environment and paths, as dstack's runner prepares them: the `DSTACK_*`
//! variables, the precedence of the layers, the MPI hostfile, and `~`/relative path expansion.

use indexmap::IndexMap;

use crate::agent::protocol::SubmitBody;

/// Agent settings that must not leak into jobs (`DSTACK_SHIM_*`, `DSTACK_RUNNER_*`,
/// `DSTACK_AGENT_*`), and exported Bash functions, which would change what `commands` see.
pub fn is_agent_private(name: &str) -> bool {
    name.starts_with("DSTACK_SHIM_")
        || name.starts_with("DSTACK_RUNNER_")
        || name.starts_with("DSTACK_AGENT_")
        || (name.starts_with("BASH_FUNC_") && (name.ends_with("%%") || name.ends_with("()")))
}

/// Where things are, for the `DSTACK_*` variables.
#[derive(Debug, Clone, Default)]
pub struct JobPaths {
    /// The expanded repo directory (`DSTACK_REPO_DIR`).
    pub repo_dir: String,
    /// The working directory (`DSTACK_WORKING_DIR`).
    pub working_dir: String,
    /// The MPI hostfile (`DSTACK_MPI_HOSTFILE`).
    pub mpi_hostfile: String,
}

/// The `DSTACK_*` variables dstack's runner sets for every job.
pub fn dstack_env(body: &SubmitBody, paths: &JobPaths) -> IndexMap<String, String> {
    let cluster = body.cluster_info.clone().unwrap_or_default();
    let nodes_num = body.job_spec.jobs_per_replica;
    let gpus_per_node = cluster.gpus_per_job;
    let gpus_num = if cluster.gpus_per_node.is_empty() {
        // Old servers omit gpus_per_node: assume homogeneous nodes.
        nodes_num * gpus_per_node
    } else {
        cluster.gpus_per_node.iter().sum()
    };
    let spec = body.run_spec();
    let pairs = [
        ("DSTACK_RUN_ID", body.run.id.clone()),
        ("DSTACK_JOB_ID", body.job_submission.id.clone()),
        ("DSTACK_RUN_NAME", spec.run_name.clone()),
        ("DSTACK_REPO_ID", spec.repo_id.clone()),
        ("DSTACK_REPO_DIR", paths.repo_dir.clone()),
        ("DSTACK_WORKING_DIR", paths.working_dir.clone()),
        ("DSTACK_NODES_IPS", cluster.job_ips.join("\n")),
        ("DSTACK_MASTER_NODE_IP", cluster.master_job_ip.clone()),
        ("DSTACK_NODE_RANK", body.job_spec.job_num.to_string()),
        ("DSTACK_NODES_NUM", nodes_num.to_string()),
        ("DSTACK_GPUS_PER_NODE", gpus_per_node.to_string()),
        ("DSTACK_GPUS_NUM", gpus_num.to_string()),
        ("DSTACK_MPI_HOSTFILE", paths.mpi_hostfile.clone()),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Layers the environment, later layers winning: `base` (the agent's environment minus
/// [`is_agent_private`] names), `defaults` (process-mode defaults such as
/// `PYTHONUNBUFFERED=1`), the `DSTACK_*` variables, the secrets, then the job's own `env`.
/// `home` is set last, as dstack's runner does.
pub fn layer_env(
    base: impl IntoIterator<Item = (String, String)>,
    defaults: &[(&str, &str)],
    dstack: &IndexMap<String, String>,
    body: &SubmitBody,
    home: Option<&str>,
) -> IndexMap<String, String> {
    let mut env: IndexMap<String, String> = base
        .into_iter()
        .filter(|(k, _)| !is_agent_private(k))
        .collect();
    for (k, v) in defaults {
        env.entry((*k).to_string())
            .or_insert_with(|| (*v).to_string());
    }
    env.extend(dstack.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(secrets) = &body.secrets {
        env.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    env.extend(
        body.job_spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    env.retain(|k, _| !(k.starts_with("BASH_FUNC_") && (k.ends_with("%%") || k.ends_with("()"))));
    if let Some(home) = home {
        env.insert("HOME".into(), home.into());
    }
    env
}

/// The MPI hostfile: one `ip slots=N` line per node (`ip` alone for CPU nodes); empty when
/// some IPs are unknown. `slots` defaults to `gpus_per_job` for every node when the server
/// does not send per-node counts.
pub fn mpi_hostfile(
    job_ips: &[String],
    gpus_per_node: &[i64],
    gpus_per_job: i64,
) -> Result<String, String> {
    if job_ips.iter().any(|ip| ip.is_empty()) {
        return Ok(String::new());
    }
    let slots: Vec<i64> = if gpus_per_node.is_empty() {
        vec![gpus_per_job; job_ips.len()]
    } else {
        gpus_per_node.to_vec()
    };
    if slots.len() != job_ips.len() {
        return Err(format!(
            "gpus_per_node length {} != job_ips length {}",
            slots.len(),
            job_ips.len()
        ));
    }
    Ok(job_ips
        .iter()
        .zip(slots)
        .map(|(ip, n)| {
            if n == 0 {
                format!("{ip}\n")
            } else {
                format!("{ip} slots={n}\n")
            }
        })
        .collect())
}

/// dstack's path expansion: `~` and `~/x` are relative to `home`; other relative paths to
/// `base` (when given); the result is cleaned. `~user` is not supported.
pub fn expand_path(path: &str, base: Option<&str>, home: &str) -> Result<String, String> {
    let path = clean(path);
    if path == "~" {
        return Ok(clean(home));
    }
    if let Some(rest) = path.strip_prefix("~/") {
        return Ok(clean(&format!("{home}/{rest}")));
    }
    if path.starts_with('~') {
        return Err("~username syntax is not supported".into());
    }
    match base {
        Some(base) if !base.is_empty() && !path.starts_with('/') => {
            Ok(clean(&format!("{base}/{path}")))
        }
        _ => Ok(path),
    }
}

/// Lexical path cleaning (Go's `path.Clean`).
pub fn clean(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// `*_VISIBLE_DEVICES` for a task limited to some GPUs (none when it may use all of them).
pub fn visible_devices(
    vendor: Option<crate::agent::host::GpuVendor>,
    ids: &[String],
    all: bool,
) -> Vec<(String, String)> {
    use crate::agent::host::GpuVendor;
    if all {
        return Vec::new();
    }
    let list = ids.join(",");
    match vendor {
        Some(GpuVendor::Nvidia) => vec![("CUDA_VISIBLE_DEVICES".into(), list)],
        Some(GpuVendor::Amd) => vec![("ROCR_VISIBLE_DEVICES".into(), list)],
        Some(GpuVendor::Intel) => vec![("HABANA_VISIBLE_DEVICES".into(), list)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::{ClusterInfo, SubmitBody};

    fn body() -> SubmitBody {
        let mut b = SubmitBody::default();
        b.run.id = "run-id".into();
        b.run.run_spec.run_name = "cool-cat-1".into();
        b.run.run_spec.repo_id = "repo".into();
        b.job_submission.id = "sub-id".into();
        b.job_spec.job_num = 1;
        b.job_spec.jobs_per_replica = 2;
        b.job_spec.env.insert("A".into(), "job".into());
        b.job_spec
            .env
            .insert("DSTACK_RUN_NAME".into(), "overridden".into());
        b.secrets = Some(
            [
                ("A".to_string(), "secret".to_string()),
                ("S".into(), "s".into()),
            ]
            .into_iter()
            .collect(),
        );
        b.cluster_info = Some(ClusterInfo {
            job_ips: vec!["10.0.0.1".into(), "10.0.0.2".into()],
            master_job_ip: "10.0.0.1".into(),
            gpus_per_job: 4,
            gpus_per_node: vec![],
        });
        b
    }

    #[test]
    fn dstack_variables() {
        let paths = JobPaths {
            repo_dir: "/r".into(),
            working_dir: "/w".into(),
            mpi_hostfile: "/h".into(),
        };
        let env = dstack_env(&body(), &paths);
        assert_eq!(env["DSTACK_RUN_NAME"], "cool-cat-1");
        assert_eq!(env["DSTACK_NODE_RANK"], "1");
        assert_eq!(env["DSTACK_NODES_NUM"], "2");
        assert_eq!(env["DSTACK_GPUS_PER_NODE"], "4");
        assert_eq!(env["DSTACK_GPUS_NUM"], "8");
        assert_eq!(env["DSTACK_NODES_IPS"], "10.0.0.1\n10.0.0.2");
        assert_eq!(env["DSTACK_MASTER_NODE_IP"], "10.0.0.1");
        assert_eq!(env["DSTACK_JOB_ID"], "sub-id");
        assert_eq!(env.len(), 13);
    }

    #[test]
    fn layering_precedence() {
        let b = body();
        let dstack = dstack_env(&b, &JobPaths::default());
        let base = vec![
            ("PATH".to_string(), "/bin".to_string()),
            ("A".into(), "base".into()),
            ("DSTACK_SHIM_HOME".into(), "/root/.dstack".into()),
            ("BASH_FUNC_f%%".into(), "() { :; }".into()),
            ("HOME".into(), "/root".into()),
        ];
        let env = layer_env(
            base,
            &[("PYTHONUNBUFFERED", "1")],
            &dstack,
            &b,
            Some("/home/u"),
        );
        assert_eq!(env["A"], "job");
        assert_eq!(env["S"], "s");
        assert_eq!(env["DSTACK_RUN_NAME"], "overridden");
        assert_eq!(env["PYTHONUNBUFFERED"], "1");
        assert_eq!(env["HOME"], "/home/u");
        assert!(!env.contains_key("DSTACK_SHIM_HOME"));
        assert!(!env.contains_key("BASH_FUNC_f%%"));
    }

    /// A TPU VM's agent environment file sets `PJRT_DEVICE=TPU` (dstack's shim forwards it
    /// to the job): the agent's own environment is the base layer, so jobs see it.
    #[test]
    fn host_env_reaches_jobs() {
        let b = body();
        let dstack = dstack_env(&b, &JobPaths::default());
        let base = vec![
            ("PJRT_DEVICE".to_string(), "TPU".to_string()),
            ("DSTACK_AGENT_HOME".into(), "/root/.dstack".into()),
        ];
        let env = layer_env(base, &[], &dstack, &b, None);
        assert_eq!(env["PJRT_DEVICE"], "TPU");
        assert!(!env.contains_key("DSTACK_AGENT_HOME"));
    }

    #[test]
    fn hostfile() {
        let ips = vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()];
        assert_eq!(
            mpi_hostfile(&ips, &[], 8).unwrap(),
            "10.0.0.1 slots=8\n10.0.0.2 slots=8\n"
        );
        assert_eq!(
            mpi_hostfile(&ips, &[0, 2], 0).unwrap(),
            "10.0.0.1\n10.0.0.2 slots=2\n"
        );
        assert_eq!(mpi_hostfile(&["".to_string()], &[], 1).unwrap(), "");
        assert!(mpi_hostfile(&ips, &[1], 1).is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(expand_path("~", None, "/home/u/").unwrap(), "/home/u");
        assert_eq!(
            expand_path("~/x/../y", None, "/home/u").unwrap(),
            "/home/u/y"
        );
        assert_eq!(expand_path("repo", Some("/w"), "/h").unwrap(), "/w/repo");
        assert_eq!(
            expand_path("/abs/./p/", Some("/w"), "/h").unwrap(),
            "/abs/p"
        );
        assert_eq!(expand_path("rel", None, "/h").unwrap(), "rel");
        assert!(expand_path("~bob/x", None, "/h").is_err());
        assert_eq!(clean("/.."), "/");
        assert_eq!(clean("a/../.."), "..");
    }

    #[test]
    fn gpu_visibility() {
        use crate::agent::host::GpuVendor;
        let ids = vec!["0".to_string(), "2".to_string()];
        assert_eq!(
            visible_devices(Some(GpuVendor::Nvidia), &ids, false)[0].1,
            "0,2"
        );
        assert!(visible_devices(Some(GpuVendor::Nvidia), &ids, true).is_empty());
        assert!(visible_devices(None, &ids, false).is_empty());
    }
}
