//! `/api/users/public_keys/{list,add,delete}`: a user's own SSH public keys, stored in OpenSSH
//! format with their SHA256 fingerprint (dstack's `services/public_keys.py`).

use base64::Engine as _;
use md5::Digest as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::engine::auth::Ctx;
use crate::engine::{Engine, time};
use crate::{Error, ErrorKind};

use super::{parse_body, to_json};

/// Key types dstack accepts.
const SUPPORTED_KEY_TYPES: &[&str] = &[
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-ed25519",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "sk-ssh-ed25519@openssh.com",
];

#[derive(Debug, Deserialize, Serialize)]
struct AddPublicKeyRequest {
    key: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
struct DeletePublicKeysRequest {
    ids: Vec<Uuid>,
}

/// A stored key as the API returns it (dstack's `PublicKeyInfo`).
#[derive(Debug, Serialize)]
struct PublicKeyInfo {
    id: String,
    #[serde(with = "crate::models::datetime")]
    added_at: chrono::DateTime<chrono::Utc>,
    name: String,
    #[serde(rename = "type")]
    type_: String,
    fingerprint: String,
}

/// Splits an OpenSSH public key line into (type, wire blob, comment), checking that the
/// blob is base64 and declares the same type (paramiko's `PublicBlob.from_string`).
fn parse_openssh_public_key(key: &str) -> crate::Result<(String, Vec<u8>, Option<String>)> {
    let invalid = || Error::bad_request("Invalid public key, must be in OpenSSH public key format");
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
        return Err(invalid());
    };
    let comment: Vec<&str> = parts.collect();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| invalid())?;
    let len = blob
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(invalid)?;
    let declared = blob.get(4..4 + len).ok_or_else(invalid)?;
    if declared != kind.as_bytes() {
        return Err(invalid());
    }
    if !SUPPORTED_KEY_TYPES.contains(&kind) {
        return Err(Error::bad_request(format!("Unsupported key type: {kind}")));
    }
    // The blob must be exactly the fields of its type (RFC 4253 §6.6, PROTOCOL.u2f).
    let fields = match kind {
        "ssh-rsa" => 2,                            // e, n
        "ssh-ed25519" => 1,                        // key
        "sk-ssh-ed25519@openssh.com" => 2,         // key, application
        "sk-ecdsa-sha2-nistp256@openssh.com" => 3, // curve, Q, application
        _ => 2,                                    // ecdsa: curve, Q
    };
    let mut rest = &blob[4 + len..];
    for _ in 0..fields {
        let n = rest
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(invalid)?;
        if n == 0 {
            return Err(invalid());
        }
        rest = rest.get(4 + n..).ok_or_else(invalid)?;
    }
    if !rest.is_empty() || (kind == "ssh-ed25519" && blob.len() != 4 + len + 4 + 32) {
        return Err(invalid());
    }
    let comment = (!comment.is_empty()).then(|| comment.join(" "));
    Ok((kind.to_string(), blob, comment))
}

/// OpenSSH's `SHA256:<base64 without padding>` fingerprint of a wire blob.
fn fingerprint(blob: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(blob);
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
    format!("SHA256:{}", b64.trim_end_matches('='))
}

impl Engine {
    /// `POST /api/users/public_keys/list`: the caller's keys, newest first.
    pub(crate) async fn public_keys_list(&self, ctx: &Ctx) -> crate::Result<Value> {
        let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
            "SELECT id, created_at, name, type, fingerprint FROM user_public_keys \
             WHERE user_id = $1 ORDER BY created_at DESC",
        )
        .bind(&ctx.user()?.id)
        .fetch_all(self.store().reader())
        .await?;
        let out: Vec<PublicKeyInfo> = rows
            .into_iter()
            .map(|(id, added_at, name, type_, fingerprint)| PublicKeyInfo {
                id,
                added_at: time::from_db(&added_at).unwrap_or_default(),
                name,
                type_,
                fingerprint,
            })
            .collect();
        to_json(&out)
    }

    /// `POST /api/users/public_keys/add`: validates and stores a key; a duplicate
    /// fingerprint gets `resource_exists`.
    pub(crate) async fn public_keys_add(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: AddPublicKeyRequest = parse_body(body)?;
        let (type_, blob, comment) = parse_openssh_public_key(&req.key)?;
        let name = req
            .name
            .filter(|n| !n.is_empty())
            .or(comment)
            .unwrap_or_else(|| hex::encode(md5::Md5::digest(&blob)));
        let fp = fingerprint(&blob);
        let id = Uuid::new_v4().to_string();
        let now = time::now();
        let user = ctx.user()?;
        let mut tx = self.store().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO user_public_keys (id, created_at, user_id, name, type, fingerprint, key) \
             VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (user_id, fingerprint) DO NOTHING",
        )
        .bind(&id)
        .bind(time::to_db(now))
        .bind(&user.id)
        .bind(&name)
        .bind(&type_)
        .bind(&fp)
        .bind(req.key.trim())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(Error::new(ErrorKind::AlreadyExists, "Resource exists"));
        }
        tx.commit().await?;
        tracing::info!(user = %user.name, fingerprint = %fp, "public key added");
        to_json(&PublicKeyInfo {
            id,
            added_at: now,
            name,
            type_,
            fingerprint: fp,
        })
    }

    /// `POST /api/users/public_keys/delete`: removes the caller's keys with these ids
    /// (unknown ids are ignored).
    pub(crate) async fn public_keys_delete(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: DeletePublicKeysRequest = parse_body(body)?;
        let user = ctx.user()?;
        let mut tx = self.store().begin().await?;
        for id in &req.ids {
            sqlx::query("DELETE FROM user_public_keys WHERE user_id = $1 AND id = $2")
                .bind(&user.id)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_fingerprints_like_openssh() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE+yB41emkhPIElXfyg8jU3P016FhttIFfst2UHFjhcw admin@dstack";
        let (t, blob, comment) = parse_openssh_public_key(key).unwrap();
        assert_eq!(t, "ssh-ed25519");
        assert_eq!(comment.as_deref(), Some("admin@dstack"));
        assert!(fingerprint(&blob).starts_with("SHA256:"));
        assert!(
            parse_openssh_public_key(
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIE+yB41emkhPIElXfyg8jU3P016FhttIFfst2UHFjhcw"
            )
            .is_err()
        );
        assert!(parse_openssh_public_key("nonsense").is_err());
    }
}
