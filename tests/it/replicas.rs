//! Several real `opampd` processes on one real PostgreSQL behaving as one server: orders reach the
//! node holding the collector, one rollout engine serves every node, a killed node's collectors
//! are marked Disconnected by a survivor and come back elsewhere with everything kept; and SQLite
//! refusing a second server on its file.

use opampd::collector::machine::hex;
use opampd::proto;
use serde_json::json;

use crate::rollouts::{configuration, hung_rollout, labelled, rollout_where};
use crate::support::api::{Api, assert_error};
use crate::support::binary::{ServerProcess, run_with_data};
use crate::support::postgres::fresh_database;
use crate::support::scripted::{Script, Scripted};
use crate::support::*;

async fn node(url: &str, name: &str) -> ServerProcess {
    node_taking_over_after(url, name, "2s").await
}

/// A node that takes a silent one for dead after `node_timeout`.
async fn node_taking_over_after(url: &str, name: &str, node_timeout: &str) -> ServerProcess {
    ServerProcess::start(
        &[],
        &[
            ("OPAMPD_DATABASE__URL", url),
            ("OPAMPD_SERVER__NODE_ID", name),
            ("OPAMPD_CLUSTER__RENEW_INTERVAL", "200ms"),
            ("OPAMPD_CLUSTER__NODE_TIMEOUT", node_timeout),
        ],
    )
    .await
}

fn api_of(node: &ServerProcess) -> Api {
    Api::new(&format!("http://{}", node.api_addr))
}

/// The collector's history as `to_state/reason` steps, oldest first, read through `api`.
async fn steps_via(api: &Api, id: opampd::collector::CollectorId) -> Vec<String> {
    let page = api
        .ok(&format!("/api/v1/collectors/{id}/transitions?limit=100"))
        .await;
    let mut steps: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}/{}",
                t["to"].as_str().unwrap(),
                t["reason"].as_str().unwrap()
            )
        })
        .collect();
    steps.reverse();
    steps
}

/// Each collector went through a rollout's configuration exactly once, and nothing else. The
/// rollout's engine may read a collector's verdict from its actor (on its own node) before the
/// batcher has committed the transition it causes, so the last step is waited for; an extra or a
/// wrong step still fails at the deadline.
async fn assert_rolled_out(api: &Api, ids: &[opampd::collector::CollectorId]) {
    let expected = [
        "connected/initial",
        "pending/queued_for_rollout",
        "configuring/config_sent",
        "connected/config_applied",
    ];
    for id in ids {
        let history = steps_at_least(api, *id, expected.len()).await;
        assert_eq!(history, expected, "exact history of {id}");
    }
}

