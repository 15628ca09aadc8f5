//! The one error type of the alerting module.

use std::path::PathBuf;

use crate::error::{Coded, ErrorCode};
use crate::promql::PromqlError;

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// A sub-directory of `--rules` holds one tenant's rules and is named by its tenant id.
    #[error("{}: a rules sub-directory is named by the tenant id whose rules it holds: {source}", path.display())]
    TenantDir { path: PathBuf, source: crate::tenant::InvalidTenant },
    /// The file is not YAML of the rule-file shape (serde names the field and the line).
    #[error("{}: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{}: group {group:?}: {message}", path.display())]
    Group { path: PathBuf, group: String, message: String },
    /// `index` counts from 1, as promtool does.
    #[error("{}: group {group:?}, rule {index} ({name}): {message}", path.display())]
    Rule { path: PathBuf, group: String, index: usize, name: String, message: String },
    /// A label or annotation template that does not parse (or uses what skein does not have).
    #[error("template {0}")]
    Template(String),
    #[error("{0}")]
    Query(#[from] PromqlError),
    #[error("{0}")]
    Config(String),
    #[error("notifying {url}: {message}")]
    Notify { url: String, message: String },
}

impl Coded for AlertError {
    fn code(&self) -> ErrorCode {
        match self {
            AlertError::Read { .. } | AlertError::Notify { .. } => ErrorCode::Unavailable,
            AlertError::Yaml { .. }
            | AlertError::TenantDir { .. }
            | AlertError::Group { .. }
            | AlertError::Rule { .. }
            | AlertError::Template(_)
            | AlertError::Config(_) => ErrorCode::InvalidArgument,
            AlertError::Query(e) => e.code(),
        }
    }
}

impl AlertError {
    /// Attaches a rule's place to an error found inside it.
    pub fn in_rule(
        path: &std::path::Path,
        group: &str,
        index: usize,
        name: &str,
        e: impl std::fmt::Display,
    ) -> Self {
        AlertError::Rule {
            path: path.to_path_buf(),
            group: group.to_string(),
            index,
            name: name.to_string(),
            message: e.to_string(),
        }
    }
}
