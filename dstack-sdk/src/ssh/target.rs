//! [`SshTarget`]: where to connect, as whom, with which keys, and through which jump host.

use std::fmt;

use russh::keys::{HashAlg, PrivateKey};

use super::error::SshError;

/// One SSH destination. `private_keys` hold OpenSSH (or PEM) private key text; an entry may
/// contain several concatenated keys. Keys are tried in order. `Debug` redacts the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// Host name or IP address.
    pub host: String,
    /// SSH port (usually 22).
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Private keys as OpenSSH / PEM text.
    pub private_keys: Vec<String>,
    /// A host to jump through (`ssh -J`): the connection to this target is carried by a
    /// `direct-tcpip` channel of the jump host's connection.
    pub proxy_jump: Option<Box<SshTarget>>,
}

impl SshTarget {
    /// A target without keys or jump host.
    pub fn new(host: impl Into<String>, port: u16, user: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            user: user.into(),
            private_keys: Vec::new(),
            proxy_jump: None,
        }
    }

    /// Adds a private key (OpenSSH / PEM text).
    pub fn with_key(mut self, private_key: impl Into<String>) -> Self {
        self.private_keys.push(private_key.into());
        self
    }

    /// Sets the jump host.
    pub fn with_proxy_jump(mut self, jump: SshTarget) -> Self {
        self.proxy_jump = Some(Box::new(jump));
        self
    }

    /// `host:port`, with IPv6 addresses in brackets.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Parses every private key, splitting entries that hold several PEM blocks.
    pub(crate) fn parse_keys(&self) -> Result<Vec<PrivateKey>, SshError> {
        let mut out = Vec::new();
        for block in self.private_keys.iter().flat_map(|k| split_pem_blocks(k)) {
            let index = out.len() + 1;
            let key =
                russh::keys::decode_secret_key(block, None).map_err(|e| SshError::InvalidKey {
                    target: self.to_string(),
                    index,
                    reason: key_error_reason(&e),
                })?;
            out.push(key);
        }
        if out.is_empty() {
            return Err(SshError::NoKeys {
                target: self.to_string(),
            });
        }
        Ok(out)
    }

    /// SHA256 fingerprints (`SHA256:…`) of the public halves of the private keys, in order.
    pub fn key_fingerprints(&self) -> Result<Vec<String>, SshError> {
        Ok(self
            .parse_keys()?
            .iter()
            .map(|k| k.public_key().fingerprint(HashAlg::Sha256).to_string())
            .collect())
    }

    /// The public keys in `authorized_keys` format (`ssh-ed25519 AAAA…`), in order.
    pub fn public_keys_openssh(&self) -> Result<Vec<String>, SshError> {
        self.parse_keys()?
            .iter()
            .map(|k| {
                k.public_key()
                    .to_openssh()
                    .map_err(|e| SshError::InvalidKey {
                        target: self.to_string(),
                        index: 0,
                        reason: e.to_string(),
                    })
            })
            .collect()
    }
}

/// Turns a key parse error into a reason that never quotes the key.
fn key_error_reason(e: &russh::keys::Error) -> String {
    match e {
        russh::keys::Error::KeyIsEncrypted => "the key is encrypted with a passphrase".into(),
        russh::keys::Error::UnsupportedKeyType {
            key_type_string, ..
        } => {
            format!("unsupported key type {key_type_string}")
        }
        other => other.to_string(),
    }
}

/// Splits text holding one or more `-----BEGIN …-----`/`-----END …-----` blocks. Text without
/// any BEGIN marker is returned as is (so the parser reports what is wrong with it).
fn split_pem_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let from_start = &rest[start..];
        let Some(end_marker) = from_start.find("-----END ") else {
            blocks.push(from_start);
            return blocks;
        };
        // The END line closes with "-----" after the label.
        let after_end = &from_start[end_marker + "-----END ".len()..];
        let close = after_end
            .find("-----")
            .map(|i| end_marker + "-----END ".len() + i + "-----".len())
            .unwrap_or(from_start.len());
        blocks.push(&from_start[..close]);
        rest = &from_start[close..];
    }
    if blocks.is_empty() && !text.trim().is_empty() {
        blocks.push(text);
    }
    blocks
}

impl fmt::Display for SshTarget {
    /// `user@host:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.host_port())
    }
}

impl fmt::Debug for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field(
                "private_keys",
                &format_args!("<{} redacted>", self.private_keys.len()),
            )
            .field("proxy_jump", &self.proxy_jump)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throwaway ed25519 key generated for these tests only.
    const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBzFfyTOqwxjdsptW8OFqGQgxefgzQgTWXu0qgLezRfFAAAAJgmVEizJlRI
swAAAAtzc2gtZWQyNTUxOQAAACBzFfyTOqwxjdsptW8OFqGQgxefgzQgTWXu0qgLezRfFA
AAAED85MGCOnFBlCaPe6xqag0oKCi27Ug9BhRvsp0l2jchSHMV/JM6rDGN2ym1bw4WoZCD
F5+DNCBNZe7SqAt7NF8UAAAAD3Rlc3RAZHN0YWNrLXNkawECAwQFBg==
-----END OPENSSH PRIVATE KEY-----
";

    #[test]
    fn debug_redacts_keys() {
        let t = SshTarget::new("10.0.0.5", 22, "ubuntu")
            .with_key(KEY)
            .with_proxy_jump(SshTarget::new("jump", 2222, "root").with_key(KEY));
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("OPENSSH"), "{dbg}");
        assert!(dbg.contains("<1 redacted>"));
        assert_eq!(t.to_string(), "ubuntu@10.0.0.5:22");
        assert_eq!(
            SshTarget::new("::1", 22, "u").to_string(),
            "u@[::1]:22".to_string()
        );
    }

    #[test]
    fn parses_and_splits_keys() {
        let both = format!("{KEY}\n{KEY}");
        let t = SshTarget::new("h", 22, "u").with_key(both);
        let fps = t.key_fingerprints().unwrap();
        assert_eq!(fps.len(), 2);
        assert!(fps[0].starts_with("SHA256:"));
        assert_eq!(fps[0], fps[1]);
        let pubs = t.public_keys_openssh().unwrap();
        assert!(pubs[0].starts_with("ssh-ed25519 "));
    }

    #[test]
    fn bad_and_missing_keys() {
        let t = SshTarget::new("h", 22, "u");
        assert!(matches!(t.parse_keys(), Err(SshError::NoKeys { .. })));
        let t = SshTarget::new("h", 22, "u").with_key("not a key");
        let err = t.parse_keys().unwrap_err();
        assert!(
            matches!(err, SshError::InvalidKey { index: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("u@h:22"));
    }
}
