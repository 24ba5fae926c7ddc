//! The documentation checked against the code: the configuration reference against the
//! configuration types and the shipped file, `compose.yaml` and its secrets through the
//! configuration loader, the state diagram against the transition table, the API examples run
//! with curl against a real server (and covering every path and method of the OpenAPI document),
//! and every link kept inside the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format as _, Toml};
use opampd::collector::state::{EDGES, EXTENSIONS, Reason, State};
use opampd::config::{Config, FlagOverrides, Role};
use serde_json::Value;

use crate::support::api::Api;
use crate::support::scripted::{Script, Scripted};
use crate::support::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The fenced blocks of a Markdown text: (info string, body).
fn fenced_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some(rest)) if rest.trim().is_empty() => {
                blocks.extend(current.take());
            }
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// Dotted keys of every leaf (arrays are leaves: `opamp.auth.tokens`, `api.keys`).
fn leaf_keys(value: &Value, prefix: &str, keys: &mut BTreeSet<String>) {
    match value.as_object() {
        Some(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_keys(value, &key, keys);
            }
        }
        None => {
            keys.insert(prefix.to_owned());
        }
    }
}

/// The reference table of docs/operations.md: key to the default as TOML text.
fn documented_defaults() -> BTreeMap<String, String> {
    let text = read("docs/operations.md");
    let section = text
        .split("### Reference")
        .nth(1)
        .expect("operations.md has a configuration reference");
    let section = section.split("\n#").next().unwrap_or_default();
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let key = cells[0].trim_start_matches("| ").trim_matches('`');
        let default = cells[1].trim_matches('`');
        assert!(
            rows.insert(key.to_owned(), default.to_owned()).is_none(),
            "{key} documented twice"
        );
    }
    rows
}

/// A key added to the configuration without a line in the reference (or in the shipped file)
/// fails here, and so does a documented default that is not the built-in one.
#[test]
fn the_configuration_reference_is_the_configuration() {
    let documented = documented_defaults();
    let mut in_code = BTreeSet::new();
    leaf_keys(
        &serde_json::to_value(Config::default()).unwrap(),
        "",
        &mut in_code,
    );
    let in_docs: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(in_docs, in_code, "docs/operations.md against Config");

    let shipped: Value = Figment::from(Toml::file_exact(repo().join("config/opampd.toml")))
        .extract()
        .unwrap();
    let mut in_file = BTreeSet::new();
    leaf_keys(&shipped, "", &mut in_file);
    assert_eq!(in_file, in_code, "config/opampd.toml against Config");

    // The documented defaults, written as the TOML they are, are the built-in defaults.
    let mut toml = String::new();
    for (key, value) in &documented {
        writeln!(toml, "{key} = {value}").unwrap();
    }
    let from_docs: Config = Figment::from(Toml::string(&toml))
        .extract()
        .unwrap_or_else(|e| panic!("the documented defaults do not load: {e}\n{toml}"));
    assert_eq!(from_docs, Config::default());
}

