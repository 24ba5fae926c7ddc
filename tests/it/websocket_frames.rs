//! The WebSocket transport frame by frame (RFC 6455, the server's side): a raw TCP client with a
//! hand-written upgrade request and frame codec, so that it can send what a client library never
//! would (unmasked frames, reserved bits, stray continuations, a message one byte at a time) and
//! see exactly which frames come back.

use std::fmt::Write as _;

use opampd::proto;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::support::{TestServer, hello, new_uid, within, ws_message, ws_reply};

// A frame's first byte: FIN, the reserved bits, the opcode.
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

// The second byte's length field, when a 16-bit or a 64-bit length follows.
const LENGTH_16: u8 = 126;
const LENGTH_64: u8 = 127;

const NORMAL: u16 = 1000;
const PROTOCOL_ERROR: u16 = 1002;
const UNSUPPORTED_DATA: u16 = 1003;
const MESSAGE_TOO_BIG: u16 = 1009;

/// A valid upgrade request's headers, the key aside.
const UPGRADE: [(&str, &str); 3] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Version", "13"),
];

/// A client frame: `head` is its first byte (FIN, reserved bits, opcode); its payload masked
/// with a random key unless `masked` is false.
fn encode(head: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut bytes = vec![head];
    match payload.len() {
        len @ 0..=125 => bytes.push(mask_bit | len as u8),
        len @ 126..=0xffff => {
            bytes.push(mask_bit | LENGTH_16);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            bytes.push(mask_bit | LENGTH_64);
            bytes.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        let key: [u8; 4] = rand::random();
        bytes.extend_from_slice(&key);
        bytes.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        bytes.extend_from_slice(payload);
    }
    bytes
}

/// A masked client frame, as every client frame must be.
fn frame(head: u8, payload: &[u8]) -> Vec<u8> {
    encode(head, payload, true)
}

/// `data` as a binary message's fragments of `size` bytes each (the last maybe shorter): the
/// first a Binary frame, the others Continuations, the last final when `finish` says so.
fn fragments(data: &[u8], size: usize, finish: bool) -> Vec<Vec<u8>> {
    let count = data.len().div_ceil(size);
    data.chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let opcode = if i == 0 { BINARY } else { CONTINUATION };
            let fin = if finish && i + 1 == count { FIN } else { 0 };
            frame(fin | opcode, chunk)
        })
        .collect()
}

/// A frame the server sent.
#[derive(Debug)]
struct Frame {
    head: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn opcode(&self) -> u8 {
        self.head & 0x0f
    }

    fn fin(&self) -> bool {
        self.head & FIN != 0
    }

    /// A Close frame's code and reason.
    fn close(&self) -> (Option<u16>, String) {
        assert_eq!(self.opcode(), CLOSE, "a Close frame: {self:?}");
        match self.payload.as_slice() {
            [] => (None, String::new()),
            [a, b, reason @ ..] => (
                Some(u16::from_be_bytes([*a, *b])),
                String::from_utf8(reason.to_vec()).expect("a close reason in UTF-8"),
            ),
            [_] => panic!("a Close payload of one byte"),
        }
    }
}

/// The server frame at the start of `bytes` and its length on the wire, once it is all there.
fn parse(bytes: &[u8]) -> Option<(Frame, usize)> {
    let [head, second, ..] = *bytes else {
        return None;
    };
    assert_eq!(second & 0x80, 0, "server frames are never masked");
    assert_eq!(
        head & 0x70,
        0,
        "no extension was negotiated: no reserved bit may be set"
    );
    let (len, start) = match second & 0x7f {
        LENGTH_16 => {
            let len = u16::from_be_bytes(bytes.get(2..4)?.try_into().unwrap());
            assert!(len >= 126, "a 16-bit length only past 125: {len}");
            (usize::from(len), 4)
        }
        LENGTH_64 => {
            let len = u64::from_be_bytes(bytes.get(2..10)?.try_into().unwrap());
            assert!(len > 0xffff, "a 64-bit length only past 65535: {len}");
            (usize::try_from(len).unwrap(), 10)
        }
        len => (usize::from(len), 2),
    };
    let payload = bytes.get(start..start + len)?.to_vec();
    Some((Frame { head, payload }, start + len))
}