/// The collector's history once it has at least `n` steps (a node's engine or a client may see
/// a change before the batcher has committed it); failing at the deadline.
async fn steps_at_least(api: &Api, id: opampd::collector::CollectorId, n: usize) -> Vec<String> {
    let mut last = Vec::new();
    let settled = tokio::time::timeout(DEADLINE, async {
        loop {
            last = steps_via(api, id).await;
            if last.len() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "history of {id} incomplete: {last:?}");
    last
}

#[tokio::test]
async fn three_nodes_on_one_postgres_act_as_one_server() {
    let db = fresh_database().await;
    let a = node(&db.url, "a").await;
    let b = node(&db.url, "b").await;
    let mut c = node(&db.url, "c").await;
    let (api_a, api_b, api_c) = (api_of(&a), api_of(&b), api_of(&c));

    // A rollout started through B reaches collectors held by A and by C.
    configuration(&api_b).await;
    let on_a = Scripted::start(&a.ws_url(), &["kafka"], Script::Apply).await;
    let on_c = Scripted::start(&c.ws_url(), &["kafka"], Script::Apply).await;
    labelled(&api_a, &[&on_a, &on_c]).await;
    for id in [on_a.id, on_c.id] {
        let seen = api_b.ok(&format!("/api/v1/collectors/{id}")).await;
        assert_eq!(
            seen["labels"],
            json!({"env": "prod"}),
            "B sees A's label edit"
        );
    }
    let started = api_b
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "selector": "env=prod"}),
        )
        .await;
    let rollout = started["id"].as_str().unwrap().to_owned();
    let done = rollout_where(&api_c, &rollout, "completed, read through C", |r| {
        r["status"] == "completed"
    })
    .await;
    assert_eq!(done["progress"]["applied"], 2, "{done}");
    assert_eq!((on_a.received(), on_c.received()), (1, 1), "sent once each");
    assert_rolled_out(&api_b, &[on_a.id, on_c.id]).await;

    // A collector held by C: restarted through A, refused forgetting through B (it is
    // connected), and its transitions reach an event stream opened on B.
    let mut events = api_b.events("", None).await;
    let uid = new_uid();
    let id = id_of(&uid);
    let mut ws = WsClient::connect(&c.ws_url()).await;
    ws.exchange(&hello(&uid, 0)).await;
    let first = events.next().await;
    assert_eq!(first.data["collector_id"], id.to_string(), "{first:?}");
    // A stream opened on A after that event resumes exactly where B's is.
    let mut resumed = api_a.events("", Some(&first.id)).await;
    api_a.stored(id).await;
    let labelled = api_a
        .put(
            &format!("/api/v1/collectors/{id}/labels"),
            &json!({"team": "edge"}),
        )
        .await;
    assert_eq!(labelled.status, 200, "{}", labelled.body);
    let answer = api_a
        .post(&format!("/api/v1/collectors/{id}/restart"), &json!({}))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let pushed = ws.recv().await;
    assert_eq!(
        pushed.command.map(|c| c.r#type),
        Some(proto::CommandType::Restart as i32)
    );
    assert_error(
        &api_b.delete(&format!("/api/v1/collectors/{id}")).await,
        409,
        "conflict",
    );

    // C dies without a word: a survivor marks its collectors Disconnected, once. (The scripted
    // collector on C leaves first: a reset connection is trouble to it.)
    on_c.disconnect();
    c.signal("KILL");
    c.wait_exit().await;
    let gone = eventually("C's collector disconnected by a survivor", || async {
        let seen = api_a.ok(&format!("/api/v1/collectors/{id}")).await;
        (seen["state"] == "disconnected").then_some(seen)
    })
    .await;
    assert_eq!(gone["state_reason"], "network_interruption", "{gone}");
    for _ in 0..2 {
        let (on_b, on_a) = (events.next().await, resumed.next().await);
        assert_eq!((&on_b.id, &on_b.data), (&on_a.id, &on_a.data));
        assert_eq!(on_b.data["to"], "disconnected", "{on_b:?}");
    }

    // It comes back through A: its history continues, its labels are kept.
    let mut back = WsClient::connect(&a.ws_url()).await;
    back.exchange(&hello(&uid, 1)).await;
    let returned = eventually("the collector back, seen through B", || async {
        let seen = api_b.ok(&format!("/api/v1/collectors/{id}")).await;
        (seen["state"] == "connected").then_some(seen)
    })
    .await;
    assert_eq!(returned["labels"], json!({"team": "edge"}), "{returned}");
    assert_eq!(
        steps_via(&api_b, id).await,
        [
            "connected/initial",
            "disconnected/network_interruption",
            "connected/connection_restored"
        ]
    );
}

#[tokio::test]
async fn a_second_server_on_one_sqlite_file_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let mut first = ServerProcess::start_with_data(data.path(), &[], &[]).await;
    let second = run_with_data(data.path(), &[], &[]).await;
    assert!(!second.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(said.contains("another opampd is using"), "{said}");
    first.signal("TERM");
    assert!(first.wait_exit().await.success());
    // Once the first has stopped, the file is free.
    let mut again = ServerProcess::start_with_data(data.path(), &[], &[]).await;
    again.signal("TERM");
    assert!(again.wait_exit().await.success());
}

