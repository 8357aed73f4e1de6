//! Services: one file per resource, each a set of `Engine` methods that validate, apply one
//! transaction, and return wire models.

pub mod backends;
pub mod files;
pub mod fleets;
pub mod gpus;
pub mod instances;
pub mod logs;
pub mod projects;
#[cfg(feature = "http")]
pub mod proxy;
pub mod public_keys;
pub mod repos;
pub mod runs;
pub mod secrets;
pub mod users;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Error, ErrorKind, HttpShape};

/// Parses a request body as dstack's request models do: a missing body is read as `{}`
/// (optional bodies get their defaults, required fields give a 422) and unknown keys are
/// refused with a 422 (`extra=forbid`).
pub(crate) fn parse_body<T: DeserializeOwned + serde::Serialize>(
    body: Option<Value>,
) -> crate::Result<T> {
    let body = body.unwrap_or_else(|| Value::Object(Default::default()));
    let parsed: T = serde_json::from_value(body.clone()).map_err(|e| {
        Error::new(ErrorKind::Validation, format!("Invalid request body: {e}"))
            .with_shape(HttpShape::RequestValidation)
    })?;
    let echo = to_json(&parsed)?;
    if let Some(path) = crate::models::backends::find_unknown_key(&body, &echo) {
        use crate::models::backends::PathSeg;
        let path: Vec<String> = path
            .iter()
            .map(|s| match s {
                PathSeg::Key(k) => k.clone(),
                PathSeg::Index(i) => i.to_string(),
            })
            .collect();
        return Err(Error::new(
            ErrorKind::Validation,
            format!("Extra inputs are not permitted: body.{}", path.join(".")),
        )
        .with_shape(HttpShape::RequestValidation));
    }
    Ok(parsed)
}

/// Serialises a response model.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> crate::Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))
}

/// A new OpenSSH keypair `(private, public)` for a user or project.
pub(crate) fn generate_ssh_keypair(comment: &str) -> crate::Result<(String, String)> {
    use ssh_key::rand_core::OsRng;
    let key =
        ssh_key::PrivateKey::random(&mut OsRng, ssh_key::Algorithm::Ed25519).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("ssh key generation failed: {e}"),
            )
        })?;
    let private = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("ssh key encoding failed: {e}")))?
        .to_string();
    let mut public = key
        .public_key()
        .to_openssh()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("ssh key encoding failed: {e}")))?;
    public.push(' ');
    public.push_str(comment);
    public.push('\n');
    Ok((private, public))
}

/// `^[a-zA-Z0-9-_]{1,max}$`, the name rule of users, projects and secrets.
pub(crate) fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A random suffix for the names of soft-deleted rows.
pub(crate) fn deleted_name(now: chrono::DateTime<chrono::Utc>) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("_deleted_{}_{}", now.timestamp(), &hex[..8])
}

/// dstack's keyset pagination over `(created_at, id)` (dstack-api.md §1.6): descending by key
/// with ids ascending (or the reverse when `ascending`), starting after the cursor.
pub(crate) fn paginate<T, K: Ord + Clone>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> (K, String),
    prev_key: Option<K>,
    prev_id: Option<String>,
    ascending: bool,
    limit: usize,
) -> Vec<T> {
    items.sort_by(|a, b| {
        let (ka, ia) = key(a);
        let (kb, ib) = key(b);
        if ascending {
            ka.cmp(&kb).then(ib.cmp(&ia))
        } else {
            kb.cmp(&ka).then(ia.cmp(&ib))
        }
    });
    if let Some(pk) = prev_key {
        items.retain(|it| {
            let (k, id) = key(it);
            let after_key = if ascending { k > pk } else { k < pk };
            let same_key_after_id = match &prev_id {
                Some(pid) if k == pk => {
                    if ascending {
                        id < *pid
                    } else {
                        id > *pid
                    }
                }
                _ => false,
            };
            after_key || same_key_after_id
        });
    }
    items.truncate(limit);
    items
}
