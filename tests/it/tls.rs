//! TLS on both listeners with certificates the tests make: `wss://` and `https://` collectors
//! (ours and the real Python and Node clients), `https://` operators, mutual TLS accepted,
//! refused and recorded, a certificate swapped on disk under connected collectors, and files that
//! cannot be used refused at start-up and ignored at reload.

use opampd::collector::machine::hex;
use opampd::collector::{CollectorId, State};
use opampd::config::ClientAuth;
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::support::api::{Api, generated_key};
use crate::support::interop::{Client, Driver};
use crate::support::tls::{Pki, served_certificate};
use crate::support::*;

/// The REST API of a server whose API listener speaks TLS, as its operator would call it.
fn https_api(server: &TestServer, pki: &Pki) -> Api {
    Api {
        base: format!("https://{}", server.running().api_addr),
        key: generated_key(&server.api_url),
        client: Some(pki.http_client(None)),
    }
}

fn https_opamp(server: &TestServer) -> String {
    format!("https://{}/v1/opamp", server.running().opamp_addr)
}

async fn connected(api: &Api, id: CollectorId) -> serde_json::Value {
    eventually("the collector connected, seen through the API", || async {
        let answer = api.get(&format!("/api/v1/collectors/{id}")).await;
        (answer.status == 200 && answer.body["connected"] == true).then_some(answer.body)
    })
    .await
}