/// An HTTP response's status and headers (names in lower case).
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

/// A raw connection to the OpAMP listener, and what has been read from it but not parsed yet.
struct Ws {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Ws {
    /// Sends `GET` of the OpAMP path with `headers` (and `Host`) on a new connection; the
    /// response's head, and the connection holding whatever came after it.
    async fn request(server: &TestServer, headers: &[(&str, &str)]) -> (Head, Self) {
        let stream = TcpStream::connect(server.running().opamp_addr)
            .await
            .expect("connect");
        // Each write goes out as written: the byte-at-a-time test depends on it.
        stream.set_nodelay(true).unwrap();
        let mut ws = Self {
            stream,
            buffer: Vec::new(),
        };
        let path = &server.config.opamp.path;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: opampd\r\n");
        for (name, value) in headers {
            write!(request, "{name}: {value}\r\n").unwrap();
        }
        request.push_str("\r\n");
        ws.write(request.as_bytes()).await;
        let end = within("the response's head", async {
            loop {
                if let Some(at) = ws.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    return at;
                }
                let read = ws.stream.read_buf(&mut ws.buffer).await.expect("read");
                assert!(read > 0, "the connection ended before the response's head");
            }
        })
        .await;
        let text = String::from_utf8(ws.buffer.drain(..end + 4).collect()).expect("UTF-8 head");
        let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
        let status_line = lines.next().expect("a status line");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("an HTTP/1.1 status line: {status_line}"));
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').expect("a header line");
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        (Head { status, headers }, ws)
    }

    /// A WebSocket connection, its upgrade checked: 101, the key's accept value.
    async fn open(server: &TestServer) -> Self {
        let key = generate_key();
        let mut headers = UPGRADE.to_vec();
        headers.push(("Sec-WebSocket-Key", &key));
        let (head, ws) = Self::request(server, &headers).await;
        assert_eq!(head.status, 101, "headers: {:?}", head.headers);
        assert_eq!(
            head.header("sec-websocket-accept"),
            Some(derive_accept_key(key.as_bytes()).as_str())
        );
        ws
    }

    /// Writes `bytes` and flushes them.
    async fn write(&mut self, bytes: &[u8]) {
        within("a write", async {
            self.stream.write_all(bytes).await.expect("write");
            self.stream.flush().await.expect("flush");
        })
        .await;
    }

    /// Sends `message` in one masked, final Binary frame.
    async fn send(&mut self, message: &proto::AgentToServer) {
        self.write(&frame(FIN | BINARY, &ws_message(message))).await;
    }

    /// The server's next frame; the test fails if the connection ends first.
    async fn frame(&mut self) -> Frame {
        within("a frame from the server", async {
            loop {
                if let Some((frame, len)) = parse(&self.buffer) {
                    self.buffer.drain(..len);
                    return frame;
                }
                let read = self.stream.read_buf(&mut self.buffer).await.expect("read");
                assert!(
                    read > 0,
                    "the connection ended without a whole frame (buffered: {:?})",
                    self.buffer
                );
            }
        })
        .await
    }

    /// The server's next frame that is not a Ping or a Pong.
    async fn frame_but_ping_pong(&mut self) -> Frame {
        loop {
            let frame = self.frame().await;
            if !matches!(frame.opcode(), PING | PONG) {
                return frame;
            }
        }
    }

    /// The server's next message, decoded (pings and pongs skipped; a Close fails the test).
    async fn reply(&mut self) -> proto::ServerToAgent {
        let mut message: Option<Vec<u8>> = None;
        loop {
            let frame = self.frame_but_ping_pong().await;
            match (frame.opcode(), &mut message) {
                (BINARY, None) => message = Some(frame.payload.clone()),
                (CONTINUATION, Some(data)) => data.extend_from_slice(&frame.payload),
                (CLOSE, _) => panic!("a reply expected, the server closed: {:?}", frame.close()),
                _ => panic!("a reply expected, got {frame:?}"),
            }
            if frame.fin() {
                return ws_reply(&message.expect("a whole message"));
            }
        }
    }

    /// Reads to the end of the connection, which must bring no more bytes.
    async fn end(&mut self) -> std::io::Result<()> {
        within("the server to close the connection", async {
            let mut rest = [0u8; 256];
            match self.stream.read(&mut rest).await? {
                0 => Ok(()),
                n => panic!("bytes after the Close frame: {:?}", &rest[..n]),
            }
        })
        .await
    }

    /// Expects the server's Close with `code` as its next frame (pings and pongs aside), answers
    /// it as RFC 6455 asks, and expects the server to close TCP (a server that did not wait for
    /// the answer may have reset the connection instead).
    async fn expect_close(&mut self, code: u16) {
        let frame = self.frame_but_ping_pong().await;
        assert_eq!(frame.opcode(), CLOSE, "a Close expected, got {frame:?}");
        assert!(frame.fin(), "control frames are never fragmented");
        let (got, reason) = frame.close();
        assert_eq!(
            got,
            Some(code),
            "the Close frame's code (reason: {reason:?})"
        );
        // The server may have closed TCP already: a failed write is fine.
        let _ = self.stream.write_all(&close_frame(code)).await;
        match self.end().await {
            Ok(()) => {}
            Err(err) => assert_eq!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset,
                "reading to the end: {err}"
            ),
        }
    }
}

