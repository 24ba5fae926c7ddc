//! The real `opampd` binary: start-up from the shipped configuration, configuration layers, health
//! endpoints and `opampd healthcheck`, `opampd migrate`, bad configuration, plain text logs, the
//! per-connection log fields, and graceful shutdown on SIGTERM with every collector's
//! `server_termination` stored.

use std::collections::BTreeSet;

use opampd::collector::{Reason as R, State as S};
use sqlx::Row as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::binary::{ServerProcess, run, run_with_data};
use crate::support::postgres::PgServer;
use crate::support::*;

#[tokio::test]
async fn serves_both_listeners_and_health_endpoints() {
    let mut server = ServerProcess::start(&[], &[]).await;
    let api = format!("http://{}", server.api_addr);
    for live in ["/livez", "/healthz"] {
        let health = http_client()
            .get(format!("{api}{live}"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "{live}");
    }
    let ready = http_client()
        .get(format!("{api}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let uid = new_uid();
    let reply = post_ok(&server.opamp_url(), &hello(&uid, 0)).await;
    assert_eq!(reply.instance_uid, uid);
    server.signal("TERM");
    assert!(server.wait_exit().await.success());
}

/// A clean stop writes everything: every collector still connected, over either transport, ends
/// with `server_termination` in the store the binary leaves behind.
#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_stores_every_server_termination() {
    let data = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_with_data(data.path(), &["serve"], &[]).await;
    let mut sockets = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let uid = new_uid();
        let mut ws = WsClient::connect(&server.ws_url()).await;
        ws.exchange(&hello(&uid, 0)).await;
        sockets.push(ws);
        ids.push(id_of(&uid));
    }
    for _ in 0..3 {
        let uid = new_uid();
        post_ok(&server.opamp_url(), &hello(&uid, 0)).await;
        ids.push(id_of(&uid));
    }
    server.signal("TERM");
    for ws in &mut sockets {
        assert_eq!(ws.expect_close().await, CloseCode::Away);
    }
    assert!(server.wait_exit().await.success());
    let last = server.events().pop().expect("log lines");
    assert_eq!(last["message"], "stopped", "the last line says so: {last}");

    let url = format!("sqlite://{}", data.path().join("opampd.db").display());
    let store = open_existing_store(&url, "reader").await;
    for id in ids {
        assert_eq!(
            steps(&store.transitions(id).await.unwrap()),
            [
                (None, S::Connected, R::Initial),
                (Some(S::Connected), S::Disconnected, R::ServerTermination),
            ],
            "history of {id}"
        );
    }
}

#[tokio::test]
async fn a_bad_configuration_value_fails_start_up_naming_the_key_and_source() {
    let output = run(&[], &[("OPAMPD_OPAMP__MAX_CONNECTIONS", "lots")]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("opamp.max_connections"), "{stderr}");
    assert!(stderr.contains("OPAMPD_OPAMP__MAX_CONNECTIONS"), "{stderr}");
}

#[tokio::test]
async fn environment_and_flags_override_the_file() {
    let mut server =
        ServerProcess::start(&[], &[("OPAMPD_OPAMP__AUTH__TOKENS", "[\"from-env\"]")]).await;
    let body = prost::Message::encode_to_vec(&hello(&new_uid(), 0));
    let protobuf = ("content-type", "application/x-protobuf");
    let refused = post_raw(&server.opamp_url(), &[protobuf], body.clone()).await;
    assert_eq!(refused.status, 401);
    let accepted = post_raw(
        &server.opamp_url(),
        &[protobuf, ("authorization", "Bearer from-env")],
        body,
    )
    .await;
    assert_eq!(accepted.status, 200);
    server.signal("TERM");
    assert!(server.wait_exit().await.success());
}

/// A flag wins over the environment variable for the same key: with the environment's database
/// the server could not start at all.
#[tokio::test]
async fn a_flag_wins_over_the_environment_for_the_same_key() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("from-flag.db");
    let flag = format!("sqlite://{}", file.display());
    let unreachable = ("OPAMPD_DATABASE__URL", "postgres://nobody@127.0.0.1:1/none");
    let mut server =
        ServerProcess::start_with_data(data.path(), &["--database-url", &flag], &[unreachable])
            .await;
    let uid = new_uid();
    post_ok(&server.opamp_url(), &hello(&uid, 0)).await;
    server.signal("TERM");
    assert!(server.wait_exit().await.success());
    let store = open_existing_store(&flag, "reader").await;
    assert!(store.load(id_of(&uid)).await.unwrap().is_some(), "{flag}");
}

