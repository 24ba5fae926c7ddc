//! Certificates by request (OpAMP's CSR flow): with `opamp.ca` configured, a collector's
//! certificate signing request is signed and returned in its OpAMP connection settings, and the
//! collector then connects over mutual TLS with the issued certificate, whose subject and expiry
//! are on its record from the moment it is issued. Later OpAMP connection offers carry the issued
//! certificate again (an offer without one would tell the collector to drop it). A request naming
//! another collector's uid is refused with `BAD_REQUEST`. A certificate near its end is renewed by
//! an offer carrying a new certificate and its key, once.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opampd::config::ClientAuth;
use opampd::opamp::ca::CaConfig;
use opampd::proto;
use opampd::proto::AgentCapabilities as Can;
use rcgen::{CertificateParams, DnType, KeyPair};

use crate::support::api::Api;
use crate::support::tls::{Issued, Pki};
use crate::support::*;

/// What a collector that asks for certificates declares: it takes OpAMP connection settings.
fn accepting() -> u64 {
    all_capabilities()
        | capabilities(&[
            Can::AcceptsOpAmpConnectionSettings,
            Can::ReportsConnectionSettingsStatus,
        ])
}

fn requesting(uid: &Bytes, seq: u64, csr: String) -> proto::AgentToServer {
    proto::AgentToServer {
        capabilities: accepting(),
        connection_settings_request: Some(proto::ConnectionSettingsRequest {
            opamp: Some(proto::OpAmpConnectionSettingsRequest {
                certificate_request: Some(proto::CertificateRequest {
                    csr: Bytes::from(csr),
                }),
            }),
        }),
        ..hello(uid, seq)
    }
}

/// A CSR for a key of the collector's own, its common name `name`.
fn csr(name: &str) -> (String, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let request = params.serialize_request(&key).unwrap();
    (request.pem().unwrap(), key)
}

/// A server with TLS (client certificates optional) and `opamp.ca` from `pki`.
async fn signing_server(pki: &Pki) -> TestServer {
    signing_server_with(pki, Duration::from_hours(24), None).await
}

/// [`signing_server`] issuing certificates valid for `validity`, renewed within `renew_before`.
async fn signing_server_with(
    pki: &Pki,
    validity: Duration,
    renew_before: Option<Duration>,
) -> TestServer {
    install_crypto();
    let server_cert = pki.server(1);
    let tls = pki.serve(&server_cert, Some(ClientAuth::Optional));
    let ca = CaConfig {
        cert: pki.path("ca.pem"),
        key: pki.write("ca.key", &pki.ca_key_pem),
        validity,
        renew_before,
        reload_interval: Duration::from_millis(100),
        endpoint: "wss://opamp.example.com:4320/v1/opamp".into(),
    };
    TestServer::start_with(|config| {
        config.opamp.tls = Some(tls);
        config.opamp.ca = Some(ca);
    })
    .await
}

/// The connection settings offer the reply carries or, over WebSocket, the message pushed right
/// after it: the certificate is offered like any connection settings.
async fn offered<S>(
    ws: &mut WsClient<S>,
    reply: proto::ServerToAgent,
) -> proto::ConnectionSettingsOffers
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match reply.connection_settings {
        Some(offer) => offer,
        None => ws
            .recv()
            .await
            .connection_settings
            .expect("the certificate's offer"),
    }
}