/// `compose.yaml` with the secrets `deploy/new-secrets.sh` writes: the opampd service's variables
/// and its environment file go through opampd's own loader and mean what they say, and the
/// database URL carries the password the PostgreSQL service is given.
#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closures return its own (large) error type
fn compose_yaml_and_its_secrets_are_a_configuration_opampd_accepts() {
    let compose: Value = serde_yaml_ng::from_str(&read("compose.yaml")).unwrap();
    let opampd = &compose["services"]["opampd"];
    let mut environment: Vec<(String, String)> = opampd["environment"]
        .as_object()
        .expect("the opampd service's environment")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        opampd["env_file"], "${OPAMPD_SECRETS_DIR:-.}/opampd.env",
        "secrets come from the file new-secrets.sh writes"
    );
    assert_eq!(
        opampd["healthcheck"]["test"],
        serde_json::json!(["CMD", "opampd", "healthcheck"])
    );

    let secrets = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("sh")
        .arg(repo().join("deploy/new-secrets.sh"))
        .arg(secrets.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let env_file = |name: &str| -> Vec<(String, String)> {
        std::fs::read_to_string(secrets.path().join(name))
            .unwrap()
            .lines()
            .map(|line| {
                let (k, v) = line.split_once('=').expect("KEY=VALUE");
                (k.to_owned(), v.to_owned())
            })
            .collect()
    };
    let password = env_file("postgres.env")
        .into_iter()
        .find(|(k, _)| k == "POSTGRES_PASSWORD")
        .expect("POSTGRES_PASSWORD")
        .1;
    assert!(password.len() >= 32, "a random password: {password}");
    environment.extend(env_file("opampd.env"));
    assert!(environment.iter().all(|(k, _)| k.starts_with("OPAMPD_")));
    // Run twice, it keeps the first secrets rather than breaking the database's password.
    let again = std::process::Command::new("sh")
        .arg(repo().join("deploy/new-secrets.sh"))
        .arg(secrets.path())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!again.success());

    figment::Jail::expect_with(|jail| {
        for (key, value) in &environment {
            jail.set_env(key, value);
        }
        let config = Config::load(None, FlagOverrides::default())
            .unwrap_or_else(|e| panic!("compose.yaml's configuration: {e}"));
        assert_eq!(
            config.database_url(),
            format!("postgres://opampd:{password}@postgres:5432/opampd")
        );
        assert_eq!(config.server.node_id, "opampd-1");
        assert_eq!(config.api.keys.len(), 1);
        assert_eq!(config.api.keys[0].role, Role::Admin);
        assert_eq!(config.opamp.auth.tokens.len(), 1);
        Ok(())
    });
}

fn state_named(name: &str) -> State {
    State::ALL
        .into_iter()
        .find(|s| format!("{s:?}") == name)
        .unwrap_or_else(|| panic!("no state {name}"))
}

type DrawnEdge = (Option<State>, State, BTreeSet<Reason>);

/// The diagram in docs/states.md is the table the server enforces, edge for edge and reason for
/// reason, extensions marked as such; and the edge table below it names every reason.
#[test]
fn the_state_diagram_is_the_transition_table() {
    let text = read("docs/states.md");
    let diagram = fenced_blocks(&text)
        .into_iter()
        .find(|(info, _)| info == "mermaid")
        .expect("a mermaid diagram")
        .1;
    let (mut drawn, mut extensions): (Vec<DrawnEdge>, Vec<DrawnEdge>) = (Vec::new(), Vec::new());
    for line in diagram.lines().map(str::trim).filter(|l| l.contains("-->")) {
        let (edge, label) = line.split_once(" : ").expect("an edge with reasons");
        let (from, to) = edge.split_once(" --> ").unwrap();
        let from = (from != "[*]").then(|| state_named(from));
        let (label, list) = match label.strip_prefix("(extension) ") {
            Some(rest) => (rest, &mut extensions),
            None => (label, &mut drawn),
        };
        let reasons = label
            .split(", ")
            .map(|r| Reason::parse(r).unwrap_or_else(|| panic!("no reason {r}")))
            .collect();
        list.push((from, state_named(to), reasons));
    }
    let table = |edge: &opampd::collector::state::Edge| -> DrawnEdge {
        (edge.from, edge.to, edge.reasons.iter().copied().collect())
    };
    assert_eq!(drawn, EDGES.iter().map(table).collect::<Vec<_>>());
    assert_eq!(
        extensions,
        EXTENSIONS
            .iter()
            .map(|x| table(&x.edge))
            .collect::<Vec<_>>()
    );
    let edge_table = text
        .split("## Every edge")
        .nth(1)
        .and_then(|rest| rest.split("## Supervisor").next())
        .expect("states.md has the edge tables");
    for reason in Reason::ALL {
        assert!(
            edge_table.contains(&format!("`{}`", reason.as_str())),
            "states.md's edge tables lack {reason}"
        );
    }
}

/// One curl command of an example: its method and path.
fn request_of(command: &str) -> (String, String) {
    let words: Vec<&str> = command.split_whitespace().collect();
    let url = words
        .iter()
        .find(|w| w.contains("$OPAMPD"))
        .unwrap_or_else(|| panic!("no $OPAMPD URL in {command}"))
        .trim_matches(|c| c == '"' || c == '\'');
    let path = url
        .trim_start_matches("$OPAMPD")
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let explicit = words
        .iter()
        .position(|w| *w == "-X")
        .map(|i| words[i + 1].to_owned());
    let has_body = words.contains(&"-d") && !words.contains(&"-G");
    let method = explicit.unwrap_or_else(|| if has_body { "POST" } else { "GET" }.to_owned());
    (method, path)
}

