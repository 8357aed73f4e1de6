//! Keeps the dstack CLI's `~/.dstack/config.yml` pointing at this server, as dstack's server
//! does at startup: the default project's entry gets this server's URL and the admin token.

use std::path::PathBuf;

use anyhow::Context;
use serde_yaml::{Mapping, Value};

/// Adds or updates the `name` entry of `~/.dstack/config.yml`; it becomes the default when no
/// other project is.
pub fn update_default_project(name: &str, url: &str, token: &str) -> anyhow::Result<()> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")?;
    let path = home.join(".dstack").join("config.yml");
    let mut root = match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => serde_yaml::from_str::<Value>(&text)
            .with_context(|| format!("{} is not YAML", path.display()))?,
        _ => Value::Mapping(Mapping::new()),
    };
    let map = root
        .as_mapping_mut()
        .context("config.yml: top level must be a mapping")?;
    let projects = map
        .entry(Value::from("projects"))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    let list = projects
        .as_sequence_mut()
        .context("config.yml: projects must be a list")?;
    let any_default = list
        .iter()
        .any(|p| p.get("default").and_then(Value::as_bool) == Some(true));
    let existing = list
        .iter_mut()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name));
    match existing {
        Some(Value::Mapping(p)) => {
            p.insert("url".into(), url.into());
            p.insert("token".into(), token.into());
        }
        _ => {
            let mut p = Mapping::new();
            p.insert("default".into(), (!any_default).into());
            p.insert("name".into(), name.into());
            p.insert("token".into(), token.into());
            p.insert("url".into(), url.into());
            list.push(Value::Mapping(p));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("yml.tmp");
    std::fs::write(&tmp, serde_yaml::to_string(&root)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}
