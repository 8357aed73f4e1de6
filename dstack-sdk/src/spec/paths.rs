//! Path helpers with Python's `pathlib` semantics, used by mount points and file mappings.

/// `str(PurePosixPath(p))`: repeated slashes collapsed, `.` components and a trailing slash
/// removed; a leading `//` (exactly two slashes) is kept, as POSIX allows.
pub fn normalize_posix(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let root = if p.starts_with("//") && !p.starts_with("///") {
        "//"
    } else if p.starts_with('/') {
        "/"
    } else {
        ""
    };
    let parts: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let body = parts.join("/");
    if root.is_empty() && body.is_empty() {
        return ".".into();
    }
    format!("{root}{body}")
}

/// The components of a POSIX path as `PurePosixPath(p).parts` gives them (root included).
pub fn posix_parts(p: &str) -> Vec<String> {
    let norm = normalize_posix(p);
    let mut parts = Vec::new();
    let rest = if let Some(r) = norm.strip_prefix("//") {
        parts.push("//".to_string());
        r
    } else if let Some(r) = norm.strip_prefix('/') {
        parts.push("/".to_string());
        r
    } else if norm == "." {
        return parts;
    } else {
        norm.as_str()
    };
    parts.extend(
        rest.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    );
    parts
}

/// Whether `PureWindowsPath(p).is_absolute()`: a drive letter with a root (`C:\x`, `c:/x`) or
/// a UNC path (`\\server\share\x`).
pub fn is_windows_absolute(p: &str) -> bool {
    let b = p.as_bytes();
    if b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/')
    {
        return true;
    }
    let sep = |c: u8| c == b'\\' || c == b'/';
    if b.len() >= 2 && sep(b[0]) && sep(b[1]) {
        let rest = &p[2..];
        let mut it = rest.split(['\\', '/']);
        let server = it.next().unwrap_or("");
        let share = it.next().unwrap_or("");
        return !server.is_empty() && !share.is_empty();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix() {
        assert_eq!(normalize_posix("/data//x/"), "/data/x");
        assert_eq!(normalize_posix("/a/./b"), "/a/b");
        assert_eq!(normalize_posix("//a"), "//a");
        assert_eq!(normalize_posix("///a"), "/a");
        assert_eq!(normalize_posix("/"), "/");
        assert_eq!(posix_parts("~user/x"), vec!["~user", "x"]);
        assert!(is_windows_absolute("C:/x"));
        assert!(!is_windows_absolute("/x"));
    }
}