/// Whether `path` (with `$ID`, `$ROLLOUT` and literal values) is an instance of the OpenAPI
/// `template` (with `{id}` and the like).
fn instance_of(path: &str, template: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (path.split('/').collect(), template.split('/').collect());
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(p, t)| p == t || (t.starts_with('{') && !p.is_empty()))
}

/// The examples of docs/api.md, in order, each `curl` answered with the status its block's
/// `# expect:` line says; together they call every path and method of the OpenAPI document.
#[tokio::test]
async fn the_api_examples_run() {
    assert!(
        std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "curl is needed to run the examples of docs/api.md (.ci/run installs it)"
    );
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    // One collector that accepts configurations, packages and restarts but never answers a
    // configuration, so the example rollout stays running while it is paused and resumed.
    let collector = Scripted::start(&server.ws_url, &["debug"], Script::Ignore).await;
    api.stored(collector.id).await;

    let text = read("docs/api.md");
    let mut called: Vec<(String, String)> = Vec::new();
    let mut ran = 0;
    for (info, body) in fenced_blocks(&text) {
        let Some(expected) = body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
        else {
            continue;
        };
        assert_eq!(info, "sh");
        let expected: Vec<&str> = expected.split_whitespace().collect();
        let commands: Vec<String> = body
            .replace("\\\n", " ")
            .lines()
            .filter(|l| l.trim_start().starts_with("curl "))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            commands.len(),
            expected.len(),
            "one status per curl in:\n{body}"
        );
        called.extend(commands.iter().map(|c| request_of(c)));
        let rollouts = api.ok("/api/v1/rollouts").await;
        let rollout = rollouts["items"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // Each curl prints only its status; the body goes to stderr, for the failure message.
        let script = format!(
            "set -eu\ncurl() {{ command curl --max-time 10 --output /dev/stderr --write-out \
             '%{{http_code}}\\n' \"$@\" || [ $? -eq 28 ]; }}\n{body}"
        );
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("OPAMPD", &server.api_url)
            .env("ID", collector.id.to_string())
            .env("ROLLOUT", &rollout)
            .env(
                "KEY",
                crate::support::api::generated_key(&server.api_url).unwrap_or_default(),
            )
            .output();
        let output = within("an example's curl commands", output).await.unwrap();
        let statuses = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            statuses.split_whitespace().collect::<Vec<_>>(),
            expected,
            "statuses of:\n{body}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{body}");
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} examples ran");

    let document = api.ok("/api/openapi.json").await;
    for (template, methods) in document["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            assert!(
                called
                    .iter()
                    .any(|(m, p)| *m == method && instance_of(p, template)),
                "no example calls {method} {template}"
            );
        }
    }
}

/// Every Markdown and source file in the repository, outside build output and installed tools.
fn repository_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if !matches!(name.as_ref(), "target" | ".git" | "node_modules" | "data") {
                    walk(&path, files);
                }
            } else if [".md", ".rs", ".toml", ".sh", ".yaml", ".yml", "Dockerfile"]
                .iter()
                .any(|ext| name.ends_with(ext))
            {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(repo(), &mut files);
    files
}

/// A clone of the repository is all a reader has: every relative link in its Markdown leads to a
/// file in it, and no file points into the directories beside it.
#[test]
fn every_link_stays_inside_the_repository() {
    let root = repo().canonicalize().unwrap();
    let beside = format!("{}/shared", "..");
    let mut checked = 0;
    for file in repository_files() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let shown = file.strip_prefix(repo()).unwrap().display().to_string();
        assert!(!text.contains(&beside), "{shown} refers to {beside}");
        if file.extension().is_none_or(|e| e != "md") {
            continue;
        }
        for target in text.split("](").skip(1).filter_map(|s| s.split(')').next()) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with('#')
            {
                continue;
            }
            let path = target.split('#').next().unwrap();
            let resolved = file.parent().unwrap().join(path);
            let resolved = resolved
                .canonicalize()
                .unwrap_or_else(|_| panic!("{shown} links to {target}, which does not exist"));
            assert!(
                resolved.starts_with(&root),
                "{shown} links to {target}, outside the repository"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links checked");
}