#[tokio::test]
async fn collectors_and_operators_speak_tls_on_both_listeners() {
    let pki = Pki::new("opampd test CA");
    let server_cert = pki.server(1);
    let server = TestServer::start_with(|c| {
        c.opamp.tls = Some(pki.serve(&server_cert, None));
        c.api.tls = Some(pki.serve(&server_cert, None));
    })
    .await;
    let opamp_addr = server.running().opamp_addr;
    let api = https_api(&server, &pki);

    // WebSocket over TLS.
    let uid = new_uid();
    let mut ws = pki.ws(opamp_addr, None).await.expect("wss:// connects");
    let reply = ws.exchange(&hello(&uid, 0)).await;
    assert_eq!(reply.instance_uid, uid);
    let view = connected(&api, id_of(&uid)).await;
    assert_eq!(view["transport"], "websocket");
    assert!(
        view["client_certificate"].is_null(),
        "no client certificate asked: {view}"
    );

    // Plain HTTP transport over TLS.
    let other = new_uid();
    let reply = post_raw_with(
        &pki.http_client(None),
        &https_opamp(&server),
        &[("content-type", "application/x-protobuf")],
        hello(&other, 0).encode_to_vec(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.message().instance_uid, other);
    assert_eq!(connected(&api, id_of(&other)).await["transport"], "http");

    // Neither listener answers plain text: the handshake fails and is counted.
    let plain = http_client()
        .get(format!("http://{}/readyz", server.running().api_addr))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP to a TLS listener: {plain:?}");
    let scrape = api.metrics().await;
    assert!(
        scrape.value("opampd_tls_handshakes_failed_total", &[("listener", "api")]) >= 1,
        "the refused handshake is counted"
    );
    assert_eq!(api.get("/readyz").await.status, 200);
}

#[tokio::test]
async fn mutual_tls_records_the_certificate_and_refuses_strangers() {
    let pki = Pki::new("fleet CA");
    let stranger_ca = Pki::new("someone else's CA");
    let server = TestServer::start_with(|c| {
        c.opamp.tls = Some(pki.serve(&pki.server(1), Some(ClientAuth::Required)));
    })
    .await;
    let addr = server.running().opamp_addr;
    let api = Api::new(&server.api_url);

    // A collector with a certificate from the fleet's CA gets in, and its identity is recorded.
    let identity = pki.client("collector-7");
    let uid = new_uid();
    let mut ws = pki.ws(addr, Some(&identity)).await.expect("mTLS accepted");
    ws.exchange(&hello(&uid, 0)).await;
    let view = connected(&api, id_of(&uid)).await;
    let cert = &view["client_certificate"];
    assert!(
        cert["subject"].as_str().unwrap().contains("CN=collector-7"),
        "{cert}"
    );
    assert_eq!(
        cert["names"],
        serde_json::json!(["URI:spiffe://fleet.test/collector/collector-7"])
    );
    assert_eq!(
        cert["sha256"],
        hex(&Sha256::digest(identity.der().as_ref())),
        "the fingerprint of the very certificate presented"
    );
    assert!(cert["issuer"].as_str().unwrap().contains("CN=fleet CA"));
    assert!(cert["not_after"].is_string());

    // The identity is stored, not only held: it survives a restart of the server.
    let server = server.restart().await;
    let stored = Api::new(&server.api_url)
        .ok(&format!("/api/v1/collectors/{}", id_of(&uid)))
        .await;
    assert_eq!(stored["client_certificate"]["sha256"], cert["sha256"]);
    let addr = server.running().opamp_addr;

    // Without a certificate, or with one from another CA, the handshake is refused.
    let bare = pki.ws(addr, None).await;
    assert!(bare.is_err(), "no client certificate: refused");
    let foreign = stranger_ca.client("collector-7");
    let stranger = pki.ws(addr, Some(&foreign)).await;
    assert!(stranger.is_err(), "a certificate from another CA: refused");
    let scrape = Api::new(&server.api_url).metrics().await;
    assert!(
        scrape.value(
            "opampd_tls_handshakes_failed_total",
            &[("listener", "opamp")]
        ) >= 2,
        "both refusals counted"
    );
}

#[tokio::test]
async fn optional_client_certificates_let_collectors_without_one_in() {
    let pki = Pki::new("fleet CA");
    let server = TestServer::start_with(|c| {
        c.opamp.tls = Some(pki.serve(&pki.server(1), Some(ClientAuth::Optional)));
    })
    .await;
    let addr = server.running().opamp_addr;
    let api = Api::new(&server.api_url);

    let bare = new_uid();
    let mut ws = pki.ws(addr, None).await.expect("no certificate: let in");
    ws.exchange(&hello(&bare, 0)).await;
    assert!(connected(&api, id_of(&bare)).await["client_certificate"].is_null());

    // Over plain HTTP the certificate is recorded as well.
    let identity = pki.client("collector-9");
    let named = new_uid();
    let reply = post_raw_with(
        &pki.http_client(Some(&identity)),
        &https_opamp(&server),
        &[("content-type", "application/x-protobuf")],
        hello(&named, 0).encode_to_vec(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let view = connected(&api, id_of(&named)).await;
    assert!(
        view["client_certificate"]["subject"]
            .as_str()
            .unwrap()
            .contains("CN=collector-9"),
        "{view}"
    );

    // A certificate that does not verify is still refused.
    let stranger = Pki::new("someone else's CA").client("collector-9");
    assert!(pki.ws(addr, Some(&stranger)).await.is_err());
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_serves_new_connections_and_keeps_old_ones() {
    let pki = Pki::new("fleet CA");
    let first = pki.server(1);
    let tls = pki.serve(&first, None);
    let server = TestServer::start_with(|c| c.opamp.tls = Some(tls.clone())).await;
    let addr = server.running().opamp_addr;
    assert_eq!(served_certificate(&pki, addr).await, first.der());

    let uid = new_uid();
    let mut ws = pki.ws(addr, None).await.unwrap();
    ws.exchange(&hello(&uid, 0)).await;

    // A pair caught half-replaced (the new certificate, the old key) is refused, and the
    // previous certificate stays.
    let api = Api::new(&server.api_url);
    let second = pki.server(2);
    pki.write("server.pem", &second.cert);
    eventually("the half-replaced pair read and refused", || async {
        (api.tls_reloads("opamp", "refused").await >= 1).then_some(())
    })
    .await;
    assert_eq!(
        served_certificate(&pki, addr).await,
        first.der(),
        "a half-replaced pair is never served"
    );
    assert_eq!(api.tls_reloads("opamp", "ok").await, 0);

    // Once the key matches, new connections get the new certificate.
    pki.write("server.key", &second.key);
    eventually("the new certificate served", || async {
        (served_certificate(&pki, addr).await == second.der()).then_some(())
    })
    .await;

    // The collector connected before the swap is still on its connection, still answered.
    let reply = ws.exchange(&heartbeat(&uid, 1)).await;
    assert_eq!(reply.instance_uid, uid);
    let history = server.steps(id_of(&uid)).await;
    assert_eq!(history.len(), 1, "no disconnect: {history:?}");
    assert_eq!(
        server.view(id_of(&uid)).await.unwrap().state,
        Some(State::Connected)
    );
}

#[tokio::test]
async fn unusable_tls_files_stop_start_up_with_the_setting_named() {
    let pki = Pki::new("fleet CA");
    let mut tls = pki.serve(&pki.server(1), None);
    tls.key = pki.write("wrong.key", &pki.server(2).key);
    let mut config = test_config();
    let data = tempfile::tempdir().unwrap();
    config.server.data_dir = data.path().to_owned();
    config.api.tls = Some(tls);
    let err = opampd::app::start(config)
        .await
        .err()
        .expect("a key that is not the certificate's is refused");
    let message = format!("{err:#}");
    assert!(message.contains("api.tls"), "{message}");

    let mut config = test_config();
    config.server.data_dir = data.path().to_owned();
    let mut tls = pki.serve(&pki.server(1), None);
    tls.cert = pki.path("missing.pem");
    config.opamp.tls = Some(tls);
    let message = format!("{:#}", opampd::app::start(config).await.err().unwrap());
    assert!(
        message.contains("opamp.tls") && message.contains("missing.pem"),
        "{message}"
    );
}

/// The real clients speak plain HTTP only; given the server's CA the way their HTTP stacks take
/// one (`REQUESTS_CA_BUNDLE` for Python's requests, `NODE_EXTRA_CA_CERTS` for Node), they
/// connect over `https://`.
#[tokio::test]
async fn the_python_and_node_clients_connect_over_https() {
    let pki = Pki::new("fleet CA");
    let server = TestServer::start_with(|c| {
        c.opamp.tls = Some(pki.serve(&pki.server(1), None));
    })
    .await;
    let api = Api::new(&server.api_url);
    let ca = pki.path("ca.pem");
    for (client, variable) in [
        (Client::Python, "REQUESTS_CA_BUNDLE"),
        (Client::Node, "NODE_EXTRA_CA_CERTS"),
    ] {
        let mut driver = Driver::start_with_env(
            client,
            &https_opamp(&server),
            &[],
            &[(variable, ca.as_os_str())],
        )
        .await;
        let sent = driver
            .expect_where("sent", |e| e["agent_description"] == true)
            .await;
        assert_eq!(sent["ok"], true, "{client:?} over https: {sent}");
        let uid = driver.seen[0]["instance_uid"].as_str().unwrap().to_owned();
        let id = CollectorId(uid.parse().unwrap());
        assert_eq!(connected(&api, id).await["transport"], "http");
        assert!(driver.stop().await.success());
        assert!(driver.errors().is_empty(), "{:#?}", driver.errors());
    }
}

/// opampd on a PostgreSQL that it reaches over TCP with `sslmode=verify-full`: it works, every one
/// of its connections is encrypted (the server's own view), and a CA that did not sign the
/// database's certificate stops start-up instead of falling back to clear text.
#[tokio::test]
async fn postgresql_over_tls_with_the_certificate_verified() {
    let pki = Pki::new("database CA");
    let db_cert = pki.server(1);
    let (_pg, url) =
        crate::support::postgres::PgServer::start_tls(&db_cert.cert, &db_cert.key, "tls").await;
    let ca = pki.path("ca.pem");
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let server = TestServer::start_with(|c| c.database.url.clone_from(&verified)).await;

    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let api = Api::new(&server.api_url);
    connected(&api, id_of(&uid)).await;

    let mut own: sqlx::PgConnection = sqlx::Connection::connect(&verified).await.unwrap();
    let (encrypted, all): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*)
           FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
          WHERE a.datname = 'tls' AND a.pid <> pg_backend_pid()",
    )
    .fetch_one(&mut own)
    .await
    .unwrap();
    assert!(all >= 1, "opampd holds connections to the database");
    assert_eq!(encrypted, all, "every one of opampd's connections is TLS");

    let stranger = Pki::new("someone else's CA");
    let wrong = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        stranger.path("ca.pem").display()
    );
    let mut config = test_config();
    let data = tempfile::tempdir().unwrap();
    config.server.data_dir = data.path().to_owned();
    config.database.url = wrong;
    let refused = within(
        "start-up on an unverifiable database",
        opampd::app::start(config),
    )
    .await;
    assert!(
        refused.is_err(),
        "an unverifiable database certificate is refused"
    );
}

/// A socket that opens a TLS listener and never says hello holds its place only for the
/// header-read allowance, as on a plain listener.
#[tokio::test]
async fn a_silent_socket_on_a_tls_listener_is_closed_within_the_header_allowance() {
    use tokio::io::AsyncReadExt as _;
    let pki = Pki::new("fleet CA");
    let server = TestServer::start_with(|c| {
        c.opamp.tls = Some(pki.serve(&pki.server(1), None));
        c.opamp.header_read_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(server.running().opamp_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = within(
        "the server to close the silent socket",
        silent.read(&mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without a byte: {read:?}"
    );
    let scrape = Api::new(&server.api_url).metrics().await;
    assert_eq!(
        scrape.value(
            "opampd_sockets_timed_out_total",
            &[("listener", "opamp"), ("stage", "header_read")]
        ),
        1
    );
}

/// At its connection limit a TLS listener still answers 503 with `Retry-After`, inside TLS, where
/// the client can read it.
#[tokio::test]
async fn over_the_connection_limit_the_503_comes_inside_tls() {
    let pki = Pki::new("fleet CA");
    let server = TestServer::start_with(|c| {
        c.api.tls = Some(pki.serve(&pki.server(1), None));
        c.api.max_connections = 1;
    })
    .await;
    let addr = server.running().api_addr;
    // The one place, held by a socket that has done its handshake and sent nothing yet.
    let _holder = pki.connect(addr, None).await.unwrap();
    let client = pki.http_client(None);
    let url = format!("https://{addr}/readyz");
    let refused = eventually("a 503 over TLS", || async {
        let response = client.get(&url).send().await.ok()?;
        (response.status() == 503).then_some(response)
    })
    .await;
    assert!(refused.headers().contains_key("retry-after"), "{refused:?}");
}
