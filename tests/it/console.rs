//! The web console in a real browser (headless Chromium through chromedriver), against a real
//! server with simulated collectors: what an operator sees and does, checked through the API.
//! Each page's screenshot is written to `target/console-screenshots/`.

use opampd::config::Role;
use serde_json::json;

use crate::rollouts::{configuration, held_rollout, labelled, labelled_ids};
use crate::support::api::Api;
use crate::support::browser::{Browser, wait_until};
use crate::support::scripted::{Script, Scripted};
use crate::support::*;

fn row(id: &str) -> String {
    format!("tr[data-id=\"{id}\"]")
}

/// A server with one key per `(name, role)`, `<name>-key-0123456789abcdef`, and the API as its
/// admin (`admin` must be among them).
async fn with_keys(keys: &[(&str, Role)]) -> (TestServer, Api) {
    let server = TestServer::start_with(|c| {
        c.api.keys = keys
            .iter()
            .map(|(name, role)| api_key(name, *role))
            .collect();
    })
    .await;
    let admin = Api::with_key(&server.api_url, "admin-key-0123456789abcdef");
    (server, admin)
}

type Made = Vec<(bytes::Bytes, String)>;

/// A server with `n` plain-HTTP collectors `edge-<i>` (uid and id each), connected.
async fn with_collectors(n: usize) -> (TestServer, Api, Made) {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let made = http_collectors(&server, &api, "edge", n).await;
    (server, api, made)
}

/// [`with_collectors`], and the fleet page showing them all.
async fn fleet_page(n: usize) -> (TestServer, Api, Made, Browser) {
    let (server, api, made) = with_collectors(n).await;
    let browser = Browser::start().await;
    browser.goto(&server.api_url).await;
    browser
        .wait_text(".count[data-state=connected] .count-value", &n.to_string())
        .await;
    (server, api, made, browser)
}

