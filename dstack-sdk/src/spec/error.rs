//! The error type of spec parsing: what is wrong and where (the field path).

use std::fmt;

/// The path of a field inside the parsed input, e.g. `resources.gpu` or `replicas.0.commands`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// The empty path (the input itself).
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended with one more key or list index.
    pub fn child(&self, key: impl fmt::Display) -> Self {
        let mut parts = self.0.clone();
        parts.push(key.to_string());
        Self(parts)
    }

    /// The path's components, outermost first.
    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// Whether this is the root path.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(root)");
        }
        f.write_str(&self.0.join("."))
    }
}

impl From<Vec<String>> for FieldPath {
    fn from(parts: Vec<String>) -> Self {
        Self(parts)
    }
}

/// Why user input (a shorthand, a `.dstack.yml`, a request body) was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// A field holds an invalid value: `path` names it, `message` says what is wrong.
    #[error("{path}: {message}")]
    Invalid {
        /// Where the offending value is.
        path: FieldPath,
        /// What is wrong with it.
        message: String,
    },
    /// The input text is not valid YAML (or JSON).
    #[error("invalid YAML: {0}")]
    Syntax(String),
    /// Two specs (e.g. a fleet's and a run's requirements) cannot be combined.
    #[error("cannot combine: {0}")]
    Conflict(String),
}

impl SpecError {
    /// An [`SpecError::Invalid`] at `path`.
    pub fn invalid(path: &FieldPath, message: impl Into<String>) -> Self {
        SpecError::Invalid {
            path: path.clone(),
            message: message.into(),
        }
    }

    /// The field path this error refers to (the root path for syntax and conflict errors).
    pub fn path(&self) -> FieldPath {
        match self {
            SpecError::Invalid { path, .. } => path.clone(),
            _ => FieldPath::root(),
        }
    }

    /// The message without the path.
    pub fn message(&self) -> String {
        match self {
            SpecError::Invalid { message, .. } => message.clone(),
            SpecError::Syntax(m) => format!("invalid YAML: {m}"),
            SpecError::Conflict(m) => m.clone(),
        }
    }
}

impl From<SpecError> for crate::Error {
    fn from(e: SpecError) -> Self {
        let path = e.path();
        let parts: Vec<&str> = path.parts().iter().map(String::as_str).collect();
        match e {
            SpecError::Invalid { .. } => crate::Error::validation(&parts, e.to_string()),
            SpecError::Syntax(_) | SpecError::Conflict(_) => {
                crate::Error::new(crate::ErrorKind::Validation, e.to_string())
            }
        }
    }
}
