//! dstack's HTTP error bodies, exactly as the Python server sends them.
//!
//! | situation | status | body |
//! |---|---|---|
//! | business error (`ServerClientError`) | 400 | `{"detail":[{"msg","code"(,"fields")}]}`, one item per field path |
//! | `ForbiddenError` raised in a service | 403 | `{"msg","code":null}`, **not** wrapped in `detail` |
//! | auth dependency denial / invalid token | 403 | `{"detail":{"msg","code":null}}` |
//! | project not found in an auth dependency | 404 | `{"detail":{"msg":"Not found","code":null}}` |
//! | request validation | 422 | `{"detail":[{"type","loc","msg","input",…}]}` |
//! | missing bearer, unknown `/api` path, long filename | 401/403, 404, 400 | `{"detail":"<text>"}` |
//!
//! The Python client passes every key of a 400 item other than `msg`/`code` to the exception
//! constructor, so a 400 item must hold only `msg`, `code` and (when set) `fields`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

/// dstack's `ServerClientErrorCode`: the `code` of a 400 item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerClientErrorCode {
    /// Any other business error (`"error"`).
    #[serde(rename = "error")]
    UnspecifiedError,
    /// The entity already exists.
    ResourceExists,
    /// The entity does not exist (also how "not found" is reported for entities).
    ResourceNotExists,
    /// Cloud credentials were rejected.
    InvalidCredentials,
    /// The backend type is unknown or not built in.
    BackendNotAvailable,
    /// The repo was not initialised.
    RepoDoesNotExist,
    /// A gateway failed.
    GatewayError,
}

impl ServerClientErrorCode {
    /// The default message dstack uses for this code when none is given.
    pub fn default_message(self) -> &'static str {
        match self {
            ServerClientErrorCode::UnspecifiedError => "",
            ServerClientErrorCode::ResourceExists => "Resource exists",
            ServerClientErrorCode::ResourceNotExists => "Resource not found",
            ServerClientErrorCode::InvalidCredentials => "Invalid credentials",
            ServerClientErrorCode::BackendNotAvailable => "Backend not available",
            ServerClientErrorCode::RepoDoesNotExist => "Repo does not exist",
            ServerClientErrorCode::GatewayError => "Gateway error",
        }
    }

    /// The SDK error kind for this code.
    pub fn kind(self) -> ErrorKind {
        match self {
            ServerClientErrorCode::ResourceExists => ErrorKind::AlreadyExists,
            ServerClientErrorCode::ResourceNotExists | ServerClientErrorCode::RepoDoesNotExist => {
                ErrorKind::NotFound
            }
            ServerClientErrorCode::InvalidCredentials => ErrorKind::InvalidCredentials,
            ServerClientErrorCode::BackendNotAvailable => ErrorKind::BackendNotAvailable,
            ServerClientErrorCode::GatewayError => ErrorKind::Cloud,
            ServerClientErrorCode::UnspecifiedError => ErrorKind::Validation,
        }
    }

    /// The code for an SDK error kind (`error` for kinds dstack has no code for).
    pub fn from_kind(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::NotFound => ServerClientErrorCode::ResourceNotExists,
            ErrorKind::AlreadyExists => ServerClientErrorCode::ResourceExists,
            ErrorKind::InvalidCredentials => ServerClientErrorCode::InvalidCredentials,
            ErrorKind::BackendNotAvailable => ServerClientErrorCode::BackendNotAvailable,
            _ => ServerClientErrorCode::UnspecifiedError,
        }
    }
}

/// One `{msg, code, fields?}` item. Used in 400 lists, in 403/404 `detail` objects, and bare
/// (unwrapped) for service-level 403s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The human-readable message.
    pub msg: String,
    /// The error code: set for 400 items (`null` only for the version check), `null` for 403/404.
    pub code: Option<ServerClientErrorCode>,
    /// The offending field path; only present when the error names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
}

impl ErrorDetail {
    /// An item with `code: null` (403/404 bodies).
    pub fn without_code(msg: impl Into<String>) -> Self {
        Self {
            msg: msg.into(),
            code: None,
            fields: None,
        }
    }
}

/// 400 body: `{"detail": [ErrorDetail, …]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRequestBody {
    /// One item, or one per field path.
    pub detail: Vec<ErrorDetail>,
}

impl BadRequestBody {
    /// The body for a business error: one item, or one item per field path, all with the same
    /// message and code (as dstack's `get_server_client_error_details`).
    pub fn new(msg: &str, code: ServerClientErrorCode, fields: &[Vec<String>]) -> Self {
        let detail = if fields.is_empty() {
            vec![ErrorDetail {
                msg: msg.to_string(),
                code: Some(code),
                fields: None,
            }]
        } else {
            fields
                .iter()
                .map(|f| ErrorDetail {
                    msg: msg.to_string(),
                    code: Some(code),
                    fields: Some(f.clone()),
                })
                .collect()
        };
        Self { detail }
    }
}

