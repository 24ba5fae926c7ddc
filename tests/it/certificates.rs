//! Certificates by request (OpAMP's CSR flow): with `opamp.ca` configured, a collector's
//! certificate signing request is signed and returned in its OpAMP connection settings, and the
//! collector then connects over mutual TLS with the issued certificate, whose subject and expiry
//! are on its record. A request naming another collector's uid is refused with `BAD_REQUEST`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opampd::config::ClientAuth;
use opampd::opamp::ca::CaConfig;
use opampd::proto;
use rcgen::{CertificateParams, DnType, KeyPair};

use crate::support::api::Api;
use crate::support::tls::{Issued, Pki};
use crate::support::*;

fn requesting(uid: &Bytes, seq: u64, csr: String) -> proto::AgentToServer {
    proto::AgentToServer {
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

#[tokio::test]
async fn a_signed_request_gives_a_certificate_the_collector_connects_with() {
    install_crypto();
    let pki = Pki::new("fleet-ca");
    let server_cert = pki.server(1);
    let tls = pki.serve(&server_cert, Some(ClientAuth::Optional));
    let ca = CaConfig {
        cert: pki.path("ca.pem"),
        key: pki.write("ca.key", &pki.ca_key_pem),
        validity: Duration::from_hours(24),
        endpoint: "wss://opamp.example.com:4320/v1/opamp".into(),
    };
    let server = TestServer::start_with(|config| {
        config.opamp.tls = Some(tls);
        config.opamp.ca = Some(ca);
    })
    .await;
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
    let opamp = reply
        .connection_settings
        .and_then(|s| s.opamp)
        .expect("an OpAMP connection offer");
    assert_eq!(
        opamp.destination_endpoint,
        "wss://opamp.example.com:4320/v1/opamp"
    );
    let certificate = opamp.certificate.expect("the issued certificate");
    assert!(certificate.private_key.is_empty(), "never a private key");
    assert_eq!(&certificate.ca_cert[..], pki.ca_pem.as_bytes());

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
    let api = Api::new(&server.api_url);
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
}
