//! Secrets in `haven.toml` are references, never values: `env:VAR` (an environment
//! variable) or `file:PATH` (a file, its trailing newline dropped). They are read when a
//! client is made and never printed: `config check` shows the reference, errors name the
//! variable or file and never what it holds, and a secret written in clear among plain
//! properties or options is refused.

use crate::{Error, Result};

/// Whether a property or option name holds a secret (it must then be a reference).
pub fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "private", "credential"]
        .iter()
        .any(|w| k.contains(w))
        || k.ends_with("key.pem")
}

/// Checks a reference's form (`env:VAR` or `file:PATH`); the reason when it is not one.
pub fn check_reference(r: &str) -> std::result::Result<(), String> {
    match r.split_once(':') {
        Some(("env", v)) if !v.is_empty() => Ok(()),
        Some(("file", p)) if !p.is_empty() => Ok(()),
        _ => Err("a secret is given as \"env:VARIABLE\" or \"file:/path/to/file\"".into()),
    }
}

/// Reads the secret `r` refers to; `what` names the setting in errors.
pub fn resolve(what: &str, r: &str) -> Result<String> {
    match r.split_once(':') {
        Some(("env", var)) => std::env::var(var).map_err(|_| {
            Error::Input(format!(
                "{what}: environment variable {var} is not set (it holds the secret)"
            ))
        }),
        Some(("file", path)) => std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| Error::Input(format!("{what}: cannot read the secret file {path}: {e}"))),
        _ => Err(Error::Input(format!(
            "{what}: {}",
            check_reference(r).err().unwrap_or_default()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_and_errors_never_show_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p");
        std::fs::write(&f, "hunter2-file\n").unwrap();
        let r = format!("file:{}", f.display());
        assert_eq!(resolve("x", &r).unwrap(), "hunter2-file");
        let e = resolve(
            "clusters.us.secret_properties.sasl.password",
            "env:HAVEN_NO_SUCH_VAR_1",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("HAVEN_NO_SUCH_VAR_1") && e.contains("sasl.password"),
            "{e}"
        );
        assert!(resolve("x", "hunter2").is_err());
        assert!(check_reference("env:").is_err());
        assert!(looks_secret("sasl.password") && looks_secret("aws_secret_access_key"));
        assert!(looks_secret("ssl.key.pem") && !looks_secret("security.protocol"));
    }
}
