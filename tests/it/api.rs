//! The operators' REST API over the real listener, against both stores: filters, pages, one
//! collector, histories, labels, forgetting, summary, the state machine, live events, auth and
//! the OpenAPI contract (metrics are in `metrics.rs`).

use bytes::Bytes;
use opampd::collector::CollectorId;
use opampd::config::Role;
use opampd::proto;
use serde_json::{Value, json};

use crate::support::api::{Api, assert_error};
use crate::support::*;

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn list_filters_sorts_and_pages(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let made = http_collectors(&server, &api, "name", 7).await;
    for (i, (_, id)) in made.iter().enumerate() {
        let env = if i < 3 { "prod" } else { "dev" };
        let answer = api
            .put(
                &format!("/api/v1/collectors/{id}/labels"),
                &json!({"env": env, "i": i.to_string()}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let (sick, _) = &made[4];
    post_ok(
        &server.opamp_url,
        &health_report(sick, 1, false, "disk full"),
    )
    .await;
    eventually("the labels and the error are stored", || async {
        let page = api
            .ok("/api/v1/collectors?state=error&selector=env=dev")
            .await;
        (names(&page) == ["name-4"]).then_some(())
    })
    .await;

    // Every page, following the cursor, once each.
    let mut seen = Vec::new();
    let mut path = "/api/v1/collectors?limit=3&sort=-name".to_owned();
    loop {
        let page = api.ok(&path).await;
        assert!(page["items"].as_array().unwrap().len() <= 3);
        seen.extend(names(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/collectors?limit=3&sort=-name&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("name-{i}")).collect();
    assert_eq!(seen, expected);

    for (query, expected) in [
        (
            "state=connected",
            vec!["name-0", "name-1", "name-2", "name-3", "name-5", "name-6"],
        ),
        (
            "state=connected,error&selector=env=prod",
            vec!["name-0", "name-1", "name-2"],
        ),
        ("state=error&state=pending", vec!["name-4"]),
        (
            "selector=env!=prod,i%20in%20(3,5)",
            vec!["name-3", "name-5"],
        ),
        ("q=NAME-6.EXAMPLE", vec!["name-6"]),
        ("q=1.2.0", vec!["name-2"]),
    ] {
        let page = api
            .ok(&format!("/api/v1/collectors?sort=name&{query}"))
            .await;
        assert_eq!(names(&page), expected, "{query}");
    }

    for bad in [
        "state=bogus",
        "selector=env%20in%20prod",
        "sort=colour",
        "limit=0",
        "limit=501",
        "cursor=not-a-cursor",
        "colour=blue",
    ] {
        assert_error(
            &api.get(&format!("/api/v1/collectors?{bad}")).await,
            400,
            "bad_request",
        );
    }
    let first = api.ok("/api/v1/collectors?limit=1&sort=name").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let other_sort = api
        .get(&format!("/api/v1/collectors?sort=id&cursor={cursor}"))
        .await;
    assert_error(&other_sort, 400, "bad_request");
}

async fn one_collector_shows_every_fact(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let uid = new_uid();
    let mut first = hello_as(&uid, "gateway", "0.110.0");
    first.effective_config = Some(proto::EffectiveConfig {
        config_map: Some(proto::AgentConfigMap {
            config_map: [(
                "collector.yaml".to_owned(),
                proto::AgentConfigFile {
                    body: Bytes::from_static(b"receivers: {otlp: {}}\n"),
                    content_type: "text/yaml".into(),
                },
            )]
            .into(),
        }),
    });
    post_ok(&server.opamp_url, &first).await;
    let id = id_of(&uid).to_string();
    let c = api.stored(id_of(&uid)).await;
    assert_eq!(c["id"], id);
    assert_eq!(c["name"], "gateway");
    assert_eq!(c["version"], "0.110.0");
    assert_eq!(c["state"], "connected");
    assert_eq!(c["state_reason"], "initial");
    assert_eq!(c["connected"], true);
    assert_eq!(c["transport"], "http");
    assert!(c["last_seen"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        c["description"]["identifying"]["service.instance.name"],
        "gateway"
    );
    assert_eq!(
        c["description"]["non_identifying"]["host.name"],
        "gateway.example"
    );
    let capabilities = c["capabilities"].as_array().unwrap();
    assert!(capabilities.contains(&json!("reports_health")));
    assert!(capabilities.contains(&json!("accepts_remote_config")));
    assert_eq!(c["health"]["healthy"], true);
    assert_eq!(c["remote_config"]["status"], "unset");
    // The same hash a configuration version of these files has, so the two can be compared.
    let running: &[u8] = b"receivers: {otlp: {}}\n";
    assert_eq!(
        c["effective_config"]["hash"],
        files_hash(&[("collector.yaml", "text/yaml", running)])
    );
    assert!(
        c["effective_config"]["files"].is_null(),
        "files only on request"
    );
    assert!(c["labels"].as_object().unwrap().is_empty());

    let full = api
        .ok(&format!("/api/v1/collectors/{id}?include=effective_config"))
        .await;
    assert_eq!(
        full["effective_config"]["files"]["collector.yaml"]["body"],
        "receivers: {otlp: {}}\n"
    );
    assert_error(
        &api.get(&format!("/api/v1/collectors/{id}?include=secrets"))
            .await,
        400,
        "bad_request",
    );
    let unknown = CollectorId::new_v7();
    assert_error(
        &api.get(&format!("/api/v1/collectors/{unknown}")).await,
        404,
        "not_found",
    );
    assert_error(
        &api.get("/api/v1/collectors/not-a-uuid").await,
        400,
        "bad_request",
    );
    assert_error(&api.get("/api/v1/no-such-thing").await, 404, "not_found");
}

async fn history_is_newest_first_in_pages(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let made = http_collectors(&server, &api, "name", 1).await;
    let (uid, id) = &made[0];
    for seq in 1..=6 {
        let healthy = seq % 2 == 0;
        post_ok(
            &server.opamp_url,
            &health_report(uid, seq, healthy, "flapping"),
        )
        .await;
    }
    let path = format!("/api/v1/collectors/{id}/transitions?limit=4");
    let page = eventually("seven transitions stored", || async {
        let page = api.ok(&path).await;
        page["next_cursor"].is_string().then_some(page)
    })
    .await;
    let reasons = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["reason"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        reasons(&page),
        [
            "error_resolved",
            "runtime_error",
            "error_resolved",
            "runtime_error"
        ]
    );
    assert_eq!(page["items"][1]["message"], "flapping");
    assert_eq!(page["items"][1]["from"], "connected");
    assert_eq!(page["items"][1]["to"], "error");
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = api.ok(&format!("{path}&cursor={cursor}")).await;
    assert_eq!(
        reasons(&rest),
        ["error_resolved", "runtime_error", "initial"]
    );
    assert!(rest["next_cursor"].is_null());
    assert!(rest["items"][2]["from"].is_null());
    let unknown = CollectorId::new_v7();
    assert_error(
        &api.get(&format!("/api/v1/collectors/{unknown}/transitions"))
            .await,
        404,
        "not_found",
    );
}

async fn labels_are_replaced_and_patched(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let made = http_collectors(&server, &api, "name", 1).await;
    let path = format!("/api/v1/collectors/{}/labels", made[0].1);
    let put = api
        .put(&path, &json!({"env": "prod", "tier": "gold"}))
        .await;
    assert_eq!(put.status, 200);
    assert_eq!(put.body["labels"], json!({"env": "prod", "tier": "gold"}));
    let patched = api
        .patch(&path, &json!({"tier": null, "zone": "eu-1"}))
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(
        patched.body["labels"],
        json!({"env": "prod", "zone": "eu-1"})
    );
    let stored = format!("/api/v1/collectors/{}", made[0].1);
    eventually("the labels reach the store", || async {
        (api.ok(&stored).await["labels"] == json!({"env": "prod", "zone": "eu-1"})).then_some(())
    })
    .await;
    assert_error(
        &api.put(&path, &json!({"bad key": "x"})).await,
        400,
        "bad_request",
    );
    assert_error(
        &api.put(&path, &json!({"env": 3})).await,
        400,
        "bad_request",
    );
    let garbled = api
        .with_body(reqwest::Method::PUT, &path, "{not json".into())
        .await;
    assert_error(&garbled, 400, "bad_request");
    let unknown = format!("/api/v1/collectors/{}/labels", CollectorId::new_v7());
    assert_error(&api.put(&unknown, &json!({})).await, 404, "not_found");
}

async fn only_a_disconnected_collector_is_forgotten(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let made = http_collectors(&server, &api, "name", 1).await;
    let (uid, id) = &made[0];
    let path = format!("/api/v1/collectors/{id}");
    assert_error(&api.delete(&path).await, 409, "conflict");
    let mut goodbye = heartbeat(uid, 1);
    goodbye.agent_disconnect = Some(proto::AgentDisconnect {});
    post_ok(&server.opamp_url, &goodbye).await;
    eventually("stored as disconnected", || async {
        (api.ok(&path).await["state"] == "disconnected").then_some(())
    })
    .await;
    assert_eq!(api.delete(&path).await.status, 204);
    eventually("forgotten in the store", || async {
        (api.get(&path).await.status == 404).then_some(())
    })
    .await;
    assert_error(
        &api.get(&format!("{path}/transitions")).await,
        404,
        "not_found",
    );
    assert_error(&api.delete(&path).await, 404, "not_found");
    // It may come back, and starts afresh.
    post_ok(&server.opamp_url, &hello(uid, 0)).await;
    let back = eventually("back", || async {
        let answer = api.get(&path).await;
        (answer.status == 200).then_some(answer.body)
    })
    .await;
    assert_eq!(back["state_reason"], "initial");
}

async fn summary_counts_every_state(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let made = http_collectors(&server, &api, "name", 3).await;
    post_ok(&server.opamp_url, &health_report(&made[0].0, 1, false, "x")).await;
    let summary = eventually("one in error", || async {
        let s = api.ok("/api/v1/summary").await;
        (s["by_state"]["error"] == 1).then_some(s)
    })
    .await;
    assert_eq!(summary["total"], 3);
    assert_eq!(summary["by_state"]["connected"], 2);
    assert_eq!(summary["by_state"].as_object().unwrap().len(), 7);
    assert_eq!(summary["by_state"]["upgrading"], 0);
}

/// Every sort key, both ways, paged two at a time through HTTP with the cursor: every collector
/// once, in the key's order (ties, which this fleet has for names and states, by id).
async fn every_sort_key_pages_through_http_with_its_cursor(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let mut ids = Vec::new();
    for i in 0..9_u64 {
        let uid = new_uid();
        let name = format!("name-{}", i % 3);
        post_ok(&server.opamp_url, &hello_as(&uid, &name, "1.0.0")).await;
        if i % 3 == 1 {
            post_ok(&server.opamp_url, &health_report(&uid, 1, false, "x")).await;
        }
        if i % 4 == 2 {
            let mut goodbye = heartbeat(&uid, 2);
            goodbye.agent_disconnect = Some(proto::AgentDisconnect {});
            post_ok(&server.opamp_url, &goodbye).await;
        }
        ids.push(id_of(&uid).to_string());
    }
    ids.sort();
    for key in ["id", "name", "state", "last_seen", "state_since"] {
        for descending in [false, true] {
            let sort = if descending {
                format!("-{key}")
            } else {
                key.to_owned()
            };
            let mut seen: Vec<Value> = Vec::new();
            let mut path = format!("/api/v1/collectors?limit=2&sort={sort}");
            loop {
                let page = api.ok(&path).await;
                let items = page["items"].as_array().unwrap();
                assert!(items.len() <= 2);
                seen.extend(items.iter().cloned());
                match page["next_cursor"].as_str() {
                    Some(cursor) => {
                        path = format!("/api/v1/collectors?limit=2&sort={sort}&cursor={cursor}");
                    }
                    None => break,
                }
            }
            let mut got: Vec<String> = seen
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned())
                .collect();
            got.sort();
            assert_eq!(got, ids, "{sort}: every collector once");
            for pair in seen.windows(2) {
                let order = sort_order(key, &pair[0], &pair[1]);
                let expected = if descending {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Less
                };
                assert!(
                    order == expected || order == std::cmp::Ordering::Equal,
                    "{sort}: {} then {}",
                    pair[0],
                    pair[1]
                );
            }
        }
    }
}

/// How two collectors compare under `key` as the API shows them. Times compare to the
/// millisecond (SQLite sorts them at that precision) and then without a tie-break; the other
/// keys by value, then id.
fn sort_order(key: &str, a: &Value, b: &Value) -> std::cmp::Ordering {
    let text = |c: &Value, field: &str| c[field].as_str().unwrap_or_default().to_owned();
    let millis = |c: &Value| {
        let at = time::OffsetDateTime::parse(
            c[key].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        at.unix_timestamp_nanos() / 1_000_000
    };
    match key {
        "id" => text(a, "id").cmp(&text(b, "id")),
        "last_seen" | "state_since" => millis(a).cmp(&millis(b)),
        _ => (text(a, key), text(a, "id")).cmp(&(text(b, key), text(b, "id"))),
    }
}

/// The event stream's `selector` keeps to the collectors whose labels match.
async fn live_events_follow_a_selector(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let (prod, dev) = (new_uid(), new_uid());
    for (uid, env) in [(&prod, "prod"), (&dev, "dev")] {
        post_ok(&server.opamp_url, &hello(uid, 0)).await;
        let labels = format!("/api/v1/collectors/{}/labels", id_of(uid));
        assert_eq!(api.put(&labels, &json!({"env": env})).await.status, 200);
    }
    let mut only_prod = api.events("?selector=env%3Dprod", None).await;
    let mut not_prod = api.events("?selector=env!%3Dprod", None).await;
    // The other collector's transition comes first: the stream must pass over it.
    post_ok(&server.opamp_url, &health_report(&dev, 1, false, "dev")).await;
    post_ok(&server.opamp_url, &health_report(&prod, 1, false, "prod")).await;
    let event = only_prod.next().await;
    assert_eq!(event.data["collector_id"], id_of(&prod).to_string());
    assert_eq!(event.data["message"], "prod");
    let event = not_prod.next().await;
    assert_eq!(event.data["collector_id"], id_of(&dev).to_string());
    post_ok(&server.opamp_url, &health_report(&dev, 2, true, "")).await;
    let event = not_prod.next().await;
    assert_eq!(
        (
            event.data["collector_id"].as_str(),
            event.data["reason"].as_str()
        ),
        (
            Some(id_of(&dev).to_string().as_str()),
            Some("error_resolved")
        )
    );
    assert_error(
        &api.get("/api/v1/events?selector=env%20in%20prod").await,
        400,
        "bad_request",
    );
}

/// A fleet whose collectors share one `service.name`, as real ones do: each is told apart by its
/// instance name, else its host, else the name with a piece of its id; an operator's
/// `display-name` label wins, and sorting and searching by name follow what is shown.
async fn collectors_are_named_apart_and_an_operator_name_wins(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let described = |identifying: Vec<proto::KeyValue>, host: Option<&str>| {
        let uid = new_uid();
        let mut message = hello(&uid, 0);
        message.agent_description = Some(proto::AgentDescription {
            identifying_attributes: identifying,
            non_identifying_attributes: host.map(|h| vec![kv("host.name", h)]).unwrap_or_default(),
        });
        (uid, message)
    };
    let shared = || kv("service.name", "otelcol-contrib");
    let (instance, m1) = described(
        vec![shared(), kv("service.instance.name", "edge-b")],
        Some("node-9"),
    );
    let (host, m2) = described(vec![shared()], Some("node-7"));
    let (bare, m3) = described(vec![shared()], None);
    for m in [&m1, &m2, &m3] {
        post_ok(&server.opamp_url, m).await;
    }
    let name_of = |c: &Value| c["name"].as_str().unwrap().to_owned();
    assert_eq!(name_of(&api.stored(id_of(&instance)).await), "edge-b");
    assert_eq!(name_of(&api.stored(id_of(&host)).await), "node-7");
    let simple = id_of(&bare).0.simple().to_string();
    let short = &simple[simple.len() - 8..];
    assert_eq!(
        name_of(&api.stored(id_of(&bare)).await),
        format!("otelcol-contrib {short}")
    );

    let labelled = api
        .put(
            &format!("/api/v1/collectors/{}/labels", id_of(&host)),
            &json!({"display-name": "aaa-front-door"}),
        )
        .await;
    assert_eq!(labelled.status, 200, "{}", labelled.body);
    assert_eq!(
        name_of(
            &api.ok(&format!("/api/v1/collectors/{}", id_of(&host)))
                .await
        ),
        "aaa-front-door"
    );
    let sorted = api.ok("/api/v1/collectors?sort=name").await;
    assert_eq!(
        names(&sorted),
        [
            "aaa-front-door",
            "edge-b",
            &format!("otelcol-contrib {short}")
        ],
        "sorted by the name shown"
    );
    let found = api.ok("/api/v1/collectors?q=FRONT-DOOR").await;
    assert_eq!(names(&found), ["aaa-front-door"]);
    let page = api.ok("/api/v1/collectors?sort=name&limit=1").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = api
        .ok(&format!(
            "/api/v1/collectors?sort=name&limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(
        names(&next),
        ["edge-b"],
        "the cursor follows the name shown"
    );
}

crate::on_both_stores!(
    collectors_are_named_apart_and_an_operator_name_wins,
    every_sort_key_pages_through_http_with_its_cursor,
    live_events_follow_a_selector,
    list_filters_sorts_and_pages,
    one_collector_shows_every_fact,
    history_is_newest_first_in_pages,
    labels_are_replaced_and_patched,
    only_a_disconnected_collector_is_forgotten,
    summary_counts_every_state,
    live_events_arrive_once_and_resume,
);

#[tokio::test]
async fn the_state_machine_is_published() {
    let server = TestServer::start().await;
    let sm = Api::new(&server.api_url).ok("/api/v1/state-machine").await;
    assert_eq!(sm["states"].as_array().unwrap().len(), 7);
    assert_eq!(sm["edges"].as_array().unwrap().len(), 26);
    assert_eq!(
        sm["edges"][0],
        json!({"from": null, "to": "connected", "reasons": ["initial"]})
    );
    let extensions = sm["extensions"].as_array().unwrap();
    assert_eq!(extensions.len(), 2);
    assert_eq!(extensions[1]["reasons"], json!(["removed_from_rollout"]));
    assert!(extensions[1]["why"].as_str().unwrap().len() > 20);
}

async fn live_events_arrive_once_and_resume(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let mut all = api.events("", None).await;
    let mut errors = api.events("?state=error", None).await;
    let uid = new_uid();
    let id = id_of(&uid).to_string();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    post_ok(
        &server.opamp_url,
        &health_report(&uid, 1, false, "exporter down"),
    )
    .await;

    let first = all.next().await;
    assert_eq!(first.event, "transition");
    assert_eq!(first.data["collector_id"], id);
    assert_eq!(first.data["reason"], "initial");
    assert!(first.data["from"].is_null());
    let second = all.next().await;
    assert_eq!(
        (second.data["from"].as_str(), second.data["to"].as_str()),
        (Some("connected"), Some("error"))
    );
    assert_eq!(second.data["message"], "exporter down");
    assert!(second.id.parse::<i64>().unwrap() > first.id.parse::<i64>().unwrap());
    let only_error = errors.next().await;
    assert_eq!(only_error.id, second.id);

    // A client that lost the stream after the first event gets the second from the history.
    let mut resumed = api.events("", Some(&first.id)).await;
    assert_eq!(resumed.next().await.id, second.id);
    post_ok(&server.opamp_url, &health_report(&uid, 2, true, "")).await;
    let third = resumed.next().await;
    assert_eq!(third.data["reason"], "error_resolved");
    assert_eq!(
        all.next().await.id,
        third.id,
        "each transition once, in order"
    );

    assert_error(
        &api.get("/api/v1/events?state=nope").await,
        400,
        "bad_request",
    );
}

#[tokio::test]
async fn keys_and_roles_decide_who_may_do_what() {
    let server = TestServer::start_with(|c| {
        c.api.keys = vec![
            api_key("viewer", Role::Viewer),
            api_key("operator", Role::Operator),
            api_key("admin", Role::Admin),
        ];
    })
    .await;
    let as_ = |name: &str| Api::with_key(&server.api_url, &format!("{name}-key-0123456789abcdef"));
    let anonymous = Api::new(&server.api_url);
    let refused = anonymous.get("/api/v1/summary").await;
    assert_error(&refused, 401, "unauthorized");
    assert_eq!(refused.headers["www-authenticate"], "Bearer");
    assert_error(
        &Api::with_key(&server.api_url, "wrong-key-0123456789")
            .get("/api/v1/summary")
            .await,
        401,
        "unauthorized",
    );
    assert_error(
        &anonymous.get("/api/openapi.json").await,
        401,
        "unauthorized",
    );
    // The probes and metrics stay open for the infrastructure.
    for open in ["/livez", "/healthz", "/readyz", "/metrics"] {
        assert_eq!(anonymous.get(open).await.status, 200, "{open}");
    }

    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let id = id_of(&uid);
    let labels = format!("/api/v1/collectors/{id}/labels");
    let one = format!("/api/v1/collectors/{id}");
    as_("viewer").stored(id).await;
    assert_error(
        &as_("viewer").put(&labels, &json!({"a": "b"})).await,
        403,
        "forbidden",
    );
    assert_eq!(
        as_("operator")
            .put(&labels, &json!({"a": "b"}))
            .await
            .status,
        200
    );
    assert_error(&as_("operator").delete(&one).await, 403, "forbidden");
    assert_error(&as_("admin").delete(&one).await, 409, "conflict");
}

#[tokio::test]
async fn the_openapi_document_matches_its_snapshot() {
    let server = TestServer::start().await;
    let doc = Api::new(&server.api_url).ok("/api/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    insta::assert_json_snapshot!("openapi", doc);
}

#[tokio::test]
async fn oversized_and_non_json_bodies_are_refused_clearly() {
    let server = TestServer::start_with(|c| c.api.max_body_bytes = 1024).await;
    let api = Api::new(&server.api_url);
    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let path = format!("/api/v1/collectors/{}/labels", id_of(&uid));
    let big = json!({"k": "v".repeat(2000)}).to_string();
    let answer = api.with_body(reqwest::Method::PUT, &path, big).await;
    assert_error(&answer, 413, "too_large");
    let plain = http_client()
        .put(format!("{}{path}", server.api_url))
        .bearer_auth(crate::support::api::generated_key(&server.api_url).unwrap())
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 415);
}

#[tokio::test]
async fn restart_reaches_a_collector_that_accepts_it() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let uid = new_uid();
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.exchange(&hello(&uid, 0)).await;
    let path = format!("/api/v1/collectors/{}/restart", id_of(&uid));
    let answer = api.post(&path, &json!({})).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let pushed = ws.recv().await;
    assert_eq!(
        pushed.command.map(|c| c.r#type),
        Some(proto::CommandType::Restart as i32)
    );

    // One that does not accept it is told so, and so is a stranger.
    let other = new_uid();
    let mut refuses = hello(&other, 0);
    refuses.capabilities = capabilities(&[proto::AgentCapabilities::ReportsStatus]);
    post_ok(&server.opamp_url, &refuses).await;
    let path = format!("/api/v1/collectors/{}/restart", id_of(&other));
    assert_error(&api.post(&path, &json!({})).await, 409, "conflict");
    let path = format!("/api/v1/collectors/{}/restart", CollectorId::new_v7());
    assert_error(&api.post(&path, &json!({})).await, 404, "not_found");

    // One that accepts it but is no longer connected (its actor still resident) cannot get it.
    ws.socket.close(None).await.unwrap();
    server
        .wait_for(id_of(&uid), "disconnected", |c| !c.connected)
        .await;
    let path = format!("/api/v1/collectors/{}/restart", id_of(&uid));
    assert_error(&api.post(&path, &json!({})).await, 409, "conflict");
}

/// A REST request that takes longer than `api.request_timeout` is answered 408; an event stream
/// is not a request that times out, and stays open past it.
#[tokio::test]
async fn a_request_past_the_timeout_gets_408_while_event_streams_stay_open() {
    let timeout = std::time::Duration::from_millis(300);
    let server = TestServer::start_with(|c| c.api.request_timeout = timeout).await;
    let api = Api::new(&server.api_url);
    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let mut stream = api.events("", None).await;
    let opened = tokio::time::Instant::now();

    // A label edit waits for the lock another transaction holds on the store.
    let lock = StoreLock::take(&server).await;
    let labels = format!("/api/v1/collectors/{}/labels", id_of(&uid));
    let answer = api.put(&labels, &json!({"env": "prod"})).await;
    assert_eq!(answer.status, 408, "{}", answer.body);
    assert!(opened.elapsed() >= timeout);
    lock.release().await;

    post_ok(
        &server.opamp_url,
        &health_report(&uid, 1, false, "after the timeout"),
    )
    .await;
    let event = stream.next().await;
    assert_eq!(event.data["reason"], "runtime_error");
    assert_eq!(event.data["message"], "after the timeout");
}