/// The plain-HTTP collector `uid` reports its exporter failing: it turns Error.
async fn fails(server: &TestServer, uid: &bytes::Bytes) {
    post_ok(
        &server.opamp_url,
        &health_report(uid, 1, false, "exporter otlp: connection refused"),
    )
    .await;
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_without_a_key_and_with_a_strict_policy() {
    let server = TestServer::start_with(|c| {
        c.api.keys = vec![api_key("viewer", Role::Viewer)];
    })
    .await;
    let client = http_client();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/js/main.js", "text/javascript; charset=utf-8"),
    ] {
        let answer = client
            .get(format!("{}{path}", server.api_url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        let headers = answer.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.starts_with("default-src 'self'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
    }
    let page = client.get(&server.api_url).send().await.unwrap();
    let page = page.text().await.unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external requests"
    );
    let missing = client
        .get(format!("{}/console/Cargo.toml", server.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The data is not open: the page's calls need the key.
    let anonymous = Api::anonymous(&server.api_url);
    assert_eq!(anonymous.get("/api/v1/whoami").await.status, 401);
    let viewer = Api::with_key(&server.api_url, "viewer-key-0123456789abcdef");
    assert_eq!(
        viewer.ok("/api/v1/whoami").await,
        json!({"role": "viewer", "anonymous": false})
    );
}

#[tokio::test]
async fn the_fleet_page_counts_states_and_a_row_turns_error_live() {
    let (server, _api, made, browser) = fleet_page(3).await;
    browser
        .wait_text(".count[data-state=error] .count-value", "0")
        .await;
    // The chart's last point is now: the same counts, in its table for screen readers.
    let now_connected = "#counts-table tbody tr:last-child td[data-state=connected]";
    browser.wait_content(now_connected, "3").await;
    browser.wait_for("#counts-chart polygon.s-connected").await;
    let (sick_uid, sick) = &made[1];
    let state = format!("{} .state-cell .state", row(sick));
    browser.wait_text(&state, "Connected").await;
    // The page was not reloaded: the marker set now is still there when the row changes.
    browser.run("document.body.dataset.marker = 'kept'").await;

    fails(&server, sick_uid).await;
    browser.wait_text(&state, "Error").await;
    browser
        .wait_text(".count[data-state=error] .count-value", "1")
        .await;
    browser
        .wait_text(".count[data-state=connected] .count-value", "2")
        .await;
    let marker = browser.run("return document.body.dataset.marker").await;
    assert_eq!(marker, json!("kept"), "the row changed without a reload");
    browser
        .wait_content(
            "#counts-table tbody tr:last-child td[data-state=error]",
            "1",
        )
        .await;
    browser.wait_content(now_connected, "2").await;
    browser.screenshot("fleet").await;
    // As on a phone: the same page, narrow.
    browser.client.set_window_size(420, 900).await.unwrap();
    browser.wait_for(&row(sick)).await;
    browser.screenshot("fleet-narrow").await;
    browser.client.set_window_size(1280, 900).await.unwrap();

    // Its page shows the failing health and the transition's reason.
    browser
        .goto(&format!("{}/#/collectors/{sick}", server.api_url))
        .await;
    browser.wait_text("#collector-state .state", "Error").await;
    let failing = browser.wait_for(".health li.failing > span").await;
    assert!(failing.text().await.unwrap().contains("failing"));
    wait_until("the transition is listed", || async {
        let text = browser.text("#transitions").await?;
        text.contains("connection refused").then_some(())
    })
    .await;
    // Its timeline: connected, then in error until now.
    browser
        .wait_for("#timeline rect.s-connected[data-state=connected]")
        .await;
    let last = browser
        .wait_for("#timeline svg rect:last-of-type[data-state=error]")
        .await;
    assert!(last.attr("width").await.unwrap().is_some());
    browser.screenshot("collector").await;
    browser.close().await;
}

#[tokio::test]
async fn filters_and_keyset_pages_pick_the_right_collectors() {
    let (_server, api, made, browser) = fleet_page(7).await;
    let prod: Vec<opampd::collector::CollectorId> =
        made[..3].iter().map(|(uid, _)| id_of(uid)).collect();
    labelled_ids(&api, &prod).await;

    // By label selector, then by text.
    browser.type_into("#filter-selector", "env=prod").await;
    browser.click("#filter-apply").await;
    wait_until("three prod rows", || async {
        (browser.count("#collectors tr[data-id]").await == 3).then_some(())
    })
    .await;
    for (_, id) in &made[..3] {
        browser.wait_for(&row(id)).await;
    }
    browser.type_into("#filter-selector", "").await;
    browser.type_into("#filter-text", "edge-4.example").await;
    browser.click("#filter-apply").await;
    wait_until("only edge-4.example", || async {
        (browser.count("#collectors tr[data-id]").await == 1).then_some(())
    })
    .await;
    browser.wait_for(&row(&made[4].1)).await;

    // Three a page: every collector once over three pages, then back.
    browser.type_into("#filter-text", "").await;
    browser.type_into("#filter-limit", "3").await;
    browser.click("#filter-apply").await;
    let mut seen = Vec::new();
    for (page, size) in [3, 3, 1].into_iter().enumerate() {
        let ids = wait_until(&format!("page {page} of {size}"), || async {
            let rows = browser
                .client
                .find_all(fantoccini::Locator::Css("#collectors tr[data-id]"))
                .await
                .ok()?;
            let mut ids = Vec::new();
            for row in rows {
                ids.push(row.attr("data-id").await.ok()??);
            }
            (ids.len() == size && !ids.iter().any(|id| seen.contains(id))).then_some(ids)
        })
        .await;
        seen.extend(ids);
        if page < 2 {
            browser.click("#page-next:not([disabled])").await;
        }
    }
    seen.sort();
    let mut all: Vec<String> = made.iter().map(|(_, id)| id.clone()).collect();
    all.sort();
    assert_eq!(seen, all);
    browser.wait_for("#page-next[disabled]").await;
    browser.click("#page-previous:not([disabled])").await;
    wait_until("back to a full page", || async {
        (browser.count("#collectors tr[data-id]").await == 3).then_some(())
    })
    .await;
    browser.close().await;
}

#[tokio::test]
async fn a_label_set_in_the_console_is_in_the_api() {
    let (server, api, made) = with_collectors(1).await;
    let id = &made[0].1;
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/#/collectors/{id}", server.api_url))
        .await;
    // Reading needs no key from loopback; editing does, and the form is not offered without it.
    browser.wait_text("#role", "role: viewer").await;
    browser.wait_for("#labels").await;
    assert_eq!(browser.count("#label-form").await, 0);
    browser.enter_generated_key(&server.api_url).await;
    browser.wait_text("#role", "role: admin").await;
    browser.type_into("#label-key", "tier").await;
    browser.type_into("#label-value", "gold").await;
    browser.click("#label-save").await;
    api.field_becomes(id_of(&made[0].0), "labels", json!({"tier": "gold"}))
        .await;
    browser.wait_for("tr[data-label=tier]").await;
    browser.close().await;
}

#[tokio::test]
async fn a_rollout_started_in_the_console_reaches_its_collectors_and_shows_100_percent() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let collectors = [
        Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await,
        Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await,
    ];
    labelled(&api, &collectors.iter().collect::<Vec<_>>()).await;
    // Not labelled env=prod: counted without a selector, left out with it.
    let other = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    api.stored(other.id).await;
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/#/rollouts", server.api_url))
        .await;
    browser.enter_generated_key(&server.api_url).await;
    browser.wait_text("#role", "role: admin").await;
    browser.type_into("#start-configuration", "gateway").await;
    browser.type_into("#start-version", "1").await;
    browser
        .wait_text("#selector-count", "3 collectors match")
        .await;
    browser.type_into("#start-selector", "env=prod").await;
    browser
        .wait_text("#selector-count", "2 collectors match")
        .await;
    // Two batches of one.
    browser.type_into("#start-initial", "1").await;
    browser.type_into("#start-multiplier", "1").await;
    browser.click("#dry-run").await;
    browser
        .wait_text("#start-plan", "Would reach 2 collector(s).")
        .await;
    browser.screenshot("rollout-start").await;
    browser.click("#start-rollout:not([disabled])").await;
    browser.wait_text("#applied-percent", "100% applied").await;
    browser.wait_text("#rollout-status", "completed").await;
    for batch in ["0", "1"] {
        browser
            .wait_text(
                &format!("#batches .batch[data-batch=\"{batch}\"] .batch-applied"),
                "100% applied",
            )
            .await;
    }
    assert_eq!(browser.count("#batches .batch").await, 2);
    browser.screenshot("rollout").await;

    let url = browser.client.current_url().await.unwrap();
    let id = url
        .fragment()
        .unwrap()
        .trim_start_matches("/rollouts/")
        .to_owned();
    let rollout = api.ok(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(rollout["status"], "completed", "{rollout}");
    assert_eq!(rollout["progress"]["applied"], 2, "{rollout}");
    for collector in &collectors {
        assert!(collector.received() >= 1, "every collector was sent it");
    }
    assert_eq!(other.received(), 0, "the selector left it out");
    browser.close().await;
}

#[tokio::test]
async fn a_rollout_is_cancelled_from_the_console() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let (_silent, id) = held_rollout(&server, &api).await;
    let id = id.as_str();
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/#/rollouts/{id}", server.api_url))
        .await;
    browser.enter_generated_key(&server.api_url).await;
    browser.wait_text("#rollout-status", "running").await;
    browser.click("#cancel:not([disabled])").await;
    browser.wait_text("#rollout-status", "cancelled").await;
    let rollout = api.ok(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(rollout["status"], "cancelled", "{rollout}");
    browser.close().await;
}

#[tokio::test]
async fn a_viewer_key_sees_no_edit_buttons_and_the_api_refuses_its_writes() {
    let (server, admin) = with_keys(&[("viewer", Role::Viewer), ("admin", Role::Admin)]).await;
    let made = http_collectors(&server, &admin, "edge", 1).await;
    let id = &made[0].1;
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/#/collectors/{id}", server.api_url))
        .await;
    // Nothing is read without a key: the form asks for one.
    browser.enter_key("viewer-key-0123456789abcdef").await;
    browser.wait_text("#role", "role: viewer").await;
    browser
        .wait_text("#collector-state .state", "Connected")
        .await;
    for button in ["#label-form", "#restart", "#forget"] {
        assert_eq!(browser.count(button).await, 0, "{button} is not offered");
    }
    browser
        .goto(&format!("{}/#/rollouts", server.api_url))
        .await;
    browser.wait_for("#start").await;
    assert_eq!(browser.count("#start-form").await, 0);
    browser.screenshot("viewer").await;

    let viewer = Api::with_key(&server.api_url, "viewer-key-0123456789abcdef");
    let refused = viewer
        .patch(
            &format!("/api/v1/collectors/{id}/labels"),
            &json!({"tier": "gold"}),
        )
        .await;
    assert_eq!(refused.status, 403);
    browser.close().await;
}

#[tokio::test]
async fn two_configuration_versions_are_compared_side_by_side() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let second = crate::rollouts::KAFKA.replace("kafka", "otlphttp");
    let answer = api
        .post(
            "/api/v1/configurations",
            &json!({"name": "gateway", "yaml": second}),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/#/configurations", server.api_url))
        .await;
    browser
        .wait_text(
            "#configurations tr[data-name=gateway] td:nth-child(2)",
            "v2",
        )
        .await;
    browser.screenshot("configurations").await;
    browser
        .click("#configurations tr[data-name=gateway] a")
        .await;
    browser.wait_for("#versions tr[data-version=\"2\"]").await;
    // The latest version's files are shown, and v1 → v2 is compared at once.
    let file = browser.wait_for("#version-files pre").await;
    assert!(file.text().await.unwrap().contains("otlphttp"));
    browser.wait_for("table.diff td.del").await;
    // The removed line faces the line that replaced it, on the same row.
    let pairs = browser
        .run(
            "return [...document.querySelectorAll('table.diff tbody tr')]
               .filter((tr) => tr.querySelector('td.del') && tr.querySelector('td.add'))
               .map((tr) => [tr.querySelector('td.del').textContent,
                             tr.querySelector('td.add').textContent])",
        )
        .await;
    let pairs = pairs.as_array().unwrap();
    assert!(
        pairs.contains(&json!(["  kafka:", "  otlphttp:"])),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&json!([
            "      exporters: [kafka]",
            "      exporters: [otlphttp]"
        ])),
        "{pairs:?}"
    );
    let components = browser.text("#diff-components").await.unwrap();
    assert!(
        components.contains("otlphttp") && components.contains("kafka"),
        "{components}"
    );
    browser
        .run("document.getElementById('diff').scrollIntoView()")
        .await;
    browser.screenshot("configuration-diff").await;
    // The reading itself, on what the API also writes: a file added, lines without a newline.
    let rows = browser
        .client
        .execute(
            "return import('/console/js/diff.js').then((m) => m.sideBySide(arguments[0]))",
            vec![json!(
                "--- a (v1)\n+++ a (v2)\n@@ -1,2 +1,3 @@\n x\n-y\n\\ No newline at end of file\n+y\n+z\n"
            )],
        )
        .await
        .unwrap();
    let side = |n: u64, text: &str, kind: &str| json!({"n": n, "text": text, "kind": kind});
    assert_eq!(
        rows,
        json!([
            {"hunk": "@@ -1,2 +1,3 @@"},
            {"left": side(1, "x", "same"), "right": side(1, "x", "same")},
            {"left": side(2, "y", "del"), "right": side(2, "y", "add")},
            {"left": null, "right": side(3, "z", "add")},
        ])
    );
    // Comparing a version with itself says so.
    browser
        .run("document.getElementById('diff-from').value = '2'")
        .await;
    browser.click("#diff-compare").await;
    browser
        .wait_text("#diff p.muted", "The two versions hold the same files.")
        .await;
    browser.close().await;
}

#[tokio::test]
async fn the_state_diagram_draws_every_edge_and_counts_live() {
    let (server, api, made) = with_collectors(2).await;
    let machine = api.ok("/api/v1/state-machine").await;
    let edges = machine["edges"].as_array().unwrap().len()
        + machine["extensions"].as_array().unwrap().len();
    let browser = Browser::start().await;
    browser.goto(&format!("{}/#/states", server.api_url)).await;
    let count = |state: &str| format!("#diagram g[data-state={state}] .node-count");
    browser.wait_content(&count("connected"), "2").await;
    browser.wait_content(&count("error"), "0").await;
    assert_eq!(browser.count("#diagram g.node").await, 7);
    assert_eq!(browser.count("#diagram path.edge").await, edges);
    assert_eq!(
        browser
            .count("#diagram path.edge[data-from=connected][data-to=disconnected]")
            .await,
        1
    );
    browser.screenshot("states").await;

    let (uid, _) = &made[0];
    fails(&server, uid).await;
    browser.wait_content(&count("error"), "1").await;
    browser.wait_content(&count("connected"), "1").await;
    browser
        .wait_content("#states-list li[data-state=error] .list-count", "1")
        .await;
    browser.close().await;
}

/// An operator restarts a connected collector from its page (and is offered no forget); an
/// admin forgets a disconnected one, which the API then no longer knows.
#[tokio::test]
async fn restart_and_forget_from_the_collector_page_as_each_role_may() {
    let (server, admin) = with_keys(&[("operator", Role::Operator), ("admin", Role::Admin)]).await;
    let running = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    let gone = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    admin.stored(running.id).await;
    admin.stored(gone.id).await;
    let gone = gone.disconnect();
    admin
        .field_becomes(gone, "state", json!("disconnected"))
        .await;

    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/#/collectors/{}", server.api_url, running.id))
        .await;
    browser.enter_key("operator-key-0123456789abcdef").await;
    browser.wait_text("#role", "role: operator").await;
    browser.wait_for("#restart:not([disabled])").await;
    assert_eq!(browser.count("#forget").await, 0, "forget is for admins");
    assert_eq!(browser.count("#label-form").await, 1);
    browser.click("#restart").await;
    wait_until("the collector is sent the restart command", || async {
        (running.restarts() == 1).then_some(())
    })
    .await;
    browser.wait_text("#status", "Restart: done.").await;

    // The admin, on the disconnected one: restart is not possible, forget is.
    browser.click("#key-button").await;
    browser
        .goto(&format!("{}/#/collectors/{gone}", server.api_url))
        .await;
    browser.enter_key("admin-key-0123456789abcdef").await;
    browser.wait_text("#role", "role: admin").await;
    browser.wait_for("#restart[disabled]").await;
    browser.screenshot("collector-admin").await;
    browser.click("#forget:not([disabled])").await;
    wait_until("the confirmation is accepted", || async {
        browser.client.accept_alert().await.ok()
    })
    .await;
    wait_until("back on the fleet page", || async {
        let url = browser.client.current_url().await.ok()?;
        (url.fragment() == Some("/")).then_some(())
    })
    .await;
    eventually("the collector is forgotten", || async {
        let path = format!("/api/v1/collectors/{gone}");
        (admin.get(&path).await.status == 404).then_some(())
    })
    .await;
    assert_eq!(running.restarts(), 1);
    browser.close().await;
}

/// The fleet page reads its rows again only for a change that may add, drop or move one; a
/// collector leaving the state filtered on leaves the table live.
#[tokio::test]
async fn the_fleet_page_reloads_only_for_changes_that_touch_its_rows() {
    let (server, _api, made, browser) = fleet_page(2).await;
    // The decision itself, called in the page.
    let cases = json!([
        [{"state": "", "sort": "name", "shown": true, "firstPage": true, "full": false},
         {"from": "connected", "to": "error"}, "update"],
        [{"state": "connected", "sort": "name", "shown": true, "firstPage": true, "full": false},
         {"from": "connected", "to": "error"}, "reload"],
        [{"state": "", "sort": "-state_since", "shown": true, "firstPage": false, "full": true},
         {"from": "connected", "to": "error"}, "reload"],
        [{"state": "", "sort": "name", "shown": false, "firstPage": true, "full": true},
         {"from": "connected", "to": "error"}, "none"],
        [{"state": "", "sort": "name", "shown": false, "firstPage": true, "full": true},
         {"from": null, "to": "connected"}, "reload"],
        [{"state": "error", "sort": "name", "shown": false, "firstPage": true, "full": true},
         {"from": "connected", "to": "error"}, "reload"],
        [{"state": "error", "sort": "name", "shown": false, "firstPage": true, "full": false},
         {"from": "error", "to": "connected"}, "none"],
        [{"state": "", "sort": "last_seen", "shown": false, "firstPage": true, "full": true},
         {"from": "connected", "to": "error"}, "reload"],
        [{"state": "", "sort": "last_seen", "shown": false, "firstPage": true, "full": false},
         {"from": "connected", "to": "error"}, "none"],
        [{"state": "", "sort": "name", "shown": false, "firstPage": false, "full": true},
         {"from": null, "to": "connected"}, "none"],
    ]);
    let answers = browser
        .client
        .execute(
            "return import('/console/js/fleet.js')
               .then((m) => arguments[0].map(([view, t]) => m.effectOn(view, t)))",
            vec![cases.clone()],
        )
        .await
        .unwrap();
    let expected: Vec<_> = cases.as_array().unwrap().iter().map(|c| &c[2]).collect();
    let answers: Vec<_> = answers.as_array().unwrap().iter().collect();
    assert_eq!(answers, expected);

    // Filtered on connected: the collector that fails leaves the table without a reload.
    browser.click(".count[data-state=connected]").await;
    browser
        .wait_for(".count[data-state=connected][aria-pressed=true]")
        .await;
    browser.run("document.body.dataset.marker = 'kept'").await;
    let (sick_uid, sick) = &made[0];
    fails(&server, sick_uid).await;
    wait_until("the failed collector leaves the connected rows", || async {
        (browser.count(&row(sick)).await == 0
            && browser.count("#collectors tr[data-id]").await == 1)
            .then_some(())
    })
    .await;
    let marker = browser.run("return document.body.dataset.marker").await;
    assert_eq!(marker, json!("kept"));
    browser.close().await;
}

/// A live view's read that fails (the server busy or away for a moment) is tried again, each
/// time twice as long after, until it succeeds; a view that was left tries nothing more. The
/// decision itself (`throttled`), called in the page.
#[tokio::test]
async fn a_failed_live_read_is_tried_again_until_it_succeeds() {
    let server = TestServer::start().await;
    let browser = Browser::start().await;
    browser.goto(&server.api_url).await;
    let outcome = browser
        .run(
            "return import('/console/js/dom.js').then(async (m) => {
               const started = Date.now();
               let calls = 0;
               const succeeded = await new Promise((resolve) => {
                 const later = m.throttled(() => {
                   calls += 1;
                   if (calls < 3) return Promise.reject(new Error('busy'));
                   resolve(Date.now() - started);
                 }, 20);
                 later();
               });
               // Left at its first failure: the retry it would have made 40 ms later never comes.
               let leftCalls = 0;
               const left = m.throttled(() => {
                 leftCalls += 1;
                 left.cancel();
                 return Promise.reject(new Error('busy'));
               }, 20);
               left();
               await new Promise((resolve) => setTimeout(resolve, 200));
               left();
               return { calls, succeeded, leftCalls };
             })",
        )
        .await;
    assert_eq!(outcome["calls"], 3, "{outcome}");
    // 20 ms, then 40 after the first failure and 80 after the second.
    let waited = outcome["succeeded"].as_f64().unwrap();
    assert!(
        waited >= 135.0,
        "tried again without waiting longer: {outcome}"
    );
    assert_eq!(outcome["leftCalls"], 1, "{outcome}");
    browser.close().await;
}

/// The chart of the last six hours, from collectors with known histories: its table's rows are
/// the counts at each point.
#[tokio::test]
async fn the_fleet_chart_shows_the_hours_before() {
    use opampd::collector::State::*;
    let server = TestServer::start().await;
    let now = std::time::SystemTime::now();
    // Minutes ago, never on a point of the chart (every 6 minutes from now).
    crate::summary_history::seed(
        &server,
        now,
        &[
            &[(400, Connected)],
            &[(400, Connected), (291, Error), (189, Connected)],
            &[(333, Connected), (93, Upgrading), (87, Connected)],
            &[(297, Pending), (279, Configuring), (261, Connected)],
            &[(231, Connected), (129, Error)],
            &[(195, Connected), (39, Disconnected)],
            &[(165, Connected)],
            &[(141, Incompatible)],
            &[(99, Connected)],
            &[(45, Connected), (9, Error)],
        ],
    )
    .await;
    let browser = Browser::start().await;
    browser.goto(&server.api_url).await;
    let cell = |row: usize, state: &str| {
        format!("#counts-table tbody tr:nth-child({row}) td[data-state={state}]")
    };
    // 60 steps of 6 minutes: row 1 is 6 hours ago, row 41 two hours ago, row 61 now.
    browser.wait_content(&cell(1, "connected"), "2").await;
    for (state, n) in [("connected", "6"), ("error", "1"), ("incompatible", "1")] {
        browser.wait_content(&cell(41, state), n).await;
    }
    for (state, n) in [
        ("connected", "6"),
        ("error", "2"),
        ("disconnected", "1"),
        ("incompatible", "1"),
    ] {
        browser.wait_content(&cell(61, state), n).await;
    }
    browser.screenshot("fleet-chart").await;
    browser.close().await;
}
