//! The admin endpoint's credential: a bearer token in a file.
//!
//! The control routes (`/status`, `/legs`, `POST /reload`, `POST /reopen`)
//! answer only a request carrying `Authorization: Bearer <token>`. The
//! token lives in a file (`admin_token` in the config; by default
//! `admin.token` beside the ledger): the host writes a random one, mode
//! 0600, at its first start, and reads it at every start after. Who may
//! control the host is then who may read that file (the service's user and
//! root), the same people who may read the ledger; `legsync status |
//! reload | reopen | legs` read it through the host's config.
//!
//! Why a file and not a Unix socket: Prometheus, curl and a load balancer's
//! health check all speak TCP, and one listener with one rule (monitoring
//! routes open, control routes need the token) is easier to reason about
//! than two transports.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes of randomness in a token the host writes (hex: twice as many
/// characters).
const RANDOM_BYTES: usize = 32;
/// A token given by an operator must be at least this long.
const MIN_LEN: usize = 32;
const MAX_LEN: usize = 256;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the admin token {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the admin token {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the admin token {} is not a token ({why}): it must be one line of {MIN_LEN} to {MAX_LEN} printable characters without spaces; delete it and the host writes a new one at start",
        path.display()
    )]
    Malformed { path: PathBuf, why: &'static str },
    #[error(
        "the admin token {} can be read by every user of this machine (mode {mode:o}): `chmod 600` it",
        path.display()
    )]
    WorldReadable { path: PathBuf, mode: u32 },
}

/// The token a control request must carry.
#[derive(Clone)]
pub struct AdminToken {
    secret: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// The host's token: read from `path`, or written there (random, mode
    /// 0600) if the file does not exist yet. Two hosts starting at once
    /// with the same file end with the same token: the file appears whole
    /// or not at all (written aside, then linked into place).
    pub fn load_or_create(path: &Path) -> Result<AdminToken, TokenError> {
        match AdminToken::read(path) {
            Err(TokenError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let write = |source| TokenError::Write {
            path: path.to_path_buf(),
            source,
        };
        let secret = random_hex().map_err(write)?;
        let aside = path.with_extension(format!("token-new.{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)
            .and_then(|mut file| {
                file.write_all(format!("{secret}\n").as_bytes())?;
                file.sync_all()
            });
        let linked = written.and_then(|()| std::fs::hard_link(&aside, path));
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "wrote a new admin token");
                Ok(AdminToken { secret })
            }
            // Another host of the pair wrote it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => AdminToken::read(path),
            Err(e) => Err(write(e)),
        }
    }

    /// The token in `path` (for the admin commands, and a host's later
    /// starts).
    pub fn read(path: &Path) -> Result<AdminToken, TokenError> {
        let read = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.mode() & 0o004 != 0 {
            return Err(TokenError::WorldReadable {
                path: path.to_path_buf(),
                mode: meta.mode() & 0o777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let malformed = |why| TokenError::Malformed {
            path: path.to_path_buf(),
            why,
        };
        let secret = text.trim_end_matches(['\n', '\r']);
        if secret.contains('\n') {
            return Err(malformed("more than one line"));
        }
        if !(MIN_LEN..=MAX_LEN).contains(&secret.len()) {
            return Err(malformed("wrong length"));
        }
        if !secret.chars().all(|c| c.is_ascii_graphic()) {
            return Err(malformed("a space or a control character"));
        }
        Ok(AdminToken {
            secret: secret.to_string(),
        })
    }

    /// The `Authorization` header value that carries this token.
    pub fn header(&self) -> String {
        format!("Bearer {}", self.secret)
    }

    /// Whether an `Authorization` header carries this token. The
    /// comparison takes the same time wherever the first difference is.
    pub fn admits(&self, authorization: &[u8]) -> bool {
        let Some(given) = authorization.strip_prefix(b"Bearer ") else {
            return false;
        };
        let expected = self.secret.as_bytes();
        given.len() == expected.len()
            && given
                .iter()
                .zip(expected)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

/// `RANDOM_BYTES` from the kernel, as hex.
fn random_hex() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; RANDOM_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_written_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let first = AdminToken::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = AdminToken::load_or_create(&path).unwrap();
        assert_eq!(first.header(), again.header());
        assert!(first.admits(first.header().as_bytes()));
        assert!(!first.admits(b"Bearer nope"));
        assert!(!first.admits(first.header().trim_start_matches("Bearer ").as_bytes()));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "only the token file remains");
    }

    #[test]
    fn a_bad_token_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "short\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let err = AdminToken::load_or_create(&path).unwrap_err();
        assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
        std::fs::write(&path, "a".repeat(40)).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let err = AdminToken::read(&path).unwrap_err();
        assert!(matches!(err, TokenError::WorldReadable { .. }), "{err}");
    }
}
