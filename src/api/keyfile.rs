//! The admin key generated on first start when no API keys are configured: written once into the
//! data directory, readable by the server's user alone, and read again on every later start.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rand::RngExt as _;

/// Its name in the data directory.
pub const FILE: &str = "api-admin.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot create the data directory {0}: {1}")]
    Directory(PathBuf, std::io::Error),
    #[error("cannot write the generated admin key to {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("cannot read the admin key file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("the admin key file {0} holds no key of at least 16 characters")]
    Invalid(PathBuf),
}

/// The key, its file, and whether it was generated just now.
#[derive(Debug)]
pub struct AdminKey {
    pub key: String,
    pub path: PathBuf,
    pub generated: bool,
}

/// Reads the data directory's admin key, generating it (mode 0600) if there is none yet.
pub fn load_or_generate(data_dir: &Path) -> Result<AdminKey, KeyFileError> {
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim().to_owned();
            if key.len() < 16 {
                return Err(KeyFileError::Invalid(path));
            }
            return Ok(AdminKey {
                key,
                path,
                generated: false,
            });
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(KeyFileError::Read(path, err)),
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| KeyFileError::Directory(data_dir.to_owned(), e))?;
    let bytes: [u8; 32] = rand::rng().random();
    let key = format!("opampd-{}", crate::collector::machine::hex(&bytes));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .map_err(|e| KeyFileError::Write(path.clone(), e))?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyFileError::Write(path.clone(), e))?;
    Ok(AdminKey {
        key,
        path,
        generated: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_generate(&data).unwrap();
        assert!(first.generated);
        assert!(first.key.len() >= 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&first.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = load_or_generate(&data).unwrap();
        assert!(!again.generated);
        assert_eq!(again.key, first.key);
    }
}
