//! The REST API's key defaults, against the real binary: with no keys configured, loopback
//! callers read without one, every write needs one, and the admin key generated into the data
//! directory on first start (mode 0600, its path logged) is one; keys may be given hashed.

use serde_json::json;
use sha2::Digest as _;

use crate::support::api::{Api, assert_error, generated_key};
use crate::support::binary::ServerProcess;
use crate::support::*;

#[tokio::test]
async fn without_keys_loopback_reads_writes_need_the_generated_key() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_data(data.path(), &[], &[]).await;
    let base = format!("http://{}", server.api_addr);
    let logged = server
        .wait_logged("the generated key's path in the log", |e| {
            e["message"].as_str().is_some_and(|m| {
                m.starts_with("no api.keys configured: generated an admin API key")
            })
        })
        .await;
    let file = data.path().join(opampd::api::keyfile::FILE);
    assert_eq!(logged["path"], file.display().to_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the key file is the server user's alone"
        );
    }
    let key = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(
        !server.logs.lock().unwrap().iter().any(|l| l.contains(&key)),
        "the key itself is never logged"
    );

    let uid = new_uid();
    post_ok(&server.opamp_url(), &hello(&uid, 0)).await;
    let anonymous = Api::anonymous(&base);
    let path = format!("/api/v1/collectors/{}", id_of(&uid));
    let read = eventually("the collector, read without a key", || async {
        let answer = anonymous.get(&path).await;
        (answer.status == 200).then_some(answer)
    })
    .await;
    assert_eq!(read.body["id"], id_of(&uid).to_string());
    let labels = format!("{path}/labels");
    assert_error(
        &anonymous.put(&labels, &json!({"env": "prod"})).await,
        401,
        "unauthorized",
    );
    assert_error(&anonymous.delete(&path).await, 401, "unauthorized");
    let admin = Api::with_key(&base, &key);
    assert_eq!(
        admin.put(&labels, &json!({"env": "prod"})).await.status,
        200
    );
    assert_error(
        &Api::with_key(&base, "not-the-key-0123456789")
            .get(&path)
            .await,
        401,
        "unauthorized",
    );
    assert_eq!(generated_key(&base).as_deref(), Some(key.as_str()));
}

#[tokio::test]
async fn the_generated_key_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut first = ServerProcess::start_with_data(data.path(), &[], &[]).await;
    let key = generated_key(&format!("http://{}", first.api_addr)).unwrap();
    // Stopped and gone before the next start: dropping it only sends the kill, and a second
    // server started while the first still holds the database's lock is refused.
    first.signal("TERM");
    first.wait_exit().await;
    let second = ServerProcess::start_with_data(data.path(), &[], &[]).await;
    second
        .wait_logged("the existing key to be used", |e| {
            e["message"] == "no api.keys configured: using the admin API key in the data directory"
        })
        .await;
    let admin = Api::with_key(&format!("http://{}", second.api_addr), &key);
    assert_eq!(admin.get("/api/v1/summary").await.status, 200);
}

#[tokio::test]
async fn a_key_given_hashed_is_accepted_and_no_key_file_is_made() {
    let key = "hashed-operator-key-0123456789";
    let digest = opampd::collector::machine::hex(&sha2::Sha256::digest(key.as_bytes()));
    let keys = format!(r#"[{{name = "ops", key_sha256 = "{digest}", role = "operator"}}]"#);
    let data = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with_data(data.path(), &[], &[("OPAMPD_API__KEYS", &keys)]).await;
    let base = format!("http://{}", server.api_addr);
    assert!(!data.path().join(opampd::api::keyfile::FILE).exists());
    assert_error(
        &Api::anonymous(&base).get("/api/v1/summary").await,
        401,
        "unauthorized",
    );
    assert_eq!(
        Api::with_key(&base, key)
            .get("/api/v1/summary")
            .await
            .status,
        200
    );
    assert_error(
        &Api::with_key(&base, &digest).get("/api/v1/summary").await,
        401,
        "unauthorized",
    );
}
