//! Reads a client's WebSocket frames (RFC 6455) into messages, answering its pings and
//! its close, and inflating what it compressed (permessage-deflate, RFC 7692).
//!
//! Written here rather than taken from tungstenite: an idle connection then holds no
//! read buffer at all (tungstenite keeps one for the connection's life, grown to the
//! largest frame read, and its stream state behind a lock the write half shares), and
//! a message's buffer lives only while the message is read. Frames switchboard sends
//! are written by [`super::websocket::WsSink`], so the two halves share nothing but the
//! socket ([`SharedSocket`]).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use switchboard_protocol::Disconnect;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

use super::deflate::{self, InflateError};
use super::socket::SharedSocket;
use super::upgrade;
use super::websocket::{control_frame, BINARY, CLOSE, CONTINUATION, MAX_CONTROL, PING, PONG, TEXT};

/// Bytes read from the socket at a time, into the stack: what a read brings past the
/// message it completes is kept, the rest of the buffer is not.
const READ_CHUNK: usize = 4096;
/// Room made at once for a data frame's payload: the frame's length up to this much
/// (a header may announce a length it never sends).
const RESERVE_AT_ONCE: usize = 64 * 1024;

/// The frame being read, once its header is.
#[derive(Clone, Copy)]
struct Frame {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes still to read.
    remaining: u64,
    /// Payload bytes read (where the mask continues).
    read: usize,
}

/// The data message being gathered from its frames.
#[derive(Clone, Copy)]
struct Gathering {
    /// Its first frame's opcode: text or binary.
    opcode: u8,
    /// Compressed (RSV1 on its first frame).
    compressed: bool,
    /// How much of an uncompressed text message's bytes are known to be valid UTF-8:
    /// invalid text fails as soon as its bad byte arrives.
    valid: usize,
}

/// What a complete frame or message is.
#[derive(Clone, Copy)]
enum Read {
    Message { opcode: u8, compressed: bool },
    Control { opcode: u8 },
}

/// A client's messages, read from the socket a switchboard writer shares.
pub(crate) struct FrameReader<S = upgrade::Socket> {
    socket: SharedSocket<S>,
    /// What is under way: a frame, a message or a reply cut short by the end of what
    /// the socket had. Boxed, and only while there is some: an idle connection's reader
    /// is a few words.
    partial: Option<Box<Partial>>,
    /// The largest message (compressed, and inflated); 32 bits keep the reader at
    /// three words.
    max: u32,
    /// Whether the client may compress (permessage-deflate was negotiated).
    deflate: bool,
    /// A close frame was read, or the stream failed: nothing more is read.
    done: bool,
    /// A reply was taken, and must be flushed (what the socket did not take of it is
    /// kept aside until then).
    flushing: bool,
}

/// The reading state between two reads.
#[derive(Default)]
struct Partial {
    /// The header of the frame being read, as far as it came.
    head: [u8; 14],
    head_len: u8,
    frame: Option<Frame>,
    message: Option<Gathering>,
    /// The payload of the data message being gathered.
    data: Vec<u8>,
    /// The payload of the control frame being read.
    control: Vec<u8>,
    /// Bytes read past the last message returned (a client that sent several at once).
    rest: Vec<u8>,
    /// A pong or close reply the socket did not take yet.
    reply: Vec<u8>,
}

impl Partial {
    /// Whether nothing is under way.
    fn is_empty(&self) -> bool {
        self.head_len == 0
            && self.frame.is_none()
            && self.message.is_none()
            && self.rest.is_empty()
            && self.reply.is_empty()
    }

