//! Atomic SFTP uploads: write `<path>.tmp-<random>`, set the mode, rename over `<path>`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::connection::SshConnection;
use super::error::SshError;

/// Bytes per SFTP write request (OpenSSH accepts up to 256 KiB packets).
const CHUNK: usize = 32 * 1024;
/// Write requests in flight at once (pipelining hides the round-trip time).
const IN_FLIGHT: usize = 16;
/// Limit for each SFTP request's reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// OpenSSH's atomic-replace rename.
const POSIX_RENAME: &str = "posix-rename@openssh.com";

impl SshConnection {
    /// Uploads `data` to `remote_path` with permissions `mode` (e.g. `0o755`), creating parent
    /// directories. Atomic: readers see the old file or the whole new one.
    pub async fn upload_bytes(
        &self,
        remote_path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), SshError> {
        self.upload_reader(data, remote_path, mode)
            .await
            .map(|_| ())
    }

    /// Uploads the local file `local_path` to `remote_path` (see
    /// [`upload_bytes`](Self::upload_bytes)). Returns the number of bytes written.
    pub async fn upload_file(
        &self,
        local_path: &Path,
        remote_path: &str,
        mode: u32,
    ) -> Result<u64, SshError> {
        let file = tokio::fs::File::open(local_path).await.map_err(|e| {
            self.upload_error(
                remote_path,
                format!("cannot read local file {}: {e}", local_path.display()),
            )
        })?;
        self.upload_reader(file, remote_path, mode).await
    }

    /// Uploads everything `reader` yields to `remote_path` (see
    /// [`upload_bytes`](Self::upload_bytes)). Returns the number of bytes written.
    pub async fn upload_reader<R>(
        &self,
        reader: R,
        remote_path: &str,
        mode: u32,
    ) -> Result<u64, SshError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let span = tracing::debug_span!(
            "ssh",
            host = %self.target_label(),
            step = "upload",
            path = %remote_path
        );
        self.upload_inner(reader, remote_path, mode)
            .instrument(span)
            .await
            .map_err(|reason| self.upload_error(remote_path, reason))
    }

    fn upload_error(&self, path: &str, reason: String) -> SshError {
        SshError::Upload {
            target: self.target_label().to_string(),
            user: self.user().to_string(),
            path: path.to_string(),
            reason,
        }
    }

    async fn upload_inner<R>(
        &self,
        mut reader: R,
        remote_path: &str,
        mode: u32,
    ) -> Result<u64, String>
    where
        R: AsyncRead + Unpin + Send,
    {
        if remote_path.is_empty() || remote_path.ends_with('/') {
            return Err("the remote path must name a file".into());
        }
        let channel = tokio::time::timeout(REQUEST_TIMEOUT, self.handle().channel_open_session())
            .await
            .map_err(|_| "the server did not open a session channel in time".to_string())?
            .map_err(|e| format!("could not open a session channel: {e}"))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| format!("could not start the sftp subsystem: {e}"))?;
        let raw = RawSftpSession::new(channel.into_stream());
        raw.set_timeout(REQUEST_TIMEOUT.as_secs());
        let version = raw
            .init()
            .await
            .map_err(|e| format!("sftp handshake: {e}"))?;
        let posix_rename = version
            .extensions
            .get(POSIX_RENAME)
            .is_some_and(|v| v == "1");
        let raw = Arc::new(raw);

        let result = async {
            ensure_parent_dirs(&raw, remote_path).await?;
            let tmp = format!("{remote_path}.tmp-{}", uuid::Uuid::new_v4().simple());
            let written = match write_file(&raw, &tmp, &mut reader, mode).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = raw.remove(tmp.as_str()).await;
                    return Err(e);
                }
            };
            if let Err(e) = rename_over(&raw, &tmp, remote_path, posix_rename).await {
                let _ = raw.remove(tmp.as_str()).await;
                return Err(e);
            }
            Ok(written)
        }
        .await;
        let _ = raw.close_session();
        if result.is_ok() {
            self.touch();
            tracing::debug!("upload done");
        }
        result
    }
}