#[tokio::test]
async fn a_signed_request_gives_a_certificate_the_collector_connects_with() {
    let pki = Pki::new("fleet-ca");
    let server = signing_server(&pki).await;
    let addr = server.running().opamp_addr;
    let uid = new_uid();
    let id = id_of(&uid).to_string();

    // No certificate yet: in over TLS without one (client certificates are optional here).
    let mut ws = pki
        .ws(addr, None)
        .await
        .expect("TLS without a client certificate");
    let (request, key) = csr(&id);
    let reply = ws.exchange(&requesting(&uid, 0, request)).await;
    assert!(
        reply.capabilities & proto::ServerCapabilities::AcceptsConnectionSettingsRequest as u64
            != 0
    );
    let opamp = offered(&mut ws, reply)
        .await
        .opamp
        .expect("an OpAMP connection offer");
    assert_eq!(
        opamp.destination_endpoint,
        "wss://opamp.example.com:4320/v1/opamp"
    );
    let certificate = opamp.certificate.expect("the issued certificate");
    assert!(certificate.private_key.is_empty(), "never a private key");
    assert_eq!(&certificate.ca_cert[..], pki.ca_pem.as_bytes());
    // On the record already: the reply follows the commit.
    let api = Api::new(&server.api_url);
    let record = api.ok(&format!("/api/v1/collectors/{id}")).await;
    let issued = &record["issued_certificate"];
    assert_eq!(issued["subject"], format!("CN={id}"), "{record}");
    assert_eq!(issued["issuer"], "CN=fleet-ca");

    // Another collector's uid in the CSR is refused.
    let (foreign, _) = csr(&id_of(&new_uid()).to_string());
    let refused = ws.exchange(&requesting(&uid, 1, foreign)).await;
    assert!(is_bad_request(&refused), "{refused:?}");
    drop(ws);

    // The collector connects again over mutual TLS with what it was issued.
    let identity = Issued {
        cert: String::from_utf8(certificate.cert.to_vec()).unwrap(),
        key: key.serialize_pem(),
    };
    let mut ws = pki
        .ws(addr, Some(&identity))
        .await
        .expect("mutual TLS with the issued certificate");
    ws.exchange(&hello(&uid, 2)).await;
    let record = eventually("the issued certificate on the record", || async {
        let record = api.ok(&format!("/api/v1/collectors/{id}")).await;
        record["client_certificate"].is_object().then_some(record)
    })
    .await;
    let seen = &record["client_certificate"];
    assert_eq!(seen["subject"], format!("CN={id}"));
    assert_eq!(seen["issuer"], "CN=fleet-ca");
    let not_after = time::OffsetDateTime::parse(
        seen["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = SystemTime::from(not_after)
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_hours(23) && left <= Duration::from_hours(24),
        "valid for opamp.ca.validity: {left:?}"
    );
    for field in ["serial", "sha256", "not_after"] {
        assert_eq!(
            seen[field], record["issued_certificate"][field],
            "it connects with the certificate the record says it was issued: {field}"
        );
    }
}

#[tokio::test]
async fn later_opamp_offers_carry_the_issued_certificate() {
    let pki = Pki::new("fleet-ca");
    let server = signing_server(&pki).await;
    let uid = new_uid();
    let id = id_of(&uid).to_string();
    let mut ws = pki.ws(server.running().opamp_addr, None).await.unwrap();
    let (request, _key) = csr(&id);
    let reply = ws.exchange(&requesting(&uid, 0, request)).await;
    let first = offered(&mut ws, reply).await;
    let issued = first.opamp.unwrap().certificate.expect("the certificate");
    let applied = proto::AgentToServer {
        capabilities: accepting(),
        connection_settings_status: Some(proto::ConnectionSettingsStatus {
            last_connection_settings_hash: first.hash.clone(),
            status: proto::ConnectionSettingsStatuses::Applied as i32,
            error_message: String::new(),
        }),
        ..heartbeat(&uid, 1)
    };
    let quiet = ws.exchange(&applied).await;
    assert!(
        quiet.connection_settings.is_none(),
        "it holds what it was sent"
    );

    // An operator moves the fleet's OpAMP connection: the collector is told the new destination
    // together with the certificate it was issued, not told to drop it.
    let api = Api::new(&server.api_url);
    let offer = serde_json::json!({
        "name": "move",
        "selector": "",
        "opamp": {"destination_endpoint": "wss://new.example.com/v1/opamp",
                  "heartbeat_interval_seconds": 15},
    });
    let answer = api.post("/api/v1/connection-settings", &offer).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let pushed = ws.recv().await.connection_settings.expect("the new offer");
    assert_ne!(pushed.hash, first.hash);
    let opamp = pushed.opamp.expect("the OpAMP connection");
    assert_eq!(opamp.destination_endpoint, "wss://new.example.com/v1/opamp");
    assert_eq!(opamp.heartbeat_interval_seconds, 15);
    assert_eq!(
        opamp.certificate,
        Some(issued),
        "the issued certificate again"
    );
}

/// The serial of a PEM certificate as the API shows it.
fn serial_of(pem: &[u8]) -> String {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&block.contents).unwrap();
    cert.raw_serial_as_string()
}