/// 403/404 body from an auth dependency: `{"detail": {"msg", "code": null}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailBody {
    /// The wrapped item.
    pub detail: ErrorDetail,
}

/// A plain `{"detail": "<text>"}` body (FastAPI's own errors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlainDetailBody {
    /// The text, e.g. `Not Found`, `Not authenticated`, `Filename too long`.
    pub detail: String,
}

/// One element of a 422 `loc`: a key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LocItem {
    /// A list index.
    Index(u64),
    /// An object key (or `body`, `query`, …).
    Key(String),
}

/// One 422 item, as FastAPI/pydantic write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationErrorItem {
    /// pydantic's error type, e.g. `missing`, `extra_forbidden`, `value_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where in the request: `["body", "username"]`.
    pub loc: Vec<LocItem>,
    /// The message, e.g. `Field required`.
    pub msg: String,
    /// The offending input value.
    #[serde(default)]
    pub input: serde_json::Value,
    /// Extra context (e.g. the pattern that failed), when pydantic gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<serde_json::Value>,
}

/// 422 body: `{"detail": [ValidationErrorItem, …]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationErrorBody {
    /// The validation failures.
    pub detail: Vec<ValidationErrorItem>,
}

/// Any dstack error response, with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 400 with a list of items.
    BadRequest(BadRequestBody),
    /// 403 raised by a service: the item is sent unwrapped.
    ForbiddenUnwrapped(ErrorDetail),
    /// 403 or 404 from an auth dependency: `{"detail": {...}}`.
    Detail {
        /// 403 or 404.
        status: u16,
        /// The body.
        body: DetailBody,
    },
    /// 422 request validation.
    Validation(ValidationErrorBody),
    /// A `{"detail": "<text>"}` body with the given status.
    Plain {
        /// The HTTP status.
        status: u16,
        /// The body.
        body: PlainDetailBody,
    },
}

impl ApiError {
    /// `403 {"detail":{"msg":"Invalid token","code":null}}`.
    pub fn invalid_token() -> Self {
        ApiError::Detail {
            status: 403,
            body: DetailBody {
                detail: ErrorDetail::without_code("Invalid token"),
            },
        }
    }

    /// `403 {"detail":{"msg":"Access denied","code":null}}` (auth dependency).
    pub fn access_denied() -> Self {
        ApiError::Detail {
            status: 403,
            body: DetailBody {
                detail: ErrorDetail::without_code("Access denied"),
            },
        }
    }

    /// `404 {"detail":{"msg":"Not found","code":null}}` (project missing in an auth dependency).
    pub fn project_not_found() -> Self {
        ApiError::Detail {
            status: 404,
            body: DetailBody {
                detail: ErrorDetail::without_code("Not found"),
            },
        }
    }

    /// `403 {"msg": msg, "code": null}` (a service-level `ForbiddenError`).
    pub fn forbidden(msg: impl Into<String>) -> Self {
        ApiError::ForbiddenUnwrapped(ErrorDetail::without_code(msg))
    }

    /// `400` business error with `code` and optional field paths.
    pub fn bad_request(msg: &str, code: ServerClientErrorCode, fields: &[Vec<String>]) -> Self {
        ApiError::BadRequest(BadRequestBody::new(msg, code, fields))
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::ForbiddenUnwrapped(_) => 403,
            ApiError::Detail { status, .. } | ApiError::Plain { status, .. } => *status,
            ApiError::Validation(_) => 422,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let v = match self {
            ApiError::BadRequest(b) => serde_json::to_value(b),
            ApiError::ForbiddenUnwrapped(d) => serde_json::to_value(d),
            ApiError::Detail { body, .. } => serde_json::to_value(body),
            ApiError::Validation(b) => serde_json::to_value(b),
            ApiError::Plain { body, .. } => serde_json::to_value(body),
        };
        v.unwrap_or(serde_json::Value::Null)
    }

    /// Reads an error response (`status`, JSON `body`) as the Python client does.
    pub fn from_response(status: u16, body: &serde_json::Value) -> Option<Self> {
        let detail = body.get("detail");
        match (status, detail) {
            (400, Some(serde_json::Value::Array(_))) => serde_json::from_value(body.clone())
                .ok()
                .map(ApiError::BadRequest),
            (422, Some(serde_json::Value::Array(_))) => serde_json::from_value(body.clone())
                .ok()
                .map(ApiError::Validation),
            (_, Some(serde_json::Value::Object(_))) => serde_json::from_value(body.clone())
                .ok()
                .map(|body| ApiError::Detail { status, body }),
            (_, Some(serde_json::Value::String(_))) => serde_json::from_value(body.clone())
                .ok()
                .map(|body| ApiError::Plain { status, body }),
            (403, None) => serde_json::from_value(body.clone())
                .ok()
                .map(ApiError::ForbiddenUnwrapped),
            _ => None,
        }
    }