/// A client's Close frame with `code`.
fn close_frame(code: u16) -> Vec<u8> {
    frame(FIN | CLOSE, &code.to_be_bytes())
}

/// Sends `frames` one write each after an upgrade, and expects a Close with `code`.
async fn closes_with(frames: &[Vec<u8>], code: u16) {
    let server = TestServer::start().await;
    let mut ws = Ws::open(&server).await;
    for bytes in frames {
        ws.write(bytes).await;
    }
    ws.expect_close(code).await;
}

#[tokio::test]
async fn the_upgrade_answers_the_key_and_refuses_other_versions_and_a_missing_key() {
    let server = TestServer::start().await;
    // RFC 6455's own example (section 1.3): its accept value written out, not computed.
    let mut headers = UPGRADE.to_vec();
    headers.push(("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="));
    let (head, _ws) = Ws::request(&server, &headers).await;
    assert_eq!(head.status, 101, "headers: {:?}", head.headers);
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(head.has_token("upgrade", "websocket"), "{:?}", head.headers);
    assert!(
        head.has_token("connection", "upgrade"),
        "{:?}",
        head.headers
    );
    // None was asked for, so none may be in use.
    assert_eq!(head.header("sec-websocket-extensions"), None);
    assert_eq!(head.header("sec-websocket-protocol"), None);

    let mut version_8 = headers.clone();
    version_8[2] = ("Sec-WebSocket-Version", "8");
    let (head, _ws) = Ws::request(&server, &version_8).await;
    assert_eq!(head.status, 426, "version 8: {:?}", head.headers);
    // RFC 6455, 4.4: the refusal names the version spoken.
    assert_eq!(head.header("sec-websocket-version"), Some("13"));
    assert_eq!(head.header("sec-websocket-accept"), None);

    let (head, _ws) = Ws::request(&server, &UPGRADE).await;
    assert_eq!(head.status, 400, "no key: {:?}", head.headers);
    assert_eq!(head.header("sec-websocket-accept"), None);
}

#[tokio::test]
async fn a_message_in_three_fragments_gets_the_reply_it_gets_whole() {
    let server = TestServer::start().await;
    let (whole_uid, split_uid) = (new_uid(), new_uid());
    let mut whole = Ws::open(&server).await;
    whole.send(&hello(&whole_uid, 0)).await;
    let expected = whole.reply().await;

    let mut split = Ws::open(&server).await;
    let data = ws_message(&hello(&split_uid, 0));
    let frames = fragments(&data, data.len().div_ceil(3), true);
    assert_eq!(frames.len(), 3);
    for bytes in &frames {
        split.write(bytes).await;
    }
    let mut reply = split.reply().await;
    assert_eq!(reply.instance_uid, split_uid);
    // Both were first hellos from new collectors, alike but for the uid.
    reply.instance_uid = whole_uid;
    assert_eq!(reply, expected);
}

