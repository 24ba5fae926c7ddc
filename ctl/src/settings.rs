//! Where the server is and which key to present: flags, then the environment (`OPAMPCTL_SERVER`,
//! `OPAMPCTL_API_KEY`), then a small TOML file, then the default (the local server).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::client::CtlError;

/// A server started with `cargo run` on this machine.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// What the configuration file may say; anything else in it is refused, so a typo is noticed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    server: Option<String>,
    api_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub server: String,
    pub api_key: Option<String>,
}

/// The configuration file in force: `--config`, else `OPAMPCTL_CONFIG`, else
/// `$XDG_CONFIG_HOME/opampctl/config.toml`, else `~/.config/opampctl/config.toml`. The second
/// value says whether it was named explicitly (then it must exist).
fn config_path(
    flag: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(PathBuf, bool)> {
    if let Some(path) = flag {
        return Some((path.to_owned(), true));
    }
    if let Some(path) = env("OPAMPCTL_CONFIG") {
        return Some((PathBuf::from(path), true));
    }
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some((base.join("opampctl").join("config.toml"), false))
}

fn read_file(path: &Path, explicit: bool) -> Result<FileSettings, CtlError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(FileSettings::default());
        }
        Err(source) => {
            return Err(CtlError::File {
                what: format!("configuration file {}", path.display()),
                source,
            });
        }
    };
    toml::from_str(&text).map_err(|e| {
        CtlError::Usage(format!(
            "configuration file {}: {}",
            path.display(),
            e.message()
        ))
    })
}

/// Layers the sources; `env` reads one environment variable (tests give their own).
pub fn resolve(
    server: Option<String>,
    api_key: Option<String>,
    config: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, CtlError> {
    // An empty variable counts as unset, as shells make them easily.
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let file = match config_path(config, &env) {
        Some((path, explicit)) => read_file(&path, explicit)?,
        None => FileSettings::default(),
    };
    Ok(Settings {
        server: server
            .or_else(|| env("OPAMPCTL_SERVER"))
            .or(file.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
        api_key: api_key.or_else(|| env("OPAMPCTL_API_KEY")).or(file.api_key),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("opampctl").join("config.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            "server = \"http://file:1\"\napi_key = \"from-the-file\"\n",
        )
        .unwrap();
        let xdg = dir.path().to_str().unwrap();

        let only_file = resolve(None, None, None, &env(&[("XDG_CONFIG_HOME", xdg)])).unwrap();
        assert_eq!(only_file.server, "http://file:1");
        assert_eq!(only_file.api_key.as_deref(), Some("from-the-file"));

        let environment = env(&[
            ("XDG_CONFIG_HOME", xdg),
            ("OPAMPCTL_SERVER", "http://env:2"),
            ("OPAMPCTL_API_KEY", ""),
        ]);
        let from_env = resolve(None, None, None, &environment).unwrap();
        assert_eq!(from_env.server, "http://env:2");
        // An empty variable is no value: the file's key stays.
        assert_eq!(from_env.api_key.as_deref(), Some("from-the-file"));

        let flags = resolve(
            Some("http://flag:3".into()),
            Some("from-the-flag".into()),
            None,
            &environment,
        )
        .unwrap();
        assert_eq!(flags.server, "http://flag:3");
        assert_eq!(flags.api_key.as_deref(), Some("from-the-flag"));
    }

    #[test]
    fn without_anything_it_is_the_local_server() {
        let settings = resolve(None, None, None, &env(&[("HOME", "/nonexistent")])).unwrap();
        assert_eq!(settings.server, DEFAULT_SERVER);
        assert_eq!(settings.api_key, None);
    }

    #[test]
    fn a_named_file_must_exist_and_a_typo_in_it_is_refused() {
        let missing = resolve(
            None,
            None,
            Some(Path::new("/nonexistent/opampctl.toml")),
            &env(&[]),
        )
        .unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/opampctl.toml"),
            "{missing}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "sever = \"http://x\"\n").unwrap();
        let path = file.to_str().unwrap();
        let typo = resolve(None, None, None, &env(&[("OPAMPCTL_CONFIG", path)])).unwrap_err();
        assert!(typo.to_string().contains("sever"), "{typo}");
    }
}