/// Creates the missing ancestors of `path` (like `mkdir -p` of its parent).
async fn ensure_parent_dirs(raw: &RawSftpSession, path: &str) -> Result<(), String> {
    let Some(idx) = path.rfind('/') else {
        return Ok(());
    };
    let parent = &path[..idx];
    if parent.is_empty() || raw.stat(parent).await.is_ok() {
        return Ok(());
    }
    let mut prefix = String::new();
    for (i, part) in parent.split('/').enumerate() {
        if i > 0 || parent.starts_with('/') {
            prefix.push('/');
        }
        if part.is_empty() {
            continue;
        }
        prefix.push_str(part);
        if raw.stat(prefix.as_str()).await.is_ok() {
            continue;
        }
        if let Err(e) = raw.mkdir(prefix.as_str(), FileAttributes::empty()).await {
            // Another writer may have created it meanwhile.
            if raw.stat(prefix.as_str()).await.is_err() {
                return Err(format!("cannot create directory {prefix}: {e}"));
            }
        }
    }
    Ok(())
}

/// Writes `reader` into a new `path` with `mode`, pipelining the write requests.
async fn write_file<R>(
    raw: &Arc<RawSftpSession>,
    path: &str,
    reader: &mut R,
    mode: u32,
) -> Result<u64, String>
where
    R: AsyncRead + Unpin + Send,
{
    let attrs = FileAttributes {
        permissions: Some(mode),
        ..FileAttributes::empty()
    };
    let handle = raw
        .open(
            path,
            OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
            attrs,
        )
        .await
        .map_err(|e| format!("cannot create {path}: {e}"))?
        .handle;

    let written = async {
        let mut in_flight: JoinSet<Result<(), String>> = JoinSet::new();
        let mut offset = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = read_full(reader, &mut buf)
                .await
                .map_err(|e| format!("reading the source: {e}"))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            while in_flight.len() >= IN_FLIGHT {
                join_one(&mut in_flight).await?;
            }
            let raw = raw.clone();
            let handle = handle.clone();
            let at = offset;
            in_flight.spawn(async move {
                raw.write(handle, at, buf)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("write at offset {at}: {e}"))
            });
            offset += n as u64;
        }
        while !in_flight.is_empty() {
            join_one(&mut in_flight).await?;
        }
        // The server applies the umask on create; set the exact mode explicitly.
        let attrs = FileAttributes {
            permissions: Some(mode),
            ..FileAttributes::empty()
        };
        raw.fsetstat(handle.as_str(), attrs)
            .await
            .map_err(|e| format!("chmod {mode:o}: {e}"))?;
        Ok::<u64, String>(offset)
    }
    .await;
    let closed = raw.close(handle.as_str()).await;
    let written = written?;
    closed.map_err(|e| format!("closing {path}: {e}"))?;
    Ok(written)
}

async fn join_one(set: &mut JoinSet<Result<(), String>>) -> Result<(), String> {
    match set.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(format!("write task failed: {e}")),
        None => Ok(()),
    }
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Renames `from` to `to`, replacing `to`. Uses `posix-rename@openssh.com` when offered
/// (atomic); otherwise plain SFTP rename, removing `to` first if the server refuses to
/// overwrite.
async fn rename_over(
    raw: &RawSftpSession,
    from: &str,
    to: &str,
    posix_rename: bool,
) -> Result<(), String> {
    if posix_rename {
        let mut payload = Vec::with_capacity(from.len() + to.len() + 8);
        for s in [from, to] {
            let len = u32::try_from(s.len()).map_err(|_| "path too long".to_string())?;
            payload.extend_from_slice(&len.to_be_bytes());
            payload.extend_from_slice(s.as_bytes());
        }
        return match raw.extended(POSIX_RENAME, payload).await {
            Ok(russh_sftp::protocol::Packet::Status(s)) if s.status_code == StatusCode::Ok => {
                Ok(())
            }
            Ok(russh_sftp::protocol::Packet::Status(s)) => Err(format!(
                "rename {from} → {to}: {}: {}",
                s.status_code, s.error_message
            )),
            Ok(_) => Err(format!("rename {from} → {to}: unexpected reply")),
            Err(e) => Err(format!("rename {from} → {to}: {e}")),
        };
    }
    if raw.rename(from, to).await.is_ok() {
        return Ok(());
    }
    let _ = raw.remove(to).await;
    raw.rename(from, to)
        .await
        .map(|_| ())
        .map_err(|e| format!("rename {from} → {to}: {e}"))
}
