//! Errors of the policy engine.

use std::fmt;

/// Invalid input: names the file, the document, the field path and the reason. When a file has
/// one, nothing from that file is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {document}: `{path}`: {reason}")]
pub struct InputError {
    /// File (or suite) the input came from.
    pub file: String,
    /// Which document of the file.
    pub document: DocRef,
    /// Field path inside the document, e.g. `spec.ingress[0].toPorts[0].ports[0].port`
    /// (`.` for the document itself).
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// A document inside a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocRef {
    /// The n-th YAML document of a file, counted from 1.
    Document(usize),
    /// An item of a suite's `policies:` list, counted from 0 (like the YAML path).
    SuitePolicy(usize),
    /// The suite itself.
    Suite,
}

impl fmt::Display for DocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocRef::Document(n) => write!(f, "document {n}"),
            DocRef::SuitePolicy(n) => write!(f, "policies[{n}]"),
            DocRef::Suite => f.write_str("suite"),
        }
    }
}

impl InputError {
    /// Builds an error.
    pub fn new(
        file: &str,
        document: DocRef,
        path: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        let path = path.into();
        InputError {
            file: file.to_string(),
            document,
            path: if path.is_empty() {
                ".".to_string()
            } else {
                path
            },
            reason: reason.into(),
        }
    }
}

/// Errors of the engine once input is valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// An identity could not be allocated.
    #[error("cannot allocate an identity for `{name}`")]
    Identity {
        /// Endpoint or external name.
        name: String,
        /// Why.
        #[source]
        source: crate::identity::IdentityError,
    },
    /// Two endpoints or externals share a name.
    #[error("endpoint `{name}` is defined twice")]
    Duplicate {
        /// The name.
        name: String,
    },
}
