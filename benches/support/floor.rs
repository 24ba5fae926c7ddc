//! The floor: the least an OpAMP WebSocket server does for a collector (accept, upgrade, decode
//! each message, answer it) with nothing kept, so the figures bench can measure what this machine
//! charges any server for the transport alone, with the same load and the same `/proc` figures as
//! opampd. It runs in a process of its own: the figures bench's executable, started again with
//! `SERVE` set.

use std::net::SocketAddr;

use futures_util::{SinkExt as _, StreamExt as _};
use opampd::opamp::report::SERVER_CAPABILITIES;
use opampd::proto;
use prost::Message as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The variable that makes the bench's executable the floor, listening on its value.
pub const SERVE: &str = "FIGURES_FLOOR_SERVE";

/// Serves on `addr` until killed, on the same runtime opampd uses (Tokio, a worker per core).
pub fn serve(addr: &str) {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("the floor's address is free");
        // As deep as opampd asks for (Linux caps it at net.core.somaxconn), so that a storm is
        // not held back by the accept queue in one server and not the other.
        let listener = socket.listen(65_535).expect("listening");
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream));
            }
        }
    });
}

/// One collector's connection: every binary message is decoded and acknowledged.
async fn answer(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // tungstenite's default read buffer is 128 KiB, allocated at once: with 19,000 collectors
    // the floor would spend its time in page faults. 4 KiB holds any message of this load.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Binary(data) => {
                // The OpAMP header, a varint 0, when present.
                let body = data.strip_prefix(&[0]).unwrap_or(&data);
                let Ok(report) = proto::AgentToServer::decode(body) else {
                    return;
                };
                let reply = proto::ServerToAgent {
                    instance_uid: report.instance_uid,
                    // What opampd says it can do: each answer is the size of opampd's.
                    capabilities: SERVER_CAPABILITIES,
                    ..Default::default()
                };
                let mut bytes = Vec::with_capacity(1 + reply.encoded_len());
                bytes.push(0);
                let _ = reply.encode(&mut bytes);
                if ws.send(Message::Binary(bytes.into())).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}
