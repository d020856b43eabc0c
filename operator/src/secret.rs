//! Secrets the operator reads: the node admin token, the join token signing secret, the join
//! API keys. Each comes from a flag's value or from a file (a mounted Kubernetes Secret); a
//! file is re-read on every use, so a rotated Secret takes effect without a restart (kubelet
//! refreshes mounted Secrets within about a minute).

use std::path::PathBuf;

/// Where a secret comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// Not set.
    None,
    /// A fixed value (tests, development).
    Value(String),
    /// A file holding it.
    File(PathBuf),
}

impl SecretSource {
    /// From an optional value and an optional file; the file wins.
    pub fn from_flags(value: Option<String>, file: Option<PathBuf>) -> Self {
        match (value, file) {
            (_, Some(f)) => Self::File(f),
            (Some(v), None) => Self::Value(v),
            (None, None) => Self::None,
        }
    }

    /// The secret, trimmed; `None` when not set or empty (an empty secret would sign tokens
    /// anyone can forge: what needs it refuses, as without one). A file that cannot be read
    /// is an error that names the file (never the content).
    pub fn read(&self) -> Result<Option<String>, String> {
        let s = match self {
            Self::None => return Ok(None),
            Self::Value(v) => v.trim().to_owned(),
            Self::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("reading {}: {e}", p.display()))?,
        };
        Ok(Some(s).filter(|s| !s.is_empty()))
    }

    /// Every non-empty line: a key file may hold several keys during a rotation.
    pub fn lines(&self) -> Result<Vec<String>, String> {
        Ok(self
            .read()?
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::SecretSource;

    #[test]
    fn an_empty_secret_is_no_secret() {
        assert_eq!(SecretSource::Value("  \n".into()).read(), Ok(None));
        let dir = std::env::temp_dir().join(format!("moim-secret-{}", std::process::id()));
        std::fs::write(&dir, "\n").expect("write");
        assert_eq!(SecretSource::File(dir.clone()).read(), Ok(None));
        std::fs::write(&dir, " k \n").expect("write");
        assert_eq!(SecretSource::File(dir.clone()).read(), Ok(Some("k".into())));
        let _ = std::fs::remove_file(dir);
    }
}