#[tokio::test]
async fn a_certificate_near_its_end_is_renewed_by_an_offer_with_its_key() {
    let pki = Pki::new("fleet-ca");
    // Valid an hour, renewed within two: every certificate issued here is due at once.
    let hour = Duration::from_hours(1);
    let server = signing_server_with(&pki, hour, Some(hour * 2)).await;
    let addr = server.running().opamp_addr;
    let uid = new_uid();
    let id = id_of(&uid).to_string();
    let api = Api::new(&server.api_url);

    let mut ws = pki.ws(addr, None).await.unwrap();
    let (request, key) = csr(&id);
    let reply = ws.exchange(&requesting(&uid, 0, request)).await;
    let requested = offered(&mut ws, reply)
        .await
        .opamp
        .unwrap()
        .certificate
        .unwrap();
    assert!(
        requested.private_key.is_empty(),
        "the collector has its key"
    );
    drop(ws);

    // Back over mutual TLS with it: near its end, so a new one is offered, with its new key.
    let identity = Issued {
        cert: String::from_utf8(requested.cert.to_vec()).unwrap(),
        key: key.serialize_pem(),
    };
    let mut ws = pki.ws(addr, Some(&identity)).await.unwrap();
    let back = proto::AgentToServer {
        capabilities: accepting(),
        ..hello(&uid, 1)
    };
    let reply = ws.exchange(&back).await;
    let renewal = offered(&mut ws, reply).await;
    let renewed = renewal.opamp.unwrap().certificate.expect("the renewal");
    assert_ne!(renewed.cert, requested.cert);
    assert!(!renewed.private_key.is_empty(), "a key made by the server");
    assert_eq!(&renewed.ca_cert[..], pki.ca_pem.as_bytes());
    let record = api.ok(&format!("/api/v1/collectors/{id}")).await;
    assert_eq!(
        record["issued_certificate"]["serial"],
        serial_of(&renewed.cert)
    );
    assert_eq!(record["issued_certificate"]["subject"], format!("CN={id}"));
    assert!(
        !record.to_string().contains("PRIVATE KEY"),
        "the key is never shown"
    );

    // Once per certificate: more messages on the same connection bring no other.
    let again = proto::AgentToServer {
        capabilities: accepting(),
        ..heartbeat(&uid, 2)
    };
    assert!(ws.exchange(&again).await.connection_settings.is_none());
    drop(ws);

    // The collector connects with the renewal and the key it was sent.
    let identity = Issued {
        cert: String::from_utf8(renewed.cert.to_vec()).unwrap(),
        key: String::from_utf8(renewed.private_key.to_vec()).unwrap(),
    };
    let mut ws = pki
        .ws(addr, Some(&identity))
        .await
        .expect("mutual TLS with the renewed certificate");
    ws.exchange(&proto::AgentToServer {
        capabilities: accepting(),
        ..heartbeat(&uid, 3)
    })
    .await;
    let serial = serial_of(&renewed.cert);
    eventually("the renewed certificate connected with", || async {
        let record = api.ok(&format!("/api/v1/collectors/{id}")).await;
        (record["client_certificate"]["serial"] == serial.as_str()).then_some(())
    })
    .await;
}

/// The issuer a PEM certificate names.
fn issuer_of(pem: &[u8]) -> String {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&block.contents).unwrap();
    cert.issuer().to_string()
}

#[tokio::test]
async fn a_ca_replaced_on_disk_signs_from_then_on_without_a_restart() {
    let pki = Pki::new("fleet-ca");
    let server = signing_server(&pki).await;
    let uid = new_uid();
    let id = id_of(&uid).to_string();
    let mut ws = pki.ws(server.running().opamp_addr, None).await.unwrap();
    let mut seq = 0;
    let mut issuer = async |ws: &mut WsClient<_>| {
        let reply = ws.exchange(&requesting(&uid, seq, csr(&id).0)).await;
        seq += 1;
        let offer = offered(ws, reply).await;
        issuer_of(&offer.opamp.unwrap().certificate.unwrap().cert)
    };
    assert_eq!(issuer(&mut ws).await, "CN=fleet-ca");

    // A pair caught half-replaced (the new CA's certificate, the old key) is refused, and the
    // old CA signs on.
    let api = Api::new(&server.api_url);
    let next = Pki::new("next-ca");
    pki.write("ca.pem", &next.ca_pem);
    eventually("the half-replaced pair read and refused", || async {
        (api.tls_reloads("ca", "refused").await >= 1).then_some(())
    })
    .await;
    assert_eq!(issuer(&mut ws).await, "CN=fleet-ca");

    // Whole, it signs from then on.
    pki.write("ca.key", &next.ca_key_pem);
    eventually("the new CA read", || async {
        (api.tls_reloads("ca", "ok").await >= 1).then_some(())
    })
    .await;
    assert_eq!(issuer(&mut ws).await, "CN=next-ca");
}
