//! Loads the policy file a route names: parse, compile, and errors that name the policy
//! file, its line and the key, like every config error.

use std::path::Path;

use portcullis_policy::{PathStep, Policy};

use crate::error::ConfigError;
use crate::locate::{line_of, Step};

/// Reads and compiles the policy at `path`.
pub fn load_policy(path: &Path) -> Result<Policy, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
    policy_from_str(path, &text)
}

/// Compiles policy `text` read from `path` (for error messages).
pub fn policy_from_str(path: &Path, text: &str) -> Result<Policy, ConfigError> {
    let file = portcullis_policy::parse(text).map_err(|(line, message)| ConfigError {
        file: path.to_owned(),
        line,
        column: None,
        key: None,
        message,
    })?;
    portcullis_policy::compile(&file).map_err(|e| {
        let steps: Vec<Step<'_>> = e
            .path
            .iter()
            .map(|s| match s {
                PathStep::Key(k) => Step::Key(k.as_str()),
                PathStep::Index(i) => Step::Index(*i),
            })
            .collect();
        ConfigError::at(path, line_of(text, &steps), &e.key(), e.message.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_errors_name_the_policy_file_line_and_key() {
        let text = "default: deny\nrules:\n  - name: a\n    effect: allow\n    targets:\n      - tool: \"[oops\"\n";
        let e = policy_from_str(Path::new("policies/p.yaml"), text).expect_err("bad glob");
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(e.key.as_deref(), Some("rules[0].targets[0].tool"));
        assert!(e.to_string().starts_with("policies/p.yaml:6:"), "{e}");
        let e =
            policy_from_str(Path::new("p.yaml"), "default: deny\nrulez: []\n").expect_err("typo");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("rulez"), "{e}");
    }
}