    /// Parses `input` until a message or a control frame is complete. Returns how much
    /// of `input` it took, and what completed, if anything.
    fn parse(
        &mut self,
        input: &[u8],
        deflate: bool,
        max: usize,
    ) -> Result<(usize, Option<Read>), Disconnect> {
        let mut at = 0;
        loop {
            let mut frame = match self.frame {
                Some(frame) => frame,
                None => {
                    let Some(frame) = self.parse_header(input, &mut at, deflate, max)? else {
                        return Ok((at, None));
                    };
                    frame
                }
            };
            let available = input.len() - at;
            let take = usize::try_from(frame.remaining).map_or(available, |r| r.min(available));
            let control = frame.opcode >= CLOSE;
            let into = if control {
                &mut self.control
            } else {
                &mut self.data
            };
            let from = into.len();
            into.extend_from_slice(&input[at..at + take]);
            unmask(&mut into[from..], frame.mask, frame.read);
            at += take;
            frame.read += take;
            frame.remaining -= take as u64;
            if let Some(g) = self.message.as_mut().filter(|g| !control && !g.compressed) {
                if g.opcode == TEXT {
                    g.valid = check_utf8(&self.data, g.valid)?;
                }
            }
            if frame.remaining > 0 {
                self.frame = Some(frame);
                return Ok((at, None));
            }
            self.frame = None;
            if control {
                return Ok((
                    at,
                    Some(Read::Control {
                        opcode: frame.opcode,
                    }),
                ));
            }
            if frame.fin {
                let Some(g) = self.message.take() else {
                    return Err(Disconnect::PROTOCOL_ERROR);
                };
                if g.opcode == TEXT && !g.compressed && g.valid != self.data.len() {
                    // The message ends inside a character.
                    return Err(Disconnect::INVALID_PAYLOAD);
                }
                return Ok((
                    at,
                    Some(Read::Message {
                        opcode: g.opcode,
                        compressed: g.compressed,
                    }),
                ));
            }
        }
    }

