//! Config errors that name the file, the line (where known) and the key.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a config file was refused.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// 1-based column, where known.
    pub column: Option<usize>,
    /// The dotted key path, e.g. `upstreams.demo.connect_timeout`, where known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> ConfigError {
        ConfigError {
            file: path.to_owned(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read the file: {e}"),
        }
    }

    pub(crate) fn at(path: &Path, line: Option<usize>, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: path.to_owned(),
            line,
            column: None,
            key: (!key.is_empty()).then(|| key.to_owned()),
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
