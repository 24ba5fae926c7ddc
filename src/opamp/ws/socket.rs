//! One WebSocket connection's frames, server side (RFC 6455): reads whole messages holding no
//! buffer while the peer is silent, and writes each frame with one write.
//!
//! A read lands on the stack first; only what outlives the read is copied to the heap, sized
//! exactly: a message's payload, a frame still arriving, bytes of the next frame read with this
//! one. An idle connection therefore holds none (ADR 0072). All read state lives in [`Socket`],
//! so a read cancelled by another branch of a `select!` loses nothing.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

pub use super::wire::{Frame, ReadError};
use super::wire::{Header, MAX_HEADER, OpCode, parse_header, unmask};

/// The most one read takes, onto the stack or into a large frame's own buffer: a heartbeat or a
/// status change arrives whole. The socket's meter charges a read to the message budget once it
/// has come, so a connection holds at most this much beyond the budget (ADR 0021).
pub const READ_CHUNK: usize = 4096;

/// The most a frame still arriving reserves before its bytes come; beyond it the buffer grows as
/// they do (doubling, so a large message is copied about once more in all).
const FIRST_ROOM: usize = 64 * 1024;

/// What one read brings to the session.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A whole binary message, its fragments joined.
    Binary(Bytes),
    /// The start of a text message (OpAMP has none: the session closes).
    Text,
    /// A ping, to be answered with a pong carrying its payload.
    Ping(Bytes),
    Pong,
    /// The peer's Close, with its code if it gave one; nothing is read after it.
    Close(Option<u16>),
}

/// A frame whose payload is still arriving, into a buffer that grows as its bytes come (they are
/// charged to the message budget as they do). Only what has arrived is written.
struct Arriving {
    header: Header,
    payload: Vec<u8>,
}

/// A data message whose later fragments are still to come.
struct Fragments {
    payload: Vec<u8>,
}

pub struct Socket<S> {
    io: S,
    /// The largest message taken, in bytes.
    limit: usize,
    /// Bytes read past the last whole frame: empty, and unallocated, nearly always.
    carry: Vec<u8>,
    arriving: Option<Box<Arriving>>,
    fragments: Option<Box<Fragments>>,
    /// The peer's Close has been read: nothing more is.
    peer_closed: bool,
    /// A read failed: what was being read is dropped, and nothing more is read.
    failed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    pub fn new(io: S, limit: usize) -> Self {
        Self {
            io,
            limit,
            carry: Vec::new(),
            arriving: None,
            fragments: None,
            peer_closed: false,
            failed: false,
        }
    }

