//! The API's one error type: every failure becomes a Kubernetes `Status` with a reason and code.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use super::resources::ResourceInfo;

/// One field-level problem, as `details.causes` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// The Kubernetes cause reason, such as `FieldValueRequired`.
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
    /// The field path, such as `spec.containers[0].image`.
    pub field: String,
}

impl Cause {
    /// A required field is missing.
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        }
    }

    /// A field has a value that is not allowed.
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        why: impl std::fmt::Display,
    ) -> Self {
        Self {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: \"{value}\": {why}"),
            field: field.into(),
        }
    }

    /// A number field has a value that is not allowed (numbers go unquoted, as Kubernetes
    /// prints them).
    pub fn invalid_number(
        field: impl Into<String>,
        value: i64,
        why: impl std::fmt::Display,
    ) -> Self {
        Self {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {why}"),
            field: field.into(),
        }
    }

    /// A value appears twice where it must be unique.
    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: \"{value}\""),
            field: field.into(),
        }
    }

    /// A value outside a fixed set.
    pub fn not_supported(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        allowed: &[&str],
    ) -> Self {
        let allowed = allowed
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: \"{value}\": supported values: {allowed}"),
            field: field.into(),
        }
    }

    /// A field that may not change after creation changed.
    pub fn immutable(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            message: "field is immutable".into(),
            field: field.into(),
        }
    }
}

/// An API failure, answered as a `Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status code.
    pub code: u16,
    /// The Kubernetes reason, such as `NotFound`.
    pub reason: &'static str,
    /// The human message kubectl prints.
    pub message: String,
    /// `details.name`.
    pub name: Option<String>,
    /// `details.group` (left out for the core group).
    pub group: Option<String>,
    /// `details.kind`.
    pub kind: Option<String>,
    /// `details.causes`.
    pub causes: Vec<Cause>,
    /// `details.retryAfterSeconds`.
    pub retry_after: Option<u32>,
}

/// The result type of API handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// A bare error with a code, reason and message.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            name: None,
            group: None,
            kind: None,
            causes: Vec::new(),
            retry_after: None,
        }
    }

    fn about(mut self, res: &ResourceInfo, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self.group = (!res.group.is_empty()).then(|| res.group.to_owned());
        self.kind = Some(res.plural.to_owned());
        self
    }

    /// 404: the named object does not exist.
    pub fn not_found(res: &ResourceInfo, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        )
        .about(res, name)
    }

    /// 404: no such path or resource type.
    pub fn no_route(what: impl std::fmt::Display) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({what})"),
        )
    }

    /// 409: a create found the name taken.
    pub fn already_exists(res: &ResourceInfo, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
        )
        .about(res, name)
    }

    /// 409: an update or delete lost an optimistic-concurrency race.
    pub fn conflict(res: &ResourceInfo, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                res.qualified()
            ),
        )
        .about(res, name)
    }

    /// 409: a conflict with a custom explanation.
    pub fn conflict_because(res: &ResourceInfo, name: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                res.qualified()
            ),
        )
        .about(res, name)
    }

    /// 422: validation failed; each cause names a field.
    pub fn invalid(res: &ResourceInfo, name: &str, causes: Vec<Cause>) -> Self {
        let list = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>();
        let list = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {list}", res.kind),
        )
        .about(res, name);
        e.kind = Some(res.kind.to_owned());
        e.causes = causes;
        e
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401: no valid credentials.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403: the caller may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 405: the resource does not take this verb.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 410: a watch or continue token asked for history that is gone.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413: the body is too large.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 415: the body's content type is not one the server reads.
    pub fn unsupported_media_type(what: &str, supported: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                supported.join(", ")
            ) + &if what.is_empty() {
                String::new()
            } else {
                format!(" (got {what})")
            },
        )
    }

    /// 500: something broke inside; the cause is logged, not sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            500,
            "InternalError",
            "an internal error occurred; see the server log",
        )
    }

    /// 503: the server cannot do this now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The `Status` object, leaving out empty fields (never `null`).
    pub fn to_status(&self) -> Value {
        let mut details = Map::new();
        if let Some(n) = &self.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(g) = &self.group {
            details.insert("group".into(), json!(g));
        }
        if let Some(k) = &self.kind {
            details.insert("kind".into(), json!(k));
        }
        if !self.causes.is_empty() {
            let causes = self
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect::<Vec<_>>();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(r) = self.retry_after {
            details.insert("retryAfterSeconds".into(), json!(r));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        match e {
            crate::store::Error::Compacted { requested, oldest } => {
                Self::gone(format!("too old resource version: {requested} ({oldest})"))
            }
            crate::store::Error::Closed => Self::unavailable("the server is shutting down"),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        let mut response = (code, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}