/// A clean stop closes the store: SQLite folds its log into the database file and removes it, so
/// no log of up to 64 MiB waits for the next start.
#[tokio::test]
async fn a_clean_stop_leaves_no_sqlite_log_behind() {
    let data = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_with_data(data.path(), &[], &[]).await;
    let mut ws = WsClient::connect(&server.ws_url()).await;
    ws.exchange(&hello(&new_uid(), 0)).await;
    let log = data.path().join("opampd.db-wal");
    assert!(log.exists(), "a running server writes through its log");
    server.signal("TERM");
    assert!(server.wait_exit().await.success());
    let left: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| (e.file_name(), e.metadata().map_or(0, |m| m.len())))
        .collect();
    assert!(
        !log.exists(),
        "the log is folded in at a clean stop; left: {left:?}"
    );
    assert!(data.path().join("opampd.db").exists());
}

/// A collector whose node died is back on another before any survivor has taken the dead node
/// for dead: the record still counts it connected there. That WebSocket connection is recorded
/// as lost when the collector arrives, then its return: the history a survivor's marking would
/// have given, and the arrival that has anything unanswered sent again. A plain-HTTP collector
/// that polled the dead node and now polls another lost nothing: its history stays as it was.
#[tokio::test]
async fn a_collector_back_before_its_dead_node_is_marked_has_its_loss_recorded() {
    let db = fresh_database().await;
    let mut a = node_taking_over_after(&db.url, "a", "10m").await;
    let b = node_taking_over_after(&db.url, "b", "10m").await;
    let api_b = api_of(&b);
    let (uid, polling) = (new_uid(), new_uid());
    let mut on_a = WsClient::connect(&a.ws_url()).await;
    on_a.exchange(&hello(&uid, 0)).await;
    post_ok(&a.opamp_url(), &hello(&polling, 0)).await;
    a.signal("KILL");
    a.wait_exit().await;
    let mut on_b = WsClient::connect(&b.ws_url()).await;
    on_b.exchange(&hello(&uid, 1)).await;
    let expected = [
        "connected/initial",
        "disconnected/network_interruption",
        "connected/connection_restored",
    ];
    let history = steps_at_least(&api_b, id_of(&uid), expected.len()).await;
    assert_eq!(history, expected);
    // A reply over plain HTTP comes after the commit: what this poll wrote is in the history.
    post_ok(&b.opamp_url(), &heartbeat(&polling, 1)).await;
    assert_eq!(
        steps_via(&api_b, id_of(&polling)).await,
        ["connected/initial"]
    );
    drop(on_a);
}

/// The node running the rollout engine dies mid-rollout: another node takes the lease, continues
/// from the stored progress and finishes, sending each collector its configuration once (twice
/// only to the one that never answered the first time).
#[tokio::test]
async fn another_node_finishes_a_rollout_when_the_engine_node_dies() {
    let db = fresh_database().await;
    let mut a = node(&db.url, "a").await;
    a.wait_logged("A runs the engine", |e| {
        e["message"] == "this node runs the rollout engine"
    })
    .await;
    let b = node(&db.url, "b").await;
    let api_b = api_of(&b);
    let (mut collectors, id) = hung_rollout(&api_b, &b.ws_url()).await;

    a.signal("KILL");
    a.wait_exit().await;
    b.wait_logged("B takes the engine over", |e| {
        e["message"] == "this node runs the rollout engine"
    })
    .await;
    // The silent collector comes back willing: what it never answered is sent again.
    let silent = collectors.remove(2);
    collectors.insert(
        2,
        silent
            .reconnect(&b.ws_url(), &["kafka"], Script::Apply)
            .await,
    );
    // Completed may come first, with the returning collector Waiting (a rollout does not wait
    // for collectors that are away); its verdict follows.
    let done = rollout_where(&api_b, &id, "completed by B, every target applied", |r| {
        r["status"] == "completed" && r["progress"]["applied"] == 4
    })
    .await;
    assert_eq!(done["progress"]["waiting"], 0, "{done}");
    let received: Vec<usize> = collectors.iter().map(Scripted::received).collect();
    assert_eq!(
        received,
        [1, 1, 2, 1],
        "sent again only where no verdict came"
    );
}