/// What `_sqlx_migrations` says was applied, read without any migrator: (version, checksum, when).
async fn applied_migrations(url: &str) -> Vec<(i64, Vec<u8>, String)> {
    const QUERY: &str = "SELECT version, checksum, CAST(installed_on AS TEXT) AS installed_on \
         FROM _sqlx_migrations WHERE success ORDER BY version";
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let rows = sqlx::query(QUERY).fetch_all(&pool).await.unwrap();
        rows.iter()
            .map(|r| (r.get("version"), r.get("checksum"), r.get("installed_on")))
            .collect()
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let rows = sqlx::query(QUERY).fetch_all(&pool).await.unwrap();
        rows.iter()
            .map(|r| (r.get("version"), r.get("checksum"), r.get("installed_on")))
            .collect()
    }
}

/// The versions of the migrations shipped for `backend`.
fn shipped_migrations(backend: Backend) -> BTreeSet<i64> {
    let dir = match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    };
    std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.split('_').next().unwrap().parse().unwrap()
        })
        .collect()
}

/// `opampd migrate` alone brings an empty database to the shipped schema, and a second run
/// changes nothing: checked by reading the database directly, never through code that migrates.
async fn migrate_prepares_a_database_and_is_idempotent(backend: Backend) {
    let database = fresh_database(backend).await;
    let migrate = ["migrate", "--database-url", &database.url];
    let first = run(&migrate, &[]).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let applied = applied_migrations(&database.url).await;
    let versions: BTreeSet<i64> = applied.iter().map(|(v, _, _)| *v).collect();
    assert_eq!(versions, shipped_migrations(backend));

    let second = run(&migrate, &[]).await;
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        applied_migrations(&database.url).await,
        applied,
        "nothing applied twice"
    );
    let store = open_existing_store(&database.url, "reader").await;
    assert!(store.collectors().await.unwrap().is_empty());
    assert_eq!(store.last_seq().await.unwrap(), 0);
}

crate::on_both_stores!(migrate_prepares_a_database_and_is_idempotent);

