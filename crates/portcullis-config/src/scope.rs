//! Where validation stands in the file: the file's path and text, and the key path of
//! the value being checked. Each section of the validator narrows the scope with
//! [`Scope::key`] and [`Scope::index`], so an error only says what is wrong and the
//! scope adds the file, the line and the dotted key.

use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::locate::{line_of, Step};

/// The file being validated.
pub(crate) struct Source<'a> {
    /// Its path (relative files in it are resolved against its directory).
    pub path: &'a Path,
    /// Its text, for finding lines.
    pub text: &'a str,
}

/// A position in the config's key tree.
#[derive(Clone)]
pub(crate) struct Scope<'a> {
    src: &'a Source<'a>,
    steps: Vec<Step<'a>>,
}

impl<'a> Scope<'a> {
    /// The top of the file.
    pub fn root(src: &'a Source<'a>) -> Scope<'a> {
        Scope {
            src,
            steps: Vec::new(),
        }
    }

    /// The value under mapping key `k`.
    pub fn key(&self, k: &'a str) -> Scope<'a> {
        let mut steps = self.steps.clone();
        steps.push(Step::Key(k));
        Scope {
            src: self.src,
            steps,
        }
    }

    /// Item `i` of the sequence here.
    pub fn index(&self, i: usize) -> Scope<'a> {
        let mut steps = self.steps.clone();
        steps.push(Step::Index(i));
        Scope {
            src: self.src,
            steps,
        }
    }

    /// An error about the value here: the file, the line it is written on (or its
    /// deepest written parent's) and the dotted key.
    pub fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::at(
            self.src.path,
            line_of(self.src.text, &self.steps),
            &self.dotted(),
            message.into(),
        )
    }

    /// The key path as written in errors: `routes[0].auth.jwt`.
    pub fn dotted(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            match s {
                Step::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Step::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    /// `p` as a path: absolute as written, or relative to the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_owned();
        }
        self.src
            .path
            .parent()
            .map_or_else(|| p.to_owned(), |d| d.join(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_build_dotted_keys_and_find_lines() {
        let text = "routes:\n  - path: /a\n    upstream: x\n";
        let src = Source {
            path: Path::new("dir/gw.yaml"),
            text,
        };
        let root = Scope::root(&src);
        let s = root.key("routes").index(0).key("upstream");
        assert_eq!(s.dotted(), "routes[0].upstream");
        let e = s.err("bad");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("routes[0].upstream"))
        );
        assert_eq!(root.err("top").key, None);
        assert_eq!(root.resolve(Path::new("p.yaml")), Path::new("dir/p.yaml"));
        assert_eq!(root.resolve(Path::new("/abs")), Path::new("/abs"));
    }
}