    /// Maps an SDK error to dstack's HTTP shape: forbidden → unwrapped 403, everything else
    /// a 400 with the kind's code and the error's field paths.
    pub fn from_error(err: &Error) -> Self {
        match err.kind() {
            ErrorKind::Forbidden => {
                let msg = if err.message().is_empty() {
                    "Access denied"
                } else {
                    err.message()
                };
                ApiError::forbidden(msg)
            }
            kind => ApiError::bad_request(
                err.message(),
                ServerClientErrorCode::from_kind(kind),
                err.fields(),
            ),
        }
    }

    /// Converts back into an SDK error (the client side).
    pub fn to_error(&self) -> Error {
        match self {
            ApiError::BadRequest(b) => {
                let first = b.detail.first();
                let code = first
                    .and_then(|d| d.code)
                    .unwrap_or(ServerClientErrorCode::UnspecifiedError);
                let msg = first.map(|d| d.msg.clone()).unwrap_or_default();
                let fields: Vec<&str> = first
                    .and_then(|d| d.fields.as_ref())
                    .map(|f| f.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                // `Error` carries field paths only for validation errors.
                if fields.is_empty() || code.kind() != ErrorKind::Validation {
                    Error::new(code.kind(), msg)
                } else {
                    Error::validation(&fields, msg)
                }
            }
            ApiError::ForbiddenUnwrapped(d) => Error::new(ErrorKind::Forbidden, d.msg.clone()),
            ApiError::Detail { status: 404, body } => {
                Error::new(ErrorKind::NotFound, body.detail.msg.clone())
            }
            ApiError::Detail { body, .. } => {
                Error::new(ErrorKind::Forbidden, body.detail.msg.clone())
            }
            ApiError::Validation(b) => {
                let msg = b
                    .detail
                    .iter()
                    .map(|i| {
                        let loc: Vec<String> = i
                            .loc
                            .iter()
                            .map(|l| match l {
                                LocItem::Index(n) => n.to_string(),
                                LocItem::Key(k) => k.clone(),
                            })
                            .collect();
                        format!("{}: {}", loc.join("."), i.msg)
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                Error::new(
                    ErrorKind::Validation,
                    format!("Server validation error: {msg}"),
                )
            }
            ApiError::Plain { status, body } => {
                let kind = match status {
                    401 | 403 => ErrorKind::Forbidden,
                    404 => ErrorKind::NotFound,
                    _ => ErrorKind::Validation,
                };
                Error::new(kind, body.detail.clone())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_request_shapes() {
        let e = ApiError::bad_request(
            "Run not found",
            ServerClientErrorCode::ResourceNotExists,
            &[],
        );
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            json!({"detail": [{"msg": "Run not found", "code": "resource_not_exists"}]})
        );
        let e = ApiError::bad_request(
            "Invalid name",
            ServerClientErrorCode::UnspecifiedError,
            &[vec!["name".into()], vec!["spec".into(), "name".into()]],
        );
        assert_eq!(
            e.body(),
            json!({"detail": [
                {"msg": "Invalid name", "code": "error", "fields": ["name"]},
                {"msg": "Invalid name", "code": "error", "fields": ["spec", "name"]}
            ]})
        );
        let back = ApiError::from_response(400, &e.body()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn forbidden_and_not_found_shapes() {
        assert_eq!(
            ApiError::forbidden("Access denied").body(),
            json!({"msg": "Access denied", "code": null})
        );
        assert_eq!(
            ApiError::access_denied().body(),
            json!({"detail": {"msg": "Access denied", "code": null}})
        );
        assert_eq!(
            ApiError::invalid_token().body(),
            json!({"detail": {"msg": "Invalid token", "code": null}})
        );
        let nf = ApiError::project_not_found();
        assert_eq!(
            (nf.status(), nf.body()),
            (404, json!({"detail": {"msg": "Not found", "code": null}}))
        );
        assert_eq!(
            ApiError::from_response(403, &json!({"msg": "x", "code": null})),
            Some(ApiError::forbidden("x"))
        );
        assert_eq!(nf.to_error().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn validation_shape() {
        let body = json!({"detail": [{
            "type": "missing", "loc": ["body", "members", 0, "username"],
            "msg": "Field required", "input": {"project_role": "user"}
        }]});
        let e = ApiError::from_response(422, &body).unwrap();
        assert_eq!(e.body(), body);
        assert!(
            e.to_error()
                .message()
                .contains("body.members.0.username: Field required")
        );
    }

    #[test]
    fn sdk_error_mapping() {
        let err = Error::new(ErrorKind::AlreadyExists, "Project exists");
        assert_eq!(
            ApiError::from_error(&err).body(),
            json!({"detail": [{"msg": "Project exists", "code": "resource_exists"}]})
        );
        let err = Error::validation(&["resources", "gpu"], "bad gpu");
        let api = ApiError::from_error(&err);
        assert_eq!(
            api.body()["detail"][0]["fields"],
            json!(["resources", "gpu"])
        );
        assert_eq!(api.to_error(), err);
        let err = Error::new(ErrorKind::Forbidden, "");
        assert_eq!(
            ApiError::from_error(&err).body(),
            json!({"msg": "Access denied", "code": null})
        );
    }
}
