//! The SSH layer (feature `ssh`): pure-Rust SSH (russh) to hosts, no `ssh` subprocess.
//!
//! | file | what it holds |
//! |---|---|
//! | `target` | [`SshTarget`]: host, port, user, private keys, optional proxy jump |
//! | `connection` | [`SshConnection`]: connect (direct or via jump), host-key policy, auth, exec, sudo |
//! | `host` | [`HostArch`] (`uname -m`) and [`SystemdStatus`] detection |
//! | `sftp` | atomic uploads (`upload_bytes`, `upload_file`) with mode and parent dirs |
//! | `tunnel` | [`SshStream`] (one `direct-tcpip` channel) and [`Tunnel`] (local listener) |
//! | `pool` | [`SshPool`]: one shared connection per target, reconnect on failure |
//! | `error` | [`SshError`], mapped into [`crate::Error`] |
//!
//! ```no_run
//! # async fn demo(key_pem: String) -> Result<(), dstack_sdk::ssh::SshError> {
//! use dstack_sdk::ssh::{SshPool, SshTarget};
//! let pool = SshPool::default();
//! let host = SshTarget::new("10.0.0.5", 22, "ubuntu").with_key(key_pem);
//! let conn = pool.get(&host).await?;
//! let arch = conn.detect_arch().await?;
//! conn.upload_bytes("/tmp/hello.sh", b"#!/bin/sh\necho hi\n", 0o755).await?;
//! let out = conn.exec("/tmp/hello.sh").await?;
//! assert!(out.success());
//! let shim = pool.forward_local(&host, "localhost", 10998).await?;
//! println!("{} shim at {}", arch.go_arch(), shim.http_base_url());
//! # Ok(()) }
//! ```

mod connection;
mod error;
mod host;
mod pool;
mod sftp;
mod target;
mod tunnel;

pub use connection::{
    ConnectOptions, ExecOutput, HostKey, HostKeyPolicy, SshConnection, shell_quote,
};
pub use error::{SshError, SshStep};
pub use host::{HostArch, SystemdStatus};
pub use pool::{PoolKey, SshPool};
pub use target::SshTarget;
pub use tunnel::{SshStream, Tunnel};
