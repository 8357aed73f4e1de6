//! Small file helpers: atomic replace, private files.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use super::error::{AgentError, AgentResult};

/// Writes `body` to `path` via a temporary file and a rename, so that readers (and a restarted
/// agent) see either the old or the new content, never a torn one. The file is private (0600).
pub fn write_atomic(path: &Path, body: &[u8]) -> AgentResult<()> {
    let tmp = path.with_extension(format!(
        "{}tmp",
        path.extension()
            .and_then(|e| e.to_str())
            .map(|e| format!("{e}."))
            .unwrap_or_default()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AgentError::io("cannot create file", &tmp, e))?;
    f.write_all(body)
        .map_err(|e| AgentError::io("cannot write file", &tmp, e))?;
    f.sync_data()
        .map_err(|e| AgentError::io("cannot sync file", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| AgentError::io("cannot replace file", path, e))
}

/// Creates `dir` and its parents.
pub fn create_dir_all(dir: &Path) -> AgentResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io("cannot create directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("task.json");
        write_atomic(&p, b"{}").unwrap();
        write_atomic(&p, b"{\"a\":1}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