    /// The next message; `None` once the peer has closed, by a Close or by ending the stream
    /// between frames. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<Message, ReadError>> {
        poll_fn(|cx| self.poll_recv(cx)).await.transpose()
    }

    /// Sends one encoded frame and flushes it.
    pub async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.io.write_all(frame).await?;
        self.io.flush().await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>, ReadError>> {
        if self.failed {
            return self.poll_discard(cx);
        }
        let polled = self.poll_frames(cx);
        if let Poll::Ready(Err(_)) = polled {
            // The message is abandoned: its bytes go now, as its budget hold just went (ADR
            // 0021), not when the session has closed.
            self.failed = true;
            self.arriving = None;
            self.fragments = None;
            self.carry = Vec::new();
        }
        polled
    }

    /// After a failed read: drops what the peer has sent so far, so that closing the socket sends
    /// a FIN after our Close rather than a reset that could discard it, and reads nothing more
    /// (the stream is out of step with its frames).
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>, ReadError>> {
        loop {
            let mut stack = [MaybeUninit::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                _ => return Poll::Ready(Ok(None)),
            }
        }
    }

    fn poll_frames(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>, ReadError>> {
        if self.peer_closed {
            return Poll::Ready(Ok(None));
        }
        loop {
            if let Some(arriving) = &mut self.arriving {
                let want = usize::try_from(arriving.header.len).unwrap_or(usize::MAX);
                if arriving.payload.len() < want {
                    let read = ready!(read_onto(&mut self.io, cx, &mut arriving.payload, want))?;
                    if read == 0 {
                        return Poll::Ready(Err(eof_in_frame()));
                    }
                    continue;
                }
                let Some(arriving) = self.arriving.take() else {
                    continue;
                };
                let Arriving {
                    header,
                    mut payload,
                } = *arriving;
                unmask(&mut payload, header.mask);
                if let Some(message) = self.on_frame(header, Payload::Owned(payload))? {
                    return Poll::Ready(Ok(Some(message)));
                }
                continue;
            }
            // Frames already read, if any, come first.
            if !self.carry.is_empty() {
                let carried = std::mem::take(&mut self.carry);
                match self.take_frames(&carried)? {
                    Taken::Message(message, used) => {
                        self.keep(&carried[used..]);
                        return Poll::Ready(Ok(Some(message)));
                    }
                    Taken::All => {}
                    Taken::Incomplete(used) => {
                        // A header cut short: it waits, with the next read appended.
                        self.carry = carried;
                        self.carry.drain(..used);
                        let read = ready!(self.poll_read_carry(cx))?;
                        if read == 0 {
                            return Poll::Ready(Err(eof_in_frame()));
                        }
                        continue;
                    }
                }
                continue;
            }
            // Not zeroed first: this runs on every wake of the session, and only what the read
            // fills is looked at.
            let mut stack = [MaybeUninit::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let read = buf.filled();
            if read.is_empty() {
                if self.fragments.is_some() {
                    return Poll::Ready(Err(eof_in_frame()));
                }
                return Poll::Ready(Ok(None));
            }
            match self.take_frames(read)? {
                Taken::Message(message, used) => {
                    self.keep(&read[used..]);
                    return Poll::Ready(Ok(Some(message)));
                }
                Taken::All => {}
                Taken::Incomplete(used) => self.keep(&read[used..]),
            }
        }
    }

    /// Reads onto the end of `carry` (a header split across reads).
    fn poll_read_carry(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = self.carry.len() + MAX_HEADER;
        read_onto(&mut self.io, cx, &mut self.carry, want)
    }

    /// Keeps bytes read past what was handled, for the next read.
    fn keep(&mut self, rest: &[u8]) {
        if !rest.is_empty() {
            self.carry.reserve_exact(rest.len());
            self.carry.extend_from_slice(rest);
        }
    }

    /// Handles the frames at the front of `input` until one makes a message, or a frame is cut
    /// short (its payload then arrives into a buffer of its own).
    fn take_frames(&mut self, input: &[u8]) -> Result<Taken, ReadError> {
        let mut at = 0;
        while at < input.len() {
            let Some((header, header_len)) = parse_header(&input[at..])? else {
                return Ok(Taken::Incomplete(at));
            };
            self.check_size(&header)?;
            at += header_len;
            let available = input.len() - at;
            let len = usize::try_from(header.len).unwrap_or(usize::MAX);
            if len > available {
                // Room for the whole frame only up to a point: a length is only a claim, and a
                // peer claiming the limit many times over must not reserve it many times over.
                let mut payload = Vec::with_capacity(len.min(FIRST_ROOM));
                payload.extend_from_slice(&input[at..]);
                self.arriving = Some(Box::new(Arriving { header, payload }));
                return Ok(Taken::All);
            }
            let frame = &input[at..at + len];
            at += len;
            if let Some(message) = self.on_frame(header, Payload::Borrowed(frame))? {
                return Ok(Taken::Message(message, at));
            }
        }
        Ok(Taken::All)
    }

    /// Refuses a data frame that would take its message past the limit, before its payload is
    /// read.
    fn check_size(&self, header: &Header) -> Result<(), ReadError> {
        if header.opcode.is_control() {
            return Ok(());
        }
        let so_far = self.fragments.as_ref().map_or(0, |f| f.payload.len()) as u64;
        let size = so_far.saturating_add(header.len);
        if size > self.limit as u64 {
            return Err(ReadError::TooBig {
                size,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// One whole frame; a message when it completes one.
    fn on_frame(
        &mut self,
        header: Header,
        payload: Payload<'_>,
    ) -> Result<Option<Message>, ReadError> {
        if matches!(header.opcode, OpCode::Text | OpCode::Binary) && self.fragments.is_some() {
            return Err(ReadError::Protocol("a new message inside a fragmented one"));
        }
        let message = match header.opcode {
            OpCode::Ping => Message::Ping(payload.into_bytes(header.mask)),
            OpCode::Pong => Message::Pong,
            OpCode::Close => {
                let payload = payload.into_bytes(header.mask);
                let code = match payload.as_ref() {
                    [] => None,
                    [_] => return Err(ReadError::Protocol("a Close frame of one byte")),
                    [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
                };
                self.peer_closed = true;
                Message::Close(code)
            }
            OpCode::Text => Message::Text,
            OpCode::Binary if header.fin => Message::Binary(payload.into_bytes(header.mask)),
            OpCode::Binary => {
                self.fragments = Some(Box::new(Fragments {
                    payload: payload.into_vec(header.mask),
                }));
                return Ok(None);
            }
            OpCode::Continuation => {
                let Some(fragments) = &mut self.fragments else {
                    return Err(ReadError::Protocol("a continuation with no message begun"));
                };
                payload.append_to(&mut fragments.payload, header.mask);
                if !header.fin {
                    return Ok(None);
                }
                let whole = self.fragments.take().map(|f| f.payload).unwrap_or_default();
                Message::Binary(Bytes::from(whole))
            }
        };
        Ok(Some(message))
    }
}

/// What [`Socket::take_frames`] did with its input.
enum Taken {
    /// A message, and how many bytes of the input made it and the frames before it.
    Message(Message, usize),
    /// Every byte was handled (a frame still arriving holds the last of them).
    All,
    /// The input from this offset on is a header cut short.
    Incomplete(usize),
}

/// A whole frame's payload: still masked on the stack, or unmasked in a buffer of its own.
enum Payload<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Payload<'_> {
    fn into_vec(self, mask: [u8; 4]) -> Vec<u8> {
        match self {
            Payload::Borrowed(masked) => {
                let mut payload = masked.to_vec();
                unmask(&mut payload, mask);
                payload
            }
            Payload::Owned(payload) => payload,
        }
    }

    fn into_bytes(self, mask: [u8; 4]) -> Bytes {
        Bytes::from(self.into_vec(mask))
    }

    fn append_to(self, out: &mut Vec<u8>, mask: [u8; 4]) {
        match self {
            Payload::Borrowed(masked) => {
                let from = out.len();
                out.extend_from_slice(masked);
                unmask(&mut out[from..], mask);
            }
            Payload::Owned(payload) => out.extend_from_slice(&payload),
        }
    }
}

/// Reads onto the end of `buf`, at most [`READ_CHUNK`] bytes and never past `want` bytes in all;
/// how many bytes came. Only the room one read may fill is zeroed first, so room reserved for
/// bytes still to come is never written.
fn read_onto<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut Vec<u8>,
    want: usize,
) -> Poll<io::Result<usize>> {
    let len = buf.len();
    buf.resize(want.min(len + READ_CHUNK), 0);
    let mut read = ReadBuf::new(&mut buf[len..]);
    let polled = Pin::new(io).poll_read(cx, &mut read);
    let came = match polled {
        Poll::Ready(Ok(())) => read.filled().len(),
        _ => 0,
    };
    buf.truncate(len + came);
    polled.map_ok(|()| came)
}

fn eof_in_frame() -> ReadError {
    ReadError::Io(io::ErrorKind::UnexpectedEof.into())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    use super::*;

    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    /// A client frame: masked, unless `masked` is false.
    fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![first];
        let bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            len @ 0..=125 => out.push(bit | len as u8),
            len @ 126..=0xFFFF => {
                out.push(bit | 0x7E);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(bit | 0x7F);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let mut body = payload.to_vec();
        if masked {
            out.extend_from_slice(&MASK);
            unmask(&mut body, MASK);
        }
        out.extend_from_slice(&body);
        out
    }

    fn binary(payload: &[u8]) -> Vec<u8> {
        client_frame(0x82, payload, true)
    }

    fn pair(limit: usize) -> (Socket<DuplexStream>, DuplexStream) {
        let (server, client) = duplex(1 << 20);
        (Socket::new(server, limit), client)
    }

    /// Whether the socket holds no buffer at all.
    fn holds_nothing(socket: &Socket<DuplexStream>) -> bool {
        socket.carry.capacity() == 0 && socket.arriving.is_none() && socket.fragments.is_none()
    }

    async fn next(socket: &mut Socket<DuplexStream>) -> Result<Message, ReadError> {
        socket.recv().await.expect("a message, not the end")
    }

    /// Reads `expected`, in order, and finds nothing held afterwards.
    async fn reads(socket: &mut Socket<DuplexStream>, expected: &[Message]) {
        for message in expected {
            assert_eq!(&next(socket).await.unwrap(), message);
        }
        assert!(holds_nothing(socket));
    }

    #[tokio::test]
    async fn a_whole_message_leaves_no_buffer_behind() {
        let (mut socket, mut client) = pair(1 << 16);
        client.write_all(&binary(b"hello")).await.unwrap();
        reads(
            &mut socket,
            &[Message::Binary(Bytes::from_static(b"hello"))],
        )
        .await;
    }

    #[tokio::test]
    async fn a_message_one_byte_at_a_time_and_a_large_one() {
        let (mut socket, mut client) = pair(1 << 20);
        let large: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut wire = binary(b"slow");
        wire.extend(binary(&large));
        let writer = tokio::spawn(async move {
            for byte in wire {
                client.write_all(&[byte]).await.unwrap();
                client.flush().await.unwrap();
            }
            client
        });
        assert_eq!(
            next(&mut socket).await.unwrap(),
            Message::Binary(Bytes::from_static(b"slow"))
        );
        assert_eq!(
            next(&mut socket).await.unwrap(),
            Message::Binary(large.into())
        );
        assert!(holds_nothing(&socket));
        drop(writer.await.unwrap());
        assert!(
            socket.recv().await.is_none(),
            "the stream ended between frames"
        );
    }

    #[tokio::test]
    async fn pipelined_messages_come_one_at_a_time_in_order() {
        let (mut socket, mut client) = pair(1 << 16);
        let mut wire = binary(b"one");
        wire.extend(binary(b"two"));
        wire.extend(client_frame(0x89, b"ping", true));
        client.write_all(&wire).await.unwrap();
        reads(
            &mut socket,
            &[
                Message::Binary(Bytes::from_static(b"one")),
                Message::Binary(Bytes::from_static(b"two")),
                Message::Ping(Bytes::from_static(b"ping")),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn fragments_are_joined_around_a_ping() {
        let (mut socket, mut client) = pair(1 << 16);
        let mut wire = client_frame(0x02, b"ab", true);
        wire.extend(client_frame(0x89, b"p", true));
        wire.extend(client_frame(0x00, b"cd", true));
        wire.extend(client_frame(0x80, b"ef", true));
        client.write_all(&wire).await.unwrap();
        reads(
            &mut socket,
            &[
                Message::Ping(Bytes::from_static(b"p")),
                Message::Binary(Bytes::from_static(b"abcdef")),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn a_message_past_the_limit_is_refused_by_its_header() {
        let (mut socket, mut client) = pair(10);
        let mut wire = client_frame(0x02, b"123456", true);
        wire.extend(client_frame(0x80, b"78901", true));
        client.write_all(&wire).await.unwrap();
        assert!(matches!(
            next(&mut socket).await,
            Err(ReadError::TooBig {
                size: 11,
                limit: 10
            })
        ));
    }

    #[tokio::test]
    async fn broken_frames_are_protocol_errors() {
        let broken = [
            client_frame(0x82, b"x", false),
            client_frame(0xC2, b"x", true),
            client_frame(0x80, b"x", true),
            client_frame(0x83, b"x", true),
            client_frame(0x09, b"x", true),
            client_frame(0x89, &[0; 126], true),
            client_frame(0x88, b"x", true),
        ];
        for wire in broken {
            let (mut socket, mut client) = pair(1 << 16);
            client.write_all(&wire).await.unwrap();
            let read = next(&mut socket).await;
            assert!(
                matches!(read, Err(ReadError::Protocol(_))),
                "{wire:x?}: {read:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_failed_read_drops_the_message_begun_and_reads_no_more() {
        let (mut socket, mut client) = pair(1 << 16);
        let mut wire = client_frame(0x02, &[1; 100], true);
        wire.extend(client_frame(0x80, b"x", false));
        wire.extend(binary(b"after"));
        client.write_all(&wire).await.unwrap();
        assert!(matches!(
            next(&mut socket).await,
            Err(ReadError::Protocol(_))
        ));
        assert!(holds_nothing(&socket));
        assert!(
            socket.recv().await.is_none(),
            "nothing is read after a failure"
        );
    }

    #[tokio::test]
    async fn a_close_ends_reading_and_frames_go_out_whole() {
        let (mut socket, mut client) = pair(1 << 16);
        client
            .write_all(&client_frame(0x88, &1000u16.to_be_bytes(), true))
            .await
            .unwrap();
        assert_eq!(next(&mut socket).await.unwrap(), Message::Close(Some(1000)));
        assert!(socket.recv().await.is_none());
        socket
            .send(&Frame::Close(1001, "bye").encode())
            .await
            .unwrap();
        socket
            .send(&super::super::wire::binary(300, |out| {
                out.extend_from_slice(&[7; 300]);
            }))
            .await
            .unwrap();
        let mut out = vec![0; 2 + 2 + 3 + 4 + 300];
        client.read_exact(&mut out).await.unwrap();
        assert_eq!(&out[..7], &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        assert_eq!(&out[7..11], &[0x82, 126, 0x01, 0x2C]);
        assert!(out[11..].iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn a_claimed_length_reserves_little_before_its_bytes_come() {
        let (mut socket, mut client) = pair(1 << 30);
        let mut wire = vec![0x82, 0xFF];
        wire.extend_from_slice(&(1u64 << 29).to_be_bytes());
        wire.extend_from_slice(&MASK);
        wire.extend_from_slice(&[0; 10]);
        client.write_all(&wire).await.unwrap();
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(20), socket.recv()).await;
        assert!(waiting.is_err(), "ten bytes of half a GiB are no message");
        let arriving = socket.arriving.as_ref().expect("a frame under way");
        assert_eq!(arriving.payload.len(), 10);
        assert!(arriving.payload.capacity() <= FIRST_ROOM);
    }

    #[tokio::test]
    async fn a_read_cancelled_mid_frame_loses_nothing() {
        let (mut socket, mut client) = pair(1 << 16);
        let wire = binary(&[5; 1000]);
        client.write_all(&wire[..500]).await.unwrap();
        let cut_short =
            tokio::time::timeout(std::time::Duration::from_millis(20), socket.recv()).await;
        assert!(cut_short.is_err(), "half a frame is no message");
        client.write_all(&wire[500..]).await.unwrap();
        assert_eq!(
            next(&mut socket).await.unwrap(),
            Message::Binary(vec![5; 1000].into())
        );
    }
}