    /// Reads a frame header from `input[*at..]` as far as it goes; the frame once its
    /// header is whole and valid.
    fn parse_header(
        &mut self,
        input: &[u8],
        at: &mut usize,
        deflate: bool,
        max: usize,
    ) -> Result<Option<Frame>, Disconnect> {
        let mut need = 2;
        loop {
            let have = usize::from(self.head_len);
            if have >= 2 {
                let ext = match self.head[1] & 0x7F {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                // Every client frame is masked (RFC 6455 §5.1): 4 bytes of key.
                need = 2 + ext + 4;
            }
            if have >= need {
                break;
            }
            let take = (need - have).min(input.len() - *at);
            if take == 0 {
                return Ok(None);
            }
            self.head[have..have + take].copy_from_slice(&input[*at..*at + take]);
            self.head_len += take as u8;
            *at += take;
        }
        self.head_len = 0;
        let [b0, b1, ..] = self.head;
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x30 != 0 || b1 & 0x80 == 0 {
            // RSV2 or RSV3 (no extension defines them), or an unmasked frame.
            return Err(Disconnect::PROTOCOL_ERROR);
        }
        let (len, mask_at) = match b1 & 0x7F {
            126 => (
                u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                4,
            ),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(Disconnect::PROTOCOL_ERROR);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.head[mask_at..mask_at + 4]);
        match opcode {
            CONTINUATION => {
                if self.message.is_none() || rsv1 {
                    return Err(Disconnect::PROTOCOL_ERROR);
                }
            }
            TEXT | BINARY => {
                if self.message.is_some() || (rsv1 && !deflate) {
                    return Err(Disconnect::PROTOCOL_ERROR);
                }
                self.message = Some(Gathering {
                    opcode,
                    compressed: rsv1,
                    valid: 0,
                });
            }
            CLOSE | PING | PONG => {
                if !fin || rsv1 || len > MAX_CONTROL as u64 {
                    return Err(Disconnect::PROTOCOL_ERROR);
                }
            }
            _ => return Err(Disconnect::PROTOCOL_ERROR),
        }
        if opcode < CLOSE {
            let total = (self.data.len() as u64).saturating_add(len);
            if total > max as u64 {
                return Err(Disconnect::MESSAGE_TOO_LARGE);
            }
            // Bounded by the size limit just checked. A message's first frame gets
            // exactly its room; later frames grow it by doubling, or a message sent in
            // many small fragments would be copied once per fragment.
            let more = (len as usize).min(RESERVE_AT_ONCE);
            if self.data.is_empty() {
                self.data.reserve_exact(more);
            } else {
                self.data.reserve(more);
            }
        }
        Ok(Some(Frame {
            opcode,
            fin,
            mask,
            remaining: len,
            read: 0,
        }))
    }

    /// What a complete frame or message stands for, its payload taken (a pong or a
    /// close's answer left in `reply`).
    fn complete(&mut self, read: Read, max: usize) -> Result<Message, Disconnect> {
        match read {
            Read::Message { opcode, compressed } => {
                let mut data = std::mem::take(&mut self.data);
                if compressed {
                    data = deflate::inflate(data, max).map_err(|e| match e {
                        InflateError::TooLarge => Disconnect::MESSAGE_TOO_LARGE,
                        InflateError::Invalid => Disconnect::PROTOCOL_ERROR,
                    })?;
                }
                if opcode == BINARY {
                    return Ok(Message::Binary(Bytes::from(data)));
                }
                Utf8Bytes::try_from(data)
                    .map(Message::Text)
                    .map_err(|_| Disconnect::INVALID_PAYLOAD)
            }
            Read::Control { opcode } => {
                let payload = std::mem::take(&mut self.control);
                match opcode {
                    PING => {
                        self.reply = control_frame(PONG, &payload);
                        Ok(Message::Ping(Bytes::new()))
                    }
                    PONG => Ok(Message::Pong(Bytes::new())),
                    _ => {
                        let close = close_frame(&payload)?;
                        // Answered with the client's own code (RFC 6455 §5.5.1).
                        self.reply = match &close {
                            Some(c) if !c.code.is_allowed() => {
                                let code = u16::from(CloseCode::Protocol).to_be_bytes();
                                control_frame(CLOSE, &code)
                            }
                            Some(c) => control_frame(CLOSE, &u16::from(c.code).to_be_bytes()),
                            None => control_frame(CLOSE, &[]),
                        };
                        Ok(Message::Close(close))
                    }
                }
            }
        }
    }
}

impl<S> FrameReader<S> {
    /// Reads `socket`; messages are limited to `max` bytes, compressed ones accepted
    /// when `deflate` was negotiated.
    pub(crate) fn new(socket: SharedSocket<S>, deflate: bool, max: usize) -> Self {
        Self {
            socket,
            partial: None,
            max: u32::try_from(max).unwrap_or(u32::MAX),
            deflate,
            done: false,
            flushing: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameReader<S> {
    /// Writes the reply the socket has not taken yet, if any.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(p) = self.partial.as_mut().filter(|p| !p.reply.is_empty()) {
            // The socket takes a whole frame or none of it.
            ready!(Pin::new(&mut self.socket).poll_write(cx, &p.reply))?;
            p.reply = Vec::new();
            self.flushing = true;
        }
        // Not waited for: reading goes on while the socket is full (the reader is woken
        // when it takes more, and flushes then), and what is kept aside is bounded.
        if self.flushing && Pin::new(&mut self.socket).poll_flush(cx)?.is_ready() {
            self.flushing = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads until a message or a control frame is complete, parsing in `p`.
    fn poll_read_next(
        &mut self,
        p: &mut Partial,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Message, Disconnect>> {
        loop {
            if !p.rest.is_empty() {
                let mut rest = std::mem::take(&mut p.rest);
                let (used, read) = p.parse(&rest, self.deflate, self.max as usize)?;
                rest.drain(..used);
                if !rest.is_empty() {
                    p.rest = rest;
                }
                if let Some(read) = read {
                    return Poll::Ready(p.complete(read, self.max as usize));
                }
                continue;
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut buf = ReadBuf::new(&mut chunk);
            if ready!(Pin::new(&mut self.socket).poll_read(cx, &mut buf)).is_err() {
                return Poll::Ready(Err(Disconnect::CONNECTION_CLOSED));
            }
            let filled = buf.filled();
            if filled.is_empty() {
                // The client went away without a close frame: there is no one to tell.
                return Poll::Ready(Err(Disconnect::CONNECTION_CLOSED));
            }
            let (used, read) = p.parse(filled, self.deflate, self.max as usize)?;
            if used < filled.len() {
                p.rest.extend_from_slice(&filled[used..]);
            }
            if let Some(read) = read {
                return Poll::Ready(p.complete(read, self.max as usize));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for FrameReader<S> {
    /// A message, a ping or pong (payload not kept: switchboard only meters them), the
    /// client's close; or the disconnect a broken rule or a lost connection stands for.
    type Item = Result<Message, Disconnect>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // A reply goes out before anything more is read: a client that sends pings but
        // does not read is not answered more than the socket holds.
        if ready!(this.poll_reply(cx)).is_err() {
            this.done = true;
            this.partial = None;
            return Poll::Ready(Some(Err(Disconnect::CONNECTION_CLOSED)));
        }
        if this.done {
            // The close's answer is the last thing the reader writes: it ends once the
            // socket took all of it.
            if this.flushing && ready!(Pin::new(&mut this.socket).poll_flush(cx)).is_ok() {
                this.flushing = false;
            }
            return Poll::Ready(None);
        }
        // Parsed on the stack, and boxed only if something is left under way: most
        // messages come whole in one read.
        let mut p = this.partial.take().map(|p| *p).unwrap_or_default();
        let next = this.poll_read_next(&mut p, cx);
        if !p.is_empty() {
            this.partial = Some(Box::new(p));
        }
        let next = ready!(next);
        match &next {
            Err(_) => {
                this.done = true;
                // What was being read goes back at once.
                this.partial = None;
            }
            Ok(Message::Close(_)) => {
                this.done = true;
                // The answer goes out now: the session may be slow to ask again.
                let _ = this.poll_reply(cx);
            }
            Ok(Message::Ping(_)) => {
                let _ = this.poll_reply(cx);
            }
            Ok(_) => {}
        }
        Poll::Ready(Some(next))
    }
}

/// Unmasks `data`, the payload of a frame from byte `offset` on.
fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

/// How much of `data` is valid UTF-8, given that `valid` bytes of it were: an error
/// for an invalid sequence, not for a character cut at the end (more may come).
fn check_utf8(data: &[u8], valid: usize) -> Result<usize, Disconnect> {
    match std::str::from_utf8(&data[valid..]) {
        Ok(_) => Ok(data.len()),
        Err(e) if e.error_len().is_none() => Ok(valid + e.valid_up_to()),
        Err(_) => Err(Disconnect::INVALID_PAYLOAD),
    }
}

/// A close frame's payload as the frame it is: none for an empty payload, an error
/// for one of a single byte or with a reason that is not UTF-8.
fn close_frame(payload: &[u8]) -> Result<Option<CloseFrame>, Disconnect> {
    match payload {
        [] => Ok(None),
        [_] => Err(Disconnect::PROTOCOL_ERROR),
        [hi, lo, reason @ ..] => {
            let reason = std::str::from_utf8(reason).map_err(|_| Disconnect::INVALID_PAYLOAD)?;
            Ok(Some(CloseFrame {
                code: CloseCode::from(u16::from_be_bytes([*hi, *lo])),
                reason: reason.into(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    /// A client's frame: first byte `b0` (FIN, RSV, opcode), masked `payload`.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&MASK);
        let from = f.len();
        f.extend_from_slice(payload);
        unmask(&mut f[from..], MASK, 0);
        f
    }

    fn reader(capacity: usize, max: usize) -> (FrameReader<DuplexStream>, DuplexStream) {
        let (server, client) = tokio::io::duplex(capacity);
        (
            FrameReader::new(SharedSocket::new(server), false, max),
            client,
        )
    }

    async fn next(r: &mut FrameReader<DuplexStream>) -> Option<Result<Message, Disconnect>> {
        tokio::time::timeout(Duration::from_secs(5), r.next())
            .await
            .expect("the reader answers")
    }

    /// A socket that hands over one byte at a time: headers and payloads cut anywhere,
    /// a ping between a message's frames; the pong and the close's answer come back.
    #[tokio::test]
    async fn frames_cut_anywhere_read_whole_and_pings_and_closes_are_answered() {
        let (mut r, mut client) = reader(1, 1 << 20);
        let long = "é".repeat(200);
        let sent = [
            client_frame(0x01, b"hel"),
            client_frame(0x89, b"are you there"),
            client_frame(0x80, b"lo"),
            client_frame(0x82, &[0, 1, 2]),
            client_frame(0x81, long.as_bytes()),
            client_frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e']),
        ]
        .concat();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        assert_eq!(next(&mut r).await, Some(Ok(Message::Ping(Bytes::new()))));
        assert_eq!(next(&mut r).await, Some(Ok(Message::text("hello"))));
        assert_eq!(next(&mut r).await, Some(Ok(Message::binary(vec![0, 1, 2]))));
        assert_eq!(next(&mut r).await, Some(Ok(Message::text(long))));
        let Some(Ok(Message::Close(Some(close)))) = next(&mut r).await else {
            panic!("a close frame");
        };
        assert_eq!(u16::from(close.code), 1000);
        assert_eq!(close.reason.as_str(), "bye");
        assert_eq!(next(&mut r).await, None);
        drop(r);
        let back = writer.await.unwrap();
        let pong = [&[0x8A, 13][..], b"are you there"].concat();
        assert_eq!(back, [&pong[..], &[0x88, 2, 0x03, 0xE8]].concat());
    }

    #[tokio::test]
    async fn messages_sent_together_are_read_one_by_one() {
        let (mut r, mut client) = reader(1 << 16, 1 << 20);
        let sent: Vec<u8> = (0..50)
            .flat_map(|i| client_frame(0x81, format!("m{i}").as_bytes()))
            .collect();
        client.write_all(&sent).await.unwrap();
        for i in 0..50 {
            assert_eq!(next(&mut r).await, Some(Ok(Message::text(format!("m{i}")))));
        }
        assert!(r.partial.is_none(), "nothing kept between messages");
    }

    /// What each broken rule ends the connection with; invalid UTF-8 fails before the
    /// rest of its frame arrives.
    #[tokio::test]
    async fn broken_rules_end_the_stream_with_their_disconnect() {
        let mut unmasked = client_frame(0x81, b"x");
        unmasked[1] &= 0x7F;
        let mut bad_text = client_frame(0x81, &[b'a'; 100]);
        bad_text[2 + 4 + 1] = 0xFF ^ MASK[1];
        bad_text.truncate(2 + 4 + 10);
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        huge.extend_from_slice(&MASK);
        let cases: [(Vec<u8>, Disconnect); 10] = [
            (unmasked, Disconnect::PROTOCOL_ERROR),
            (bad_text, Disconnect::INVALID_PAYLOAD),
            (huge, Disconnect::MESSAGE_TOO_LARGE),
            (
                client_frame(0x82, &[0; 2000]),
                Disconnect::MESSAGE_TOO_LARGE,
            ),
            (client_frame(0x80, b"x"), Disconnect::PROTOCOL_ERROR),
            (client_frame(0xC1, b"x"), Disconnect::PROTOCOL_ERROR),
            (client_frame(0xA1, b"x"), Disconnect::PROTOCOL_ERROR),
            (client_frame(0x83, b"x"), Disconnect::PROTOCOL_ERROR),
            (client_frame(0x89, &[0; 126]), Disconnect::PROTOCOL_ERROR),
            (client_frame(0x88, &[3]), Disconnect::PROTOCOL_ERROR),
        ];
        for (i, (sent, want)) in cases.into_iter().enumerate() {
            let (mut r, mut client) = reader(1 << 16, 1000);
            client.write_all(&sent).await.unwrap();
            assert_eq!(next(&mut r).await, Some(Err(want)), "case {i}");
            assert_eq!(next(&mut r).await, None, "case {i}");
        }
        // A text message that ends inside a character.
        let (mut r, mut client) = reader(1 << 16, 1000);
        let cut = &"é".as_bytes()[..1];
        client.write_all(&client_frame(0x81, cut)).await.unwrap();
        assert_eq!(next(&mut r).await, Some(Err(Disconnect::INVALID_PAYLOAD)));
    }

    /// A message in a thousand one-byte fragments grows its buffer by doubling, not
    /// by one copy per fragment, and comes whole.
    #[tokio::test]
    async fn many_small_fragments_grow_the_message_by_doubling() {
        let (mut r, mut client) = reader(1 << 16, 1 << 20);
        let mut sent = client_frame(0x01, b"a");
        for _ in 1..1000 {
            sent.extend(client_frame(0x00, b"a"));
        }
        client.write_all(&sent).await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(100), r.next()).await;
        assert!(pending.is_err(), "the message is not complete yet");
        let data = &r.partial.as_ref().expect("a message under way").data;
        assert_eq!(data.len(), 1000);
        assert!(data.capacity() > data.len(), "grown by doubling");
        client.write_all(&client_frame(0x80, b"a")).await.unwrap();
        assert_eq!(
            next(&mut r).await,
            Some(Ok(Message::text("a".repeat(1001))))
        );
    }

    /// Random messages, some fragmented with pings between their fragments, written in
    /// chunks of random sizes: read back exactly, in order.
    #[tokio::test]
    async fn random_messages_in_random_chunks_read_back_exactly() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let (mut r, mut client) = reader(1 << 16, 1 << 20);
        let mut want = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..300 {
            let len = rng.random_range(0..2000);
            let text = rng.random_bool(0.5);
            let payload: Vec<u8> = if text {
                (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect()
            } else {
                (0..len).map(|_| rng.random()).collect()
            };
            let pieces = rng.random_range(1..5).min(len.max(1));
            let mut at = 0;
            for i in 0..pieces {
                let last = i + 1 == pieces;
                let end = if last {
                    len
                } else {
                    rng.random_range(at..=len)
                };
                let opcode = if i > 0 {
                    0x0
                } else if text {
                    0x1
                } else {
                    0x2
                };
                let fin = if last { 0x80 } else { 0 };
                sent.extend(client_frame(fin | opcode, &payload[at..end]));
                // A ping between a message's fragments comes out before the message.
                if !last && rng.random_bool(0.3) {
                    sent.extend(client_frame(0x89, b"p"));
                    want.push(Message::Ping(Bytes::new()));
                }
                at = end;
            }
            want.push(if text {
                Message::text(String::from_utf8(payload).unwrap())
            } else {
                Message::binary(payload)
            });
        }
        let chunks: Vec<Vec<u8>> = {
            let mut chunks = Vec::new();
            let mut rest = &sent[..];
            while !rest.is_empty() {
                let n = rng.random_range(1..700).min(rest.len());
                chunks.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
            chunks
        };
        let writer = tokio::spawn(async move {
            for c in chunks {
                client.write_all(&c).await.unwrap();
                client.flush().await.unwrap();
            }
            // Reads the pongs, so the reader's replies never fill the pipe.
            let mut back = Vec::new();
            let _ = client.read_to_end(&mut back).await;
        });
        for (i, w) in want.into_iter().enumerate() {
            assert_eq!(next(&mut r).await, Some(Ok(w)), "message {i}");
        }
        drop(r);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_close_with_a_code_no_one_may_send_is_answered_with_1002() {
        let (mut r, mut client) = reader(1 << 16, 1000);
        client
            .write_all(&client_frame(0x88, &1005u16.to_be_bytes()))
            .await
            .unwrap();
        assert!(matches!(next(&mut r).await, Some(Ok(Message::Close(_)))));
        drop(r);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, [0x88, 2, 0x03, 0xEA]);
    }
}
