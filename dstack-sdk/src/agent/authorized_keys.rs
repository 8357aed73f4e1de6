//! Host access keys: a task's `host_ssh_keys` are appended to `host_ssh_user`'s
//! `~/.ssh/authorized_keys` while the task lives (so the dstack CLI can jump through the host to
//! the task's SSH server), and exactly the lines the agent added are removed afterwards — a line
//! that was there before is never touched.
//!
//! Keys are compared by type and base64 blob (comments, options and whitespace are ignored).
//! When the agent runs as root, `.ssh` (0700) and `authorized_keys` (0600) belong to the user.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{AgentError, AgentResult};

/// What the agent did to a host user's `authorized_keys` for one task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKeysRecord {
    /// The host user.
    pub user: String,
    /// Their `authorized_keys`.
    pub path: PathBuf,
    /// `(uid, gid)` that owns the files, when the agent runs as root.
    #[serde(default)]
    pub owner: Option<(u32, u32)>,
    /// Every key the task asked for (`type base64`), present before or not.
    #[serde(default)]
    pub wanted: Vec<String>,
    /// The exact lines the agent appended (and must remove).
    #[serde(default)]
    pub added: Vec<String>,
}

/// The identity of a public key line: `type base64`, ignoring options before the key and the
/// comment after it. `None` when the line holds no key.
pub fn key_id(line: &str) -> Option<String> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    tokens.windows(2).find_map(|w| {
        let kind = w[0];
        let looks_like_type = kind.starts_with("ssh-")
            || kind.starts_with("ecdsa-")
            || kind.starts_with("sk-")
            || kind.starts_with("rsa-");
        (looks_like_type && w[1].len() >= 16).then(|| format!("{} {}", kind, w[1]))
    })
}

fn io<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
    move |e| AgentError::io(context, path, e)
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> AgentResult<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io("cannot hand the file to the host user", path))?;
    }
    Ok(())
}

/// Appends each of `keys` that is not present yet to `user`'s `authorized_keys` (creating
/// `~/.ssh` and the file). Returns what was done, for [`remove_lines`].
#[tracing::instrument(level = "info", skip(keys), fields(keys = keys.len()))]
pub fn add_keys(user: &str, keys: &[String]) -> AgentResult<HostKeysRecord> {
    let found = nix::unistd::User::from_name(user)
        .map_err(|e| AgentError::BadRequest(format!("cannot look up host_ssh_user {user:?}: {e}")))?
        .ok_or_else(|| {
            AgentError::BadRequest(format!(
                "host_ssh_user {user:?} does not exist on this host"
            ))
        })?;
    let owner = nix::unistd::geteuid()
        .is_root()
        .then(|| (found.uid.as_raw(), found.gid.as_raw()));
    let ssh_dir = found.dir.join(".ssh");
    let path = ssh_dir.join("authorized_keys");
    let mut record = HostKeysRecord {
        user: user.to_string(),
        path: path.clone(),
        owner,
        wanted: Vec::new(),
        added: Vec::new(),
    };
    for key in keys {
        let id = key_id(key).ok_or_else(|| {
            AgentError::BadRequest(format!(
                "host_ssh_keys: not an OpenSSH public key: {:?}",
                key.chars().take(24).collect::<String>()
            ))
        })?;
        if !record.wanted.contains(&id) {
            record.wanted.push(id);
        }
    }
    if record.wanted.is_empty() {
        return Ok(record);
    }
    if !ssh_dir.is_dir() {
        std::fs::create_dir_all(&ssh_dir).map_err(io("cannot create ~/.ssh", &ssh_dir))?;
        std::fs::set_permissions(&ssh_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("cannot set permissions", &ssh_dir))?;
        chown(&ssh_dir, owner)?;
    }
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(AgentError::io("cannot read authorized_keys", &path, e)),
    };
    let present: Vec<String> = existing.lines().filter_map(key_id).collect();
    let mut append = String::new();
    if !existing.is_empty() && !existing.ends_with('\n') {
        append.push('\n');
    }
    for key in keys {
        let Some(id) = key_id(key) else { continue };
        let line = key.trim().to_string();
        if present.contains(&id) || record.added.iter().any(|l| key_id(l) == Some(id.clone())) {
            continue;
        }
        append.push_str(&line);
        append.push('\n');
        record.added.push(line);
    }
    if record.added.is_empty() {
        return Ok(record);
    }
    let created = !path.exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(io("cannot open authorized_keys", &path))?;
    file.write_all(append.as_bytes())
        .map_err(io("cannot write authorized_keys", &path))?;
    if created {
        chown(&path, owner)?;
    }
    tracing::info!(user, added = record.added.len(), "host access keys added");
    Ok(record)
}

/// Removes `lines` (lines this agent appended) from the file of `record`: for each, its last
/// exact occurrence. Other lines are kept byte for byte.
#[tracing::instrument(level = "info", skip_all, fields(user = %record.user, lines = lines.len()))]
pub fn remove_lines(record: &HostKeysRecord, lines: &[String]) -> AgentResult<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let path = &record.path;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(AgentError::io("cannot read authorized_keys", path, e)),
    };
    let mut kept: Vec<&str> = text.split_inclusive('\n').collect();
    let mut removed = 0;
    for line in lines {
        if let Some(i) = kept.iter().rposition(|l| l.trim() == line.trim()) {
            kept.remove(i);
            removed += 1;
        }
    }
    if removed == 0 {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".authorized_keys.dstack-{}.tmp",
        std::process::id()
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("cannot write authorized_keys", &tmp))?;
        f.write_all(kept.concat().as_bytes())
            .map_err(io("cannot write authorized_keys", &tmp))?;
        f.sync_all()
            .map_err(io("cannot write authorized_keys", &tmp))?;
    }
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    chown(&tmp, record.owner)?;
    std::fs::rename(&tmp, path).map_err(io("cannot replace authorized_keys", path))?;
    tracing::info!(removed, "host access keys removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_identity_ignores_comments_and_options() {
        let a = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGic1Y6 alice@laptop";
        let b = "  ssh-ed25519   AAAAC3NzaC1lZDI1NTE5AAAAIGic1Y6\n";
        let c = "no-pty,command=\"x\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGic1Y6 other";
        assert_eq!(key_id(a), key_id(b));
        assert_eq!(key_id(a), key_id(c));
        assert_eq!(key_id("# comment"), None);
        assert_eq!(key_id(""), None);
    }

    #[test]
    fn removes_only_added_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        let pre = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPRE0000000 pre\n";
        let ours = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOURS000000 ours";
        std::fs::write(&path, format!("{pre}# keep me\n{ours}\n{ours}\n")).unwrap();
        let record = HostKeysRecord {
            user: "x".into(),
            path: path.clone(),
            owner: None,
            wanted: vec![],
            added: vec![ours.into()],
        };
        remove_lines(&record, &record.added).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{pre}# keep me\n{ours}\n")
        );
    }
}