/// `HAProxy` with the shipped `deploy/haproxy.cfg`, pointed at these nodes and at free loopback
/// ports, once it listens; the OpAMP frontend's address.
///
/// `HAProxy` cannot bind port 0 and say which port it took, so the ports are picked free and let
/// go; another process may take one in between, and `HAProxy` then exits: it is started again on
/// other ports.
async fn start_haproxy(
    nodes: &[&ServerProcess],
    dir: &std::path::Path,
) -> (tokio::process::Child, String) {
    for _ in 0..5 {
        let (config, frontend) = haproxy_config(nodes, dir);
        let mut haproxy = tokio::process::Command::new("haproxy")
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy runs (Debian's haproxy package; .ci/run installs it)");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let listening = loop {
            if let Ok(Some(_)) = haproxy.try_wait() {
                break false;
            }
            if tokio::net::TcpStream::connect(&frontend).await.is_ok() {
                break true;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "haproxy never listened"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        if listening {
            return (haproxy, frontend);
        }
    }
    panic!("haproxy never found its ports free");
}

fn haproxy_config(nodes: &[&ServerProcess], dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg"))
            .unwrap();
    let free = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (opamp_port, api_port) = (free(), free());
    let mut config = String::new();
    for line in shipped.lines() {
        let trimmed = line.trim();
        let replaced = if trimmed == "bind :4320" {
            format!("    bind 127.0.0.1:{opamp_port}")
        } else if trimmed == "bind :8080" {
            format!("    bind 127.0.0.1:{api_port}")
        } else if let Some(rest) = trimmed.strip_prefix("server opampd-") {
            let (name, target) = rest.split_once(' ').unwrap();
            let n = &nodes[usize::from(name.as_bytes()[0] - b'a')];
            if target.ends_with(":4320") {
                format!(
                    "    server {name} {} check port {}",
                    n.opamp_addr,
                    n.api_addr.port()
                )
            } else {
                format!("    server {name} {} check", n.api_addr)
            }
        } else {
            line.to_owned()
        };
        config.push_str(&replaced);
        config.push('\n');
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    (path, format!("127.0.0.1:{opamp_port}"))
}

/// Plain-HTTP collectors behind the shipped `HAProxy` configuration keep reaching one node: their
/// records are never claimed by another (the epoch a claim raises stays put), while WebSocket
/// collectors connect through it too.
#[tokio::test]
async fn http_collectors_behind_haproxy_stay_on_one_node() {
    let db = fresh_database().await;
    let nodes = [
        node(&db.url, "a").await,
        node(&db.url, "b").await,
        node(&db.url, "c").await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let (_haproxy, frontend) = start_haproxy(&nodes.iter().collect::<Vec<_>>(), dir.path()).await;
    let url = format!("http://{frontend}/v1/opamp");
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // Ten, not a multiple of three: spread round-robin, each poll would land on another node.
    let uids: Vec<_> = (0..10).map(|_| new_uid()).collect();
    let mut first_claims = Vec::new();
    for uid in &uids {
        let header = hex(uid);
        let reply = post_raw(
            &url,
            &[
                ("Content-Type", "application/x-protobuf"),
                ("OpAMP-Instance-UID", &header),
            ],
            prost::Message::encode_to_vec(&hello(uid, 0)),
        )
        .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    for uid in &uids {
        let id = id_of(uid).to_string();
        let row: (i64, String) = eventually("the collector stored", || async {
            sqlx::query_as("SELECT epoch, node FROM collectors WHERE id = $1")
                .bind(&id)
                .fetch_optional(&pool)
                .await
                .unwrap()
        })
        .await;
        first_claims.push(row);
    }
    let nodes_used: std::collections::BTreeSet<&String> =
        first_claims.iter().map(|(_, n)| n).collect();
    assert!(
        nodes_used.len() > 1,
        "spread over the nodes: {first_claims:?}"
    );
    for poll in 1..4 {
        for uid in &uids {
            let reply = post_raw(
                &url,
                &[
                    ("Content-Type", "application/x-protobuf"),
                    ("OpAMP-Instance-UID", &hex(uid)),
                ],
                prost::Message::encode_to_vec(&heartbeat(uid, poll)),
            )
            .await;
            assert_eq!(reply.status, 200, "{:?}", reply.body);
        }
    }
    for (uid, first) in uids.iter().zip(&first_claims) {
        let now: (i64, String) = sqlx::query_as("SELECT epoch, node FROM collectors WHERE id = $1")
            .bind(id_of(uid).to_string())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(&now, first, "never claimed by another node");
    }

    let uid = new_uid();
    let mut ws = WsClient::connect(&format!("ws://{frontend}/v1/opamp")).await;
    let reply = ws.exchange(&hello(&uid, 0)).await;
    assert_eq!(reply.instance_uid, uid);
}

/// Every node restarted in turn (SIGTERM, then started again), its collectors reconnecting to
/// the others meanwhile: every label is kept and no history starts over.
#[tokio::test]
async fn a_rolling_restart_of_every_node_keeps_every_label() {
    let db = fresh_database().await;
    let mut nodes = [
        node(&db.url, "a").await,
        node(&db.url, "b").await,
        node(&db.url, "c").await,
    ];
    let mut collectors = Vec::new();
    for i in 0..12_u64 {
        let uid = new_uid();
        let on = usize::try_from(i % 3).unwrap();
        let mut ws = WsClient::connect(&nodes[on].ws_url()).await;
        ws.exchange(&hello(&uid, 0)).await;
        collectors.push((uid, on, ws, 1_u64));
    }
    let api = api_of(&nodes[0]);
    for (uid, ..) in &collectors {
        let id = id_of(uid);
        api.stored(id).await;
        let path = format!("/api/v1/collectors/{id}/labels");
        let answer = api.put(&path, &json!({"n": id.to_string()})).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    for restarting in 0..3 {
        let name = ["a", "b", "c"][restarting];
        nodes[restarting].signal("TERM");
        assert!(nodes[restarting].wait_exit().await.success());
        let elsewhere = (restarting + 1) % 3;
        for (uid, on, ws, seq) in &mut collectors {
            if *on == restarting {
                *ws = WsClient::connect(&nodes[elsewhere].ws_url()).await;
                ws.exchange(&hello(uid, *seq)).await;
                *seq += 1;
                *on = elsewhere;
            }
        }
        nodes[restarting] = node(&db.url, name).await;
    }
    let api = api_of(&nodes[1]);
    for (uid, ..) in &collectors {
        let id = id_of(uid);
        let seen = api.ok(&format!("/api/v1/collectors/{id}")).await;
        assert_eq!(seen["labels"], json!({"n": id.to_string()}), "{seen}");
        assert_eq!(seen["state"], "connected", "{seen}");
        let steps = steps_via(&api, id).await;
        assert_eq!(
            steps.iter().filter(|s| *s == "connected/initial").count(),
            1,
            "{id}: {steps:?}"
        );
    }
}

/// A node paused past the liveness time is taken over; when it wakes, nothing it writes lands:
/// its collector's record stays as the survivor left it, and the node closes the connection
/// (1013) so that the collector reconnects.
#[tokio::test]
async fn a_node_that_wakes_after_being_taken_over_overwrites_nothing() {
    let db = fresh_database().await;
    let a = node(&db.url, "a").await;
    let c = node(&db.url, "c").await;
    let api = api_of(&a);
    let uid = new_uid();
    let id = id_of(&uid);
    let mut ws = WsClient::connect(&c.ws_url()).await;
    ws.exchange(&hello(&uid, 0)).await;
    api.stored(id).await;

    c.signal("STOP");
    eventually("C's collector disconnected by A", || async {
        let seen = api.ok(&format!("/api/v1/collectors/{id}")).await;
        (seen["state"] == "disconnected").then_some(())
    })
    .await;
    c.signal("CONT");
    ws.send(&health_report(&uid, 1, false, "broken pipe")).await;
    assert_eq!(
        ws.expect_close().await,
        1013.into(),
        "C gives the collector up"
    );

    let seen = api.ok(&format!("/api/v1/collectors/{id}")).await;
    assert_eq!(seen["state"], "disconnected", "{seen}");
    assert_eq!(seen["state_reason"], "network_interruption", "{seen}");
    assert_eq!(
        steps_via(&api, id).await,
        ["connected/initial", "disconnected/network_interruption"],
        "nothing of C's after the takeover"
    );
}
