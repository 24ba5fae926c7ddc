//! The budget of message bytes in flight: a thousand collectors sending the largest message
//! allowed, all at once, to the real binary. Each gets an answer or a "try again later", and the
//! server's memory stays near the budget instead of a thousand messages.

use futures_util::{SinkExt as _, StreamExt as _};
use opampd::proto;
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::binary::ServerProcess;
use crate::support::*;

const COLLECTORS: usize = 1000;
const MAX_MESSAGE: usize = 256 * 1024;
const BUDGET: usize = 2 * MAX_MESSAGE;
/// The default `opamp.connection_reserve_bytes`.
const RESERVE: usize = 16 * 1024;

/// Resident and peak resident memory of a process, in bytes, from `/proc`.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

enum Outcome {
    Answered,
    TryLater,
}

#[tokio::test]
async fn a_thousand_largest_messages_at_once_stay_within_the_budget() {
    let server = ServerProcess::start(
        &[],
        &[
            ("OPAMPD_OPAMP__MAX_MESSAGE_BYTES", &MAX_MESSAGE.to_string()),
            ("OPAMPD_OPAMP__MESSAGE_BUDGET_BYTES", &BUDGET.to_string()),
            ("OPAMPD_OPAMP__MAX_CONNECTIONS", "2000"),
            // Connecting a thousand takes a while; none may be closed for silence meanwhile.
            ("OPAMPD_OPAMP__WS_HANDSHAKE_TIMEOUT", "120s"),
            ("OPAMPD_DATABASE__FLUSH_INTERVAL", "5ms"),
        ],
    )
    .await;
    let pid = server.pid();
    let mut sockets = Vec::with_capacity(COLLECTORS);
    for _ in 0..COLLECTORS {
        let (socket, _) = within(
            "a WebSocket upgrade",
            tokio_tungstenite::connect_async(server.ws_url()),
        )
        .await
        .unwrap();
        sockets.push(socket);
    }
    let (before, _) = memory(pid);
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(COLLECTORS));
    let mut tasks = tokio::task::JoinSet::new();
    for mut socket in sockets {
        let start = std::sync::Arc::clone(&start);
        tasks.spawn(async move {
            let uid = new_uid();
            let mut message = hello(&uid, 0);
            message.custom_message = Some(proto::CustomMessage {
                capability: "io.opampd.test".into(),
                r#type: "filler".into(),
                data: vec![b'x'; MAX_MESSAGE - 1024].into(),
            });
            let mut bytes = vec![0];
            message.encode(&mut bytes).unwrap();
            assert!(bytes.len() <= MAX_MESSAGE);
            start.wait().await;
            // The send may fail once the server has refused the message and closed.
            let _ = socket.send(Message::Binary(bytes.into())).await;
            loop {
                match socket.next().await {
                    Some(Ok(Message::Binary(data))) => {
                        let reply = proto::ServerToAgent::decode(&data[1..]).unwrap();
                        return if is_unavailable(&reply) {
                            Outcome::TryLater
                        } else {
                            assert_eq!(reply.instance_uid, uid);
                            Outcome::Answered
                        };
                    }
                    Some(Ok(Message::Close(Some(frame)))) => {
                        assert_eq!(frame.code, CloseCode::Again, "{frame:?}");
                        return Outcome::TryLater;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => panic!("neither an answer nor a retry: {other:?}"),
                }
            }
        });
    }
    let (mut answered, mut later) = (0, 0);
    within("every collector's answer", async {
        while let Some(outcome) = tasks.join_next().await {
            match outcome.unwrap() {
                Outcome::Answered => answered += 1,
                Outcome::TryLater => later += 1,
            }
        }
    })
    .await;
    let (_, peak) = memory(pid);
    let grew = peak.saturating_sub(before);
    eprintln!(
        "{answered} answered, {later} told to retry; resident {} MiB before, peak {} MiB (+{} MiB); \
         {} MiB of messages were sent",
        before >> 20,
        peak >> 20,
        grew >> 20,
        (COLLECTORS * MAX_MESSAGE) >> 20
    );
    assert_eq!(answered + later, COLLECTORS);
    assert!(answered > 0, "the budget lets some through");
    assert!(later > 0, "the budget refused none: it was not reached");
    // Unbounded, a thousand messages would hold 250 MiB at once. Within the budget: the budget,
    // each connection's reserve and the one read (4 KiB) it may hold beyond its count; plus the
    // allocator's slack. An answered connection keeps nothing of its message (ADR 0072).
    let bound = BUDGET + COLLECTORS * (RESERVE + 4 * 1024) + 32 * 1024 * 1024;
    assert!(
        bound < COLLECTORS * MAX_MESSAGE,
        "the bound is too loose for the memory check to tell a budget from none"
    );
    assert!(
        grew < bound as u64,
        "memory grew by {} MiB, more than the bound's {} MiB",
        grew >> 20,
        bound >> 20
    );
}