#[tokio::test]
async fn an_unreachable_database_fails_start_up_with_a_clear_message() {
    let url = "postgres://opampd:secret@127.0.0.1:1/opampd";
    let output = run(&["--database-url", url], &[]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot open the database"), "{stderr}");
    assert!(
        stderr.contains("opampd:***@127.0.0.1:1"),
        "password hidden: {stderr}"
    );
    assert!(!stderr.contains("secret"), "{stderr}");
}

/// `opampd healthcheck` follows liveness: it stays 0 while the database is down (a restart would
/// lose the changes held for it), when `/readyz` and `healthcheck --ready` fail; neither is 0 when
/// nothing answers.
#[tokio::test]
async fn healthcheck_follows_liveness_and_its_ready_flag_follows_readiness() {
    let mut pg = PgServer::start().await;
    let url = pg.create_database("healthcheck").await;
    let server = TestServer::start_with(|c| c.database.url = url).await;
    let api = server.running().api_addr.to_string();
    let live = ["healthcheck", "--api-listen", api.as_str()];
    let ready = ["healthcheck", "--ready", "--api-listen", api.as_str()];
    for check in [&live[..], &ready[..]] {
        let output = run(check, &[]).await;
        assert!(
            output.status.success(),
            "{check:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pg.stop().await;
    // /readyz answers from the background probe's last ping (api.probe_interval).
    eventually("/readyz to see the store gone", || async {
        (readyz(&server.api_url).await.0 == 503).then_some(())
    })
    .await;
    let alive = run(&live, &[]).await;
    assert!(
        alive.status.success(),
        "a database outage is no reason to restart: {}",
        String::from_utf8_lossy(&alive.stderr)
    );
    let degraded = run(&ready, &[]).await;
    assert!(!degraded.status.success());
    let stderr = String::from_utf8_lossy(&degraded.stderr);
    assert!(
        stderr.contains("not ready") && stderr.contains("503"),
        "{stderr}"
    );

    for check in [
        &["healthcheck", "--api-listen", "127.0.0.1:1"][..],
        &["healthcheck", "--ready", "--api-listen", "127.0.0.1:1"][..],
    ] {
        assert!(!run(check, &[]).await.status.success(), "{check:?}");
    }
}

/// Lines logged for a connection carry its span: the transport, and the collector once known.
#[tokio::test]
async fn connection_logs_carry_the_transport_and_the_collector_id() {
    let debug = ("RUST_LOG", "opampd=debug");
    let mut server = ServerProcess::start(&[], &[debug]).await;
    let (ws_uid, http_uid) = (new_uid(), new_uid());
    let mut ws = WsClient::connect(&server.ws_url()).await;
    ws.exchange(&hello(&ws_uid, 0)).await;
    post_ok(&server.opamp_url(), &hello(&http_uid, 0)).await;
    drop(ws);
    for (transport, span, uid, message) in [
        (
            "websocket",
            "opamp_connection",
            &ws_uid,
            "WebSocket connection closed",
        ),
        ("http", "opamp_request", &http_uid, "OpAMP request answered"),
    ] {
        let id = id_of(uid).to_string();
        let line = server
            .wait_logged(message, |e| {
                e["message"] == message && e["span"]["collector_id"] == id.as_str()
            })
            .await;
        assert_eq!(line["span"]["name"], span, "{line}");
        assert_eq!(line["span"]["transport"], transport, "{line}");
        assert!(line["span"]["connection"].is_u64(), "{line}");
    }
    server.signal("TERM");
    assert!(server.wait_exit().await.success());
}

/// At start-up the soft open-files limit is raised to the hard one (each collector holds a
/// socket), and the server says how many collectors that leaves room for.
#[tokio::test]
async fn the_open_files_limit_is_raised_and_the_room_it_leaves_logged() {
    let mut server = ServerProcess::start(&[], &[]).await;
    let line = server
        .wait_logged("the open-files line", |e| {
            e["message"] == "open-files limit raised to the hard limit"
        })
        .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    // "Max open files            20000                20000                files"
    let row: Vec<String> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(row[3], row[4], "soft and hard: {row:?}");
    assert_eq!(line["open_files"].to_string(), row[3], "{line}");
    let collectors = line["collectors"].as_u64().unwrap();
    assert!(
        collectors > 0 && collectors < line["open_files"].as_u64().unwrap(),
        "{line}"
    );
    server.signal("TERM");
    assert!(server.wait_exit().await.success());
}

/// With no database configured, the store is the SQLite file in the data directory.
#[tokio::test]
async fn the_default_store_is_a_sqlite_file_in_the_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let output = run_with_data(data.path(), &["migrate"], &[]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(data.path().join("opampd.db").is_file());
}

/// Text logs written to a pipe (a file, journald) carry no colour escape codes; the level and the
/// message are plain text.
#[tokio::test]
async fn text_logs_to_a_pipe_have_no_escape_codes() {
    let output = run(&["migrate", "--log-format", "text"], &[]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let logs = String::from_utf8_lossy(&output.stdout);
    let line = logs
        .lines()
        .find(|l| l.contains("migrations applied"))
        .unwrap_or_else(|| panic!("the migrate line is logged: {logs}"));
    assert!(line.contains(" INFO "), "{line:?}");
    assert!(!logs.contains('\u{1b}'), "escape codes in {logs:?}");
}

/// A configuration that still sets the retired `opamp.ws_buffer_bytes` starts, and is told the
/// key is ignored.
#[tokio::test]
async fn the_retired_websocket_buffer_key_is_accepted_and_named_as_ignored() {
    let mut server = ServerProcess::start(&[], &[("OPAMPD_OPAMP__WS_BUFFER_BYTES", "1024")]).await;
    let line = server
        .wait_logged("the warning", |e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("opamp.ws_buffer_bytes is ignored"))
        })
        .await;
    assert_eq!(line["level"], "WARN", "{line}");
    server.signal("TERM");
    assert!(server.wait_exit().await.success());
}
