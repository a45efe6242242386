//! `sessions:`: the key that seals session ids, and the one being rotated out.

use std::path::Path;

use crate::error::ConfigError;
use crate::file::SessionsFile;
use crate::model::{SessionKey, MIN_SESSION_KEY_LEN};
use crate::scope::Scope;

/// The current key and the previous one, each when configured.
pub(super) fn keys(
    at: &Scope<'_>,
    f: &SessionsFile,
) -> Result<(Option<SessionKey>, Option<SessionKey>), ConfigError> {
    let current = one(
        at,
        f.key_file.as_deref(),
        f.key_env.as_deref(),
        ("key_file", "key_env"),
    )?;
    let previous = one(
        at,
        f.previous_key_file.as_deref(),
        f.previous_key_env.as_deref(),
        ("previous_key_file", "previous_key_env"),
    )?;
    if previous.is_some() && current.is_none() {
        return Err(at.err("a previous key needs a current one (key_file or key_env)"));
    }
    Ok((current, previous))
}

fn one(
    at: &Scope<'_>,
    file: Option<&Path>,
    env: Option<&str>,
    keys: (&'static str, &'static str),
) -> Result<Option<SessionKey>, ConfigError> {
    if file.is_none() && env.is_none() {
        return Ok(None);
    }
    let key = super::secret::read(file, env, (&at.key(keys.0), &at.key(keys.1), at))?;
    if key.len() < MIN_SESSION_KEY_LEN {
        let which = if file.is_some() { keys.0 } else { keys.1 };
        return Err(at.key(which).err(format!(
            "the key has {} bytes; use at least {MIN_SESSION_KEY_LEN} (e.g. `openssl rand -hex 32`)",
            key.len()
        )));
    }
    Ok(Some(SessionKey(key.into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::super::tests::GOOD;
    use crate::model::{SessionKey, MIN_SESSION_KEY_LEN};

    #[test]
    fn the_session_key_comes_from_a_file_or_the_environment_and_must_be_long() {
        let dir = std::env::temp_dir().join(format!("portcullis-skey-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let long = "k".repeat(MIN_SESSION_KEY_LEN);
        std::fs::write(dir.join("key"), format!("{long}\n")).expect("write");
        std::fs::write(dir.join("short"), "tiny").expect("write");
        let path = dir.join("gw.yaml");
        let with = |s: &str| format!("{GOOD}sessions:\n{s}");
        assert!(crate::load_str(&path, GOOD)
            .expect("valid")
            .session_key
            .is_none());
        let c = crate::load_str(&path, &with("  key_file: key\n")).expect("valid");
        assert_eq!(
            c.session_key.as_ref().map(SessionKey::bytes),
            Some(long.as_bytes())
        );
        assert!(!format!("{c:?}").contains(&long), "never printed");
        let c = crate::load_str(&path, &with("  key_file: key\n  previous_key_env: PATH\n"));
        // PATH is set but may be short; the point is the key is read from the environment.
        if let Ok(c) = c {
            assert!(c.previous_session_key.is_some());
        }
        for (sessions, key) in [
            ("  key_file: short\n", "sessions.key_file"),
            ("  key_file: missing\n", "sessions.key_file"),
            ("  key_env: PORTCULLIS_SURELY_UNSET\n", "sessions.key_env"),
            ("  key_file: key\n  key_env: X\n", "sessions"),
            ("  key: x\n", "sessions.key"),
            ("  previous_key_file: key\n", "sessions"),
            (
                "  key_file: key\n  previous_key_file: short\n",
                "sessions.previous_key_file",
            ),
        ] {
            let e = crate::load_str(&path, &with(sessions)).expect_err("refused");
            assert_eq!(e.key.as_deref(), Some(key), "{sessions}: {e}");
        }
    }
}
