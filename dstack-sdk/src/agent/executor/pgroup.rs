//! Job processes: spawning the job's argv under a pseudo-terminal (as dstack's runner does)
//! in a session of its own under a tiny `/bin/sh` wrapper, signalling the job's processes, and
//! telling from `/proc` whether any still lives.
//!
//! The wrapper records the exit status in a file, and the terminal's output is copied into a
//! file (not read by the agent itself) by a `cat` process holding the terminal's master side:
//! so a job survives an agent restart and the restarted agent still learns how it ended and
//! what it printed. The job's stdout and stderr are merged, as on any terminal. Unlike
//! dstack's runner, the terminal's `\n` → `\r\n` output translation (`ONLCR`) is turned off,
//! so logs keep the job's own line ends (a client's own terminal adds the `\r` on display).

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Stdio;

use indexmap::IndexMap;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::termios;
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
    /// Where the terminal's output is appended.
    pub output: &'a Path,
    /// Where the wrapper writes the exit status.
    pub exit_file: &'a Path,
    /// `(uid, gid)` to run as, when switching users.
    pub credentials: Option<(u32, u32)>,
}

/// A started job.
#[derive(Debug)]
pub struct Spawned {
    /// The wrapper process (session leader; its pid is the pgid and the session id).
    pub child: std::process::Child,
    /// The wrapper's pid.
    pub pid: u32,
    /// The process copying the terminal's output into the output file.
    pub copier: tokio::process::Child,
    /// The copier's pid.
    pub copier_pid: Option<u32>,
}

fn pty_error(e: pty_process::Error) -> AgentError {
    AgentError::Process(format!("cannot set up the job's terminal: {e}"))
}

/// Spawns the job on a new pseudo-terminal, as the leader of a new session (its pid is also
/// its pgid), with `cat` copying the terminal's output into `spec.output`.
pub fn spawn(spec: &SpawnSpec<'_>) -> AgentResult<Spawned> {
    if spec.argv.is_empty() {
        return Err(AgentError::Process("the job has no commands".into()));
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.output)
        .map_err(|e| AgentError::io("cannot open job output", spec.output, e))?;
    let (pty, pts) = pty_process::blocking::open().map_err(pty_error)?;
    // Keep `\n` as `\n` in the captured output.
    let mut modes = termios::tcgetattr(&pts)
        .map_err(|e| AgentError::Process(format!("cannot read the terminal's modes: {e}")))?;
    modes.output_flags.remove(termios::OutputFlags::ONLCR);
    termios::tcsetattr(&pts, termios::SetArg::TCSANOW, &modes)
        .map_err(|e| AgentError::Process(format!("cannot set the terminal's modes: {e}")))?;
    if let Some((uid, _)) = spec.credentials {
        // The job's user must own its terminal (as dstack's runner arranges).
        std::os::unix::fs::fchown(&pts, Some(uid), None).map_err(|e| {
            AgentError::Process(format!("cannot hand the terminal to uid {uid}: {e}"))
        })?;
    }
    // The copier starts first: it holds the master side, so the terminal outlives the agent.
    let master: OwnedFd = pty.into();
    let copier = tokio::process::Command::new("cat")
        .stdin(Stdio::from(master))
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| AgentError::Process(format!("cannot start the output copier: {e}")))?;
    let copier_pid = copier.id();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("dstack-job")
        .arg(spec.exit_file)
        .args(spec.argv)
        .env_clear()
        .envs(spec.env.iter())
        .current_dir(spec.cwd);
    if let Some((uid, gid)) = spec.credentials {
        cmd.uid(uid).gid(gid);
    }
    // The pts is consumed (and closed here) by spawn: once the job's processes are gone the
    // copier reads EOF/EIO and exits.
    let child = pty_process::blocking::Command::from(cmd)
        .spawn(pts)
        .map_err(|e| AgentError::Process(format!("cannot start the job: {e}")))?;
    let pid = child.id();
    Ok(Spawned {
        child,
        pid,
        copier,
        copier_pid,
    })
}

/// Sends `signal` to the job `pgid`: its process group and every other process of the session
/// it leads (interactive shells move their jobs into process groups of their own). `Ok(false)`
/// when none of them exists any more.
pub fn signal_group(pgid: u32, signal: Signal) -> AgentResult<bool> {
    let pgid_i =
        i32::try_from(pgid).map_err(|_| AgentError::Process(format!("invalid pgid {pgid}")))?;
    if pgid_i <= 1 {
        return Err(AgentError::Process(format!(
            "refusing to signal process group {pgid}"
        )));
    }
    let mut any = match killpg(Pid::from_raw(pgid_i), signal) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(e) => {
            return Err(AgentError::Process(format!(
                "cannot signal process group {pgid}: {e}"
            )));
        }
    };
    let me = std::process::id();
    for (pid, st) in members(pgid) {
        if st.pgrp == pgid_i || pid == me {
            continue;
        }
        if let Ok(p) = i32::try_from(pid)
            && kill(Pid::from_raw(p), signal).is_ok()
        {
            any = true;
        }
    }
    Ok(any)
}

/// Live processes of the job `pgid`: in its process group or in the session it leads.
fn members(pgid: u32) -> Vec<(u32, ProcStat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let id = pgid as i32;
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let st = read_stat(pid)?;
            ((st.pgrp == id || st.session == id) && st.state != 'Z').then_some((pid, st))
        })
        .collect()
}

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z`, …
    pub state: char,
    /// The process group.
    pub pgrp: i32,
    /// The session.
    pub session: i32,
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
        session: f.get(3)?.parse().ok()?,
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

/// Whether any live (non-zombie) process belongs to the job `pgid` (its process group or the
/// session it leads). Zombies are ignored because an orphan may wait a while for its reaper.
pub fn group_alive(pgid: u32) -> bool {
    if std::fs::metadata("/proc/self/stat").is_err() {
        // No procfs: fall back to the kernel's answer (zombies count there).
        return i32::try_from(pgid).is_ok_and(|g| killpg(Pid::from_raw(g), None).is_ok());
    }
    !members(pgid).is_empty()
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
        assert_eq!(st.session, 4242);
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
        let mut spawned = spawn(&spec).unwrap();
        let status =
            tokio::task::spawn_blocking(move || spawned.child.wait().map(|s| (s, spawned)))
                .await
                .unwrap()
                .unwrap();
        let (status, mut spawned) = status;
        assert_eq!(exit_code(status), Some(3));
        assert_eq!(read_exit_file(&exit), Some(3));
        spawned.copier.wait().await.unwrap();
        // A terminal, without the CRLF translation.
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hi\n");
        assert!(!group_alive(spawned.pid));
    }
}