#[tokio::test]
async fn a_ping_between_fragments_gets_its_pong_and_the_message_its_reply() {
    let server = TestServer::start().await;
    let mut ws = Ws::open(&server).await;
    let uid = new_uid();
    let data = ws_message(&hello(&uid, 0));
    let half = data.len() / 2;
    ws.write(&frame(BINARY, &data[..half])).await;
    ws.write(&frame(FIN | PING, b"abc")).await;
    // Answered while the message is still open.
    let pong = ws.frame().await;
    assert_eq!(pong.opcode(), PONG, "{pong:?}");
    assert!(pong.fin());
    assert_eq!(pong.payload, b"abc");
    ws.write(&frame(FIN | CONTINUATION, &data[half..])).await;
    assert_eq!(ws.reply().await.instance_uid, uid);
}

#[tokio::test]
async fn two_messages_in_one_write_get_two_replies_in_order() {
    let server = TestServer::start().await;
    let mut ws = Ws::open(&server).await;
    let (first, second) = (new_uid(), new_uid());
    let mut bytes = frame(FIN | BINARY, &ws_message(&hello(&first, 0)));
    bytes.extend(frame(FIN | BINARY, &ws_message(&hello(&second, 0))));
    ws.write(&bytes).await;
    assert_eq!(ws.reply().await.instance_uid, first);
    assert_eq!(ws.reply().await.instance_uid, second);
}

#[tokio::test]
async fn a_message_written_a_byte_at_a_time_gets_its_reply() {
    let server = TestServer::start().await;
    let mut ws = Ws::open(&server).await;
    let uid = new_uid();
    let bytes = frame(FIN | BINARY, &ws_message(&hello(&uid, 0)));
    for byte in &bytes {
        ws.write(std::slice::from_ref(byte)).await;
    }
    assert_eq!(ws.reply().await.instance_uid, uid);
}

#[tokio::test]
async fn an_unmasked_frame_closes_with_1002() {
    let message = ws_message(&hello(&new_uid(), 0));
    closes_with(&[encode(FIN | BINARY, &message, false)], PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn a_reserved_bit_without_an_extension_closes_with_1002() {
    let message = ws_message(&hello(&new_uid(), 0));
    closes_with(&[frame(FIN | RSV1 | BINARY, &message)], PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn a_continuation_with_no_message_started_closes_with_1002() {
    let message = ws_message(&hello(&new_uid(), 0));
    closes_with(&[frame(FIN | CONTINUATION, &message)], PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn a_fragmented_text_message_closes_with_1003() {
    // A server that refuses at the first fragment reads the second while it waits for our Close.
    let frames = [frame(TEXT, b"hel"), frame(FIN | CONTINUATION, b"lo")];
    closes_with(&frames, UNSUPPORTED_DATA).await;
}

#[tokio::test]
async fn small_fragments_adding_up_past_the_limit_close_with_1009() {
    let limit = 4096;
    let server = TestServer::start_with(|c| c.opamp.max_message_bytes = limit).await;
    let mut ws = Ws::open(&server).await;
    let mut message = hello(&new_uid(), 0);
    message.custom_message = Some(proto::CustomMessage {
        capability: "io.example/big".into(),
        r#type: "blob".into(),
        data: vec![b'x'; 2 * limit].into(),
    });
    // Just past the limit, and never finished: the server must not wait for the end.
    let size = 128;
    let frames = fragments(&ws_message(&message), size, false);
    for bytes in &frames[..=limit / size] {
        ws.write(bytes).await;
    }
    ws.expect_close(MESSAGE_TOO_BIG).await;
}

#[tokio::test]
async fn a_close_from_the_client_is_answered_and_then_tcp_is_closed() {
    let server = TestServer::start().await;
    let mut ws = Ws::open(&server).await;
    let uid = new_uid();
    ws.send(&hello(&uid, 0)).await;
    assert_eq!(ws.reply().await.instance_uid, uid);
    ws.write(&close_frame(NORMAL)).await;
    let close = ws.frame_but_ping_pong().await;
    assert_eq!(close.opcode(), CLOSE, "{close:?}");
    assert_eq!(close.close().0, Some(NORMAL));
    ws.end().await.expect("a clean end of the connection");
}

#[tokio::test]
async fn a_control_frame_over_125_bytes_closes_with_1002() {
    closes_with(&[frame(FIN | PING, &[b'x'; 126])], PROTOCOL_ERROR).await;
}
