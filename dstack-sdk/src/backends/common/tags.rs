//! The tag set every resource we create carries.
//!
//! dstack's tags (`Name`, `owner=dstack`, `dstack_project`, `dstack_name`, `dstack_user`)
//! plus the ids a sweep needs to find resources the database does not know:
//! `dstack_server_id`, `dstack_fleet_id`, `dstack_instance_id`. Merge order as dstack's
//! `merge_tags`: backend-config tags, then per-resource tags, then ours (ours always win).

use indexmap::IndexMap;
use uuid::Uuid;

use crate::backends::compute::InstanceConfiguration;

/// `owner` tag key.
pub const TAG_OWNER: &str = "owner";
/// The value of the `owner` tag.
pub const OWNER_DSTACK: &str = "dstack";
/// The server id tag key (the sweep's key).
pub const TAG_SERVER_ID: &str = "dstack_server_id";
/// The project name tag key.
pub const TAG_PROJECT: &str = "dstack_project";
/// The resource name tag key.
pub const TAG_NAME: &str = "dstack_name";
/// The user tag key.
pub const TAG_USER: &str = "dstack_user";
/// The fleet id tag key.
pub const TAG_FLEET_ID: &str = "dstack_fleet_id";
/// The instance id tag key.
pub const TAG_INSTANCE_ID: &str = "dstack_instance_id";

/// Ordered tags (key → value) for one resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceTags {
    tags: IndexMap<String, String>,
}

/// What identifies a resource we create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagIds<'a> {
    /// The server id.
    pub server_id: &'a str,
    /// The project name.
    pub project: &'a str,
    /// The resource name (`Name` and `dstack_name`).
    pub name: &'a str,
    /// The user, when known.
    pub user: Option<&'a str>,
    /// The fleet id, when the resource belongs to a fleet.
    pub fleet_id: Option<Uuid>,
    /// The instance id, when the resource belongs to an instance.
    pub instance_id: Option<Uuid>,
}

impl ResourceTags {
    /// Tags for a resource: `backend` tags (from the backend config), then `resource` tags
    /// (fleet/run profile), then dstack's, which override both.
    pub fn new(
        ids: &TagIds<'_>,
        backend: Option<&IndexMap<String, String>>,
        resource: Option<&IndexMap<String, String>>,
    ) -> Self {
        let mut tags = IndexMap::new();
        for src in [backend, resource].into_iter().flatten() {
            for (k, v) in src {
                tags.insert(k.clone(), v.clone());
            }
        }
        tags.insert("Name".to_string(), ids.name.to_string());
        tags.insert(TAG_OWNER.to_string(), OWNER_DSTACK.to_string());
        tags.insert(TAG_SERVER_ID.to_string(), ids.server_id.to_string());
        tags.insert(TAG_PROJECT.to_string(), ids.project.to_string());
        tags.insert(TAG_NAME.to_string(), ids.name.to_string());
        if let Some(user) = ids.user {
            tags.insert(TAG_USER.to_string(), user.to_string());
        }
        if let Some(f) = ids.fleet_id {
            tags.insert(TAG_FLEET_ID.to_string(), f.to_string());
        }
        if let Some(i) = ids.instance_id {
            tags.insert(TAG_INSTANCE_ID.to_string(), i.to_string());
        }
        Self { tags }
    }

    /// The tags of an instance created for `config`.
    pub fn for_instance(
        server_id: &str,
        config: &InstanceConfiguration,
        backend: Option<&IndexMap<String, String>>,
    ) -> Self {
        Self::new(
            &TagIds {
                server_id,
                project: &config.project_name,
                name: &config.instance_name,
                user: Some(&config.user),
                fleet_id: config.fleet_id,
                instance_id: Some(config.instance_id),
            },
            backend,
            Some(&config.tags),
        )
    }

    /// The tags in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// The number of tags.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The tags as labels for clouds with label rules (GCP, Kubernetes): lowercase, only
    /// `[a-z0-9_-]`, at most 63 characters.
    pub fn to_labels(&self) -> IndexMap<String, String> {
        let clean = |s: &str| -> String {
            s.to_ascii_lowercase()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(63)
                .collect()
        };
        self.tags
            .iter()
            .map(|(k, v)| (clean(k), clean(v)))
            .collect()
    }
}

/// The tag a sweep filters on to find everything this server created.
pub fn sweep_filter(server_id: &str) -> (&'static str, String) {
    (TAG_SERVER_ID, server_id.to_string())
}

/// Checks user tags against the common cloud rules (AWS's, the strictest of tag clouds): key
/// 1–128 and value ≤ 256 characters of letters, digits, spaces and `_ . : / = + - @`; keys
/// must not start with `aws:`.
pub fn validate_tags(tags: &IndexMap<String, String>) -> Result<(), String> {
    let ok_chars = |s: &str| {
        s.chars()
            .all(|c| c.is_alphanumeric() || " _.:/=+-@".contains(c))
    };
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 || !ok_chars(k) {
            return Err(format!(
                "Invalid tag key {k:?}: 1-128 characters of letters, digits, spaces and _.:/=+-@"
            ));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(format!(
                "Invalid tag key {k:?}: the aws: prefix is reserved"
            ));
        }
        if v.chars().count() > 256 || !ok_chars(v) {
            return Err(format!(
                "Invalid tag value for {k:?}: at most 256 characters of letters, digits, spaces and _.:/=+-@"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn instance_tag_set() {
        let iid = Uuid::from_u128(7);
        let fid = Uuid::from_u128(9);
        let config = InstanceConfiguration::new("main", iid, "fleet-0", vec![])
            .with_fleet(fid)
            .with_user("alice")
            .with_tag("team", "ml")
            .with_tag("owner", "mallory");
        let backend: IndexMap<String, String> =
            [("cost-center".to_string(), "42".to_string())].into();
        let t = ResourceTags::for_instance("srv-1", &config, Some(&backend));
        let pairs: Vec<(&str, &str)> = t.iter().collect();
        let (iid_s, fid_s) = (iid.to_string(), fid.to_string());
        assert_eq!(
            pairs,
            [
                ("cost-center", "42"),
                ("team", "ml"),
                ("owner", "dstack"),
                ("Name", "fleet-0"),
                ("dstack_server_id", "srv-1"),
                ("dstack_project", "main"),
                ("dstack_name", "fleet-0"),
                ("dstack_user", "alice"),
                ("dstack_fleet_id", fid_s.as_str()),
                ("dstack_instance_id", iid_s.as_str()),
            ]
        );
        assert_eq!(sweep_filter("srv-1"), ("dstack_server_id", "srv-1".into()));
        assert_eq!(t.to_labels()["name"], "fleet-0");
    }

    #[test]
    fn tag_validation() {
        let ok: IndexMap<String, String> = [("team".into(), "ml research".into())].into();
        assert!(validate_tags(&ok).is_ok());
        let bad: IndexMap<String, String> = [("aws:x".into(), "v".into())].into();
        assert!(validate_tags(&bad).unwrap_err().contains("reserved"));
        let bad: IndexMap<String, String> = [("k".into(), "a|b".into())].into();
        assert!(validate_tags(&bad).is_err());
        let bad: IndexMap<String, String> = [("".into(), "v".into())].into();
        assert!(validate_tags(&bad).is_err());
    }
}
