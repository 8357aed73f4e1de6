//! Job processes: spawning the job's argv in its own process group under a tiny `/bin/sh`
//! wrapper, signalling the group, and telling from `/proc` whether it still lives.
//!
//! The wrapper records the exit status in a file and the output goes to a file (not a pipe),
//! so a job survives an agent restart and the restarted agent still learns how it ended.

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Stdio;

use indexmap::IndexMap;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::agent::error::{AgentError, AgentResult};

/// `sh -c WRAPPER dstack-job <exit file> <argv...>`: runs argv, then writes its exit status
/// to the exit file (atomically) and exits with it.
pub const WRAPPER: &str =
    r#"f=$1; shift; "$@"; s=$?; echo "$s" > "$f.tmp" && mv -f "$f.tmp" "$f"; exit "$s""#;

/// What to spawn.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    /// The job's argv (`commands`).
    pub argv: &'a [String],
    /// The complete environment.
    pub env: &'a IndexMap<String, String>,
    /// The working directory.
    pub cwd: &'a Path,
    /// Where stdout and stderr are appended.
    pub output: &'a Path,
    /// Where the wrapper writes the exit status.
    pub exit_file: &'a Path,
    /// `(uid, gid)` to run as, when switching users.
    pub credentials: Option<(u32, u32)>,
}

/// Spawns the job in a new process group (its pgid is the returned pid).
pub fn spawn(spec: &SpawnSpec<'_>) -> AgentResult<(tokio::process::Child, u32)> {
    if spec.argv.is_empty() {
        return Err(AgentError::Process("the job has no commands".into()));
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.output)
        .map_err(|e| AgentError::io("cannot open job output", spec.output, e))?;
    let err = out
        .try_clone()
        .map_err(|e| AgentError::io("cannot open job output", spec.output, e))?;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("dstack-job")
        .arg(spec.exit_file)
        .args(spec.argv)
        .env_clear()
        .envs(spec.env.iter())
        .current_dir(spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(false);
    if let Some((uid, gid)) = spec.credentials {
        cmd.uid(uid).gid(gid);
    }
    let child = cmd
        .spawn()
        .map_err(|e| AgentError::Process(format!("cannot start the job: {e}")))?;
    let pid = child
        .id()
        .ok_or_else(|| AgentError::Process("the job exited before it started".into()))?;
    Ok((child, pid))
}

/// Sends `signal` to the process group `pgid`; `Ok(false)` when the group no longer exists.
pub fn signal_group(pgid: u32, signal: Signal) -> AgentResult<bool> {
    let pgid =
        i32::try_from(pgid).map_err(|_| AgentError::Process(format!("invalid pgid {pgid}")))?;
    if pgid <= 1 {
        return Err(AgentError::Process(format!(
            "refusing to signal process group {pgid}"
        )));
    }
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(AgentError::Process(format!(
            "cannot signal process group {pgid}: {e}"
        ))),
    }
}

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z`, …
    pub state: char,
    /// The process group.
    pub pgrp: i32,
    /// Start time in clock ticks since boot (identifies the process across pid reuse).
    pub start_time: u64,
}

/// Parses `/proc/<pid>/stat` (the command name may contain spaces and parentheses).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// `/proc/<pid>/stat`, if the process exists.
pub fn read_stat(pid: u32) -> Option<ProcStat> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
}

/// Whether `pid` runs (not a zombie) and, when `start_time` is given, is the same process.
pub fn process_alive(pid: u32, start_time: Option<u64>) -> bool {
    match read_stat(pid) {
        Some(st) => st.state != 'Z' && start_time.is_none_or(|t| t == st.start_time),
        None => false,
    }
}

/// Whether any live (non-zombie) process is in the process group `pgid`. Zombies are ignored
/// because an orphan may wait a while for its reaper.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        // No procfs: fall back to the kernel's answer (zombies count there).
        return i32::try_from(pgid).is_ok_and(|g| killpg(Pid::from_raw(g), None).is_ok());
    };
    entries.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            return false;
        };
        read_stat(pid).is_some_and(|st| st.pgrp == pgid as i32 && st.state != 'Z')
    })
}

/// The status the wrapper wrote, if it did.
pub fn read_exit_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// An exit status as a shell reports it: the code, or 128 + the signal number.
pub fn exit_code(status: std::process::ExitStatus) -> Option<i32> {
    status.code().or_else(|| status.signal().map(|s| 128 + s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "4242 (my (weird) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.pgrp, 4242);
        assert_eq!(st.start_time, 987654);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id();
        let st = read_stat(me).unwrap();
        assert!(process_alive(me, Some(st.start_time)));
        assert!(!process_alive(me, Some(st.start_time + 1)));
        assert!(group_alive(st.pgrp as u32));
    }

    #[test]
    fn refuses_dangerous_groups() {
        assert!(signal_group(0, Signal::SIGTERM).is_err());
        assert!(signal_group(1, Signal::SIGTERM).is_err());
    }

    #[tokio::test]
    async fn wrapper_records_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let exit = dir.path().join("exit");
        let argv = vec!["/bin/sh".to_string(), "-c".into(), "echo hi; exit 3".into()];
        let env: IndexMap<String, String> = [("PATH".to_string(), "/usr/bin:/bin".to_string())]
            .into_iter()
            .collect();
        let spec = SpawnSpec {
            argv: &argv,
            env: &env,
            cwd: dir.path(),
            output: &out,
            exit_file: &exit,
            credentials: None,
        };
        let (mut child, pid) = spawn(&spec).unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(exit_code(status), Some(3));
        assert_eq!(read_exit_file(&exit), Some(3));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hi\n");
        assert!(!group_alive(pid));
    }
}
