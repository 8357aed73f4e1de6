//! The one `multipart/form-data` shape the runner API uses: a single file field named
//! `archive` whose file name is the archive id (`POST /api/upload_archive`). Both directions
//! are implemented here so that neither side needs a multipart dependency.

use super::error::{AgentError, AgentResult};

/// The form field name the runner expects.
pub const ARCHIVE_FIELD: &str = "archive";

/// A parsed single-file form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    /// The form field name.
    pub field: String,
    /// The file name.
    pub file_name: String,
    /// The file's bytes.
    pub data: Vec<u8>,
}

/// Builds a `multipart/form-data` body with one file field; returns the `Content-Type`
/// header value and the body.
pub fn encode_file_form(field: &str, file_name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = pick_boundary(data);
    let mut body = Vec::with_capacity(data.len() + 256);
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(
        format!(
            "Content-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\n",
            escape_quoted(field),
            escape_quoted(file_name)
        )
        .as_bytes(),
    );
    body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Parses a body holding exactly one file part, with the Go runner's error messages
/// (all 400s): missing boundary, empty form, missing field or file name, extra fields.
pub fn decode_file_form(content_type: Option<&str>, body: &[u8]) -> AgentResult<FilePart> {
    let content_type = content_type
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| AgentError::BadRequest("missing content-type header".into()))?;
    let (media_type, params) = split_media_type(content_type);
    if !media_type.eq_ignore_ascii_case("multipart/form-data") {
        return Err(AgentError::BadRequest(format!(
            "multipart/form-data expected, got {media_type}"
        )));
    }
    let boundary = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.clone())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| AgentError::BadRequest("missing boundary".into()))?;
    let delimiter = format!("--{boundary}").into_bytes();

    let empty = || AgentError::BadRequest("empty form".into());
    let start = find(body, &delimiter).ok_or_else(empty)?;
    let mut rest = &body[start + delimiter.len()..];
    if rest.starts_with(b"--") {
        return Err(empty());
    }
    rest = rest
        .strip_prefix(b"\r\n")
        .ok_or_else(|| AgentError::BadRequest("malformed multipart body".into()))?;
    let headers_end = find(rest, b"\r\n\r\n")
        .ok_or_else(|| AgentError::BadRequest("malformed multipart part headers".into()))?;
    let headers = String::from_utf8_lossy(&rest[..headers_end]).into_owned();
    let content = &rest[headers_end + 4..];

    let mut closing = b"\r\n".to_vec();
    closing.extend_from_slice(&delimiter);
    let data_end = find(content, &closing)
        .ok_or_else(|| AgentError::BadRequest("unterminated multipart body".into()))?;
    let data = content[..data_end].to_vec();
    let after = &content[data_end + closing.len()..];
    if !after.starts_with(b"--") {
        return Err(AgentError::BadRequest("extra form field(s)".into()));
    }

    let disposition = headers
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-disposition")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    let (_, params) = split_media_type(&disposition);
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    let field = get("name").unwrap_or_default();
    if field.is_empty() {
        return Err(AgentError::BadRequest("missing field name".into()));
    }
    let file_name = get("filename").unwrap_or_default();
    Ok(FilePart {
        field,
        file_name,
        data,
    })
}

/// Splits `type/subtype; k=v; k2="v 2"` into the media type and its parameters.
fn split_media_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut parts = split_params(value).into_iter();
    let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(inner) => unescape_quoted(inner),
                None => v.to_string(),
            };
            Some((k.trim().to_string(), v))
        })
        .collect();
    (media, params)
}

/// Splits on `;` outside double quotes.
fn split_params(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ';' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn escape_quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn unescape_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A boundary that does not occur in `data`.
fn pick_boundary(data: &[u8]) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut n: u128 = nanos ^ (data.len() as u128).rotate_left(64);
    loop {
        let candidate = format!("dstack-boundary-{n:032x}");
        if find(data, candidate.as_bytes()).is_none() {
            return candidate;
        }
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    let first = needle[0];
    let last_start = haystack.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match haystack[i..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(off) => {
                let at = i + off;
                if &haystack[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data = b"\x00\x01binary\r\n--not-a-boundary\r\n".to_vec();
        let (ct, body) = encode_file_form("archive", "3f1c-uuid", &data);
        let part = decode_file_form(Some(&ct), &body).unwrap();
        assert_eq!(part.field, "archive");
        assert_eq!(part.file_name, "3f1c-uuid");
        assert_eq!(part.data, data);
    }

    #[test]
    fn parses_python_requests_shape() {
        // What `requests` sends for files={"archive": (id, bytes)}.
        let body = b"--abc123\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"id-1\"\r\n\r\nDATA\r\n--abc123--\r\n";
        let part = decode_file_form(Some("multipart/form-data; boundary=abc123"), body).unwrap();
        assert_eq!(
            (part.field.as_str(), part.file_name.as_str()),
            ("archive", "id-1")
        );
        assert_eq!(part.data, b"DATA");
    }

    #[test]
    fn errors_mirror_the_go_runner() {
        let msg = |r: AgentResult<FilePart>| r.unwrap_err().to_string();
        assert_eq!(
            msg(decode_file_form(None, b"")),
            "missing content-type header"
        );
        assert_eq!(
            msg(decode_file_form(Some("application/json"), b"{}")),
            "multipart/form-data expected, got application/json"
        );
        assert_eq!(
            msg(decode_file_form(Some("multipart/form-data"), b"")),
            "missing boundary"
        );
        assert_eq!(
            msg(decode_file_form(
                Some("multipart/form-data; boundary=x"),
                b"--x--\r\n"
            )),
            "empty form"
        );
        let two = b"--x\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"a\"\r\n\r\n1\r\n--x\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\n2\r\n--x--\r\n";
        assert_eq!(
            msg(decode_file_form(
                Some("multipart/form-data; boundary=x"),
                two
            )),
            "extra form field(s)"
        );
    }
}
