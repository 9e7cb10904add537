//! permessage-deflate (RFC 7692): which offers switchboard accepts, compressing a
//! message, and inflating one (the server's frame reader inflates what a client
//! compressed). [`Io`] inflates under tungstenite, which knows no extension: the
//! benchmark's load clients read through it.
//!
//! switchboard always negotiates `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is compressed on its own, so one
//! compressed publication is shared by all its recipients (as its plain frame is), and
//! a connection holds no compressor or inflater between messages (a deflate context
//! with its 32 KiB window costs hundreds of KiB per connection in zlib, on idle
//! connections too). Both sides' window is 15 bits.

use std::cell::RefCell;
use std::io::Cursor;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::HeaderMap;
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The `Sec-WebSocket-Extensions` answer to an accepted offer.
pub(crate) const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What ends every compressed message's sync flush; RFC 7692 drops it on the wire.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether the request's `Sec-WebSocket-Extensions` offers permessage-deflate on terms
/// switchboard can keep: any offer, unless it limits the server's window below 15 bits
/// (switchboard compresses with a 32 KiB window) or names a parameter RFC 7692 does
/// not define.
pub(crate) fn offered(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(acceptable)
}

/// Whether one extension offer (`name; param; param=value`) is an acceptable
/// permessage-deflate offer.
fn acceptable(offer: &str) -> bool {
    let mut params = offer.split(';').map(str::trim);
    if params.next() != Some("permessage-deflate") {
        return false;
    }
    let mut seen = Vec::new();
    params.filter(|p| !p.is_empty()).all(|p| {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        // A parameter named twice makes the offer invalid (RFC 7692, 7.1).
        if seen.contains(&name) {
            return false;
        }
        seen.push(name);
        let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok());
        match name {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // The client may compress with any window: inflating takes them all.
            "client_max_window_bits" => {
                value.is_none() || bits(value).is_some_and(|b| (8..=15).contains(&b))
            }
            "server_max_window_bits" => bits(value) == Some(15),
            _ => false,
        }
    })
}

thread_local! {
    /// One compressor per thread, reset for every message: no context is taken over,
    /// so a compressor is only scratch space, and allocating one per message would
    /// cost more than compressing a small one.
    static COMPRESSOR: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
    /// One inflater per thread, reset for every message (`client_no_context_takeover`).
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `data` compressed as one permessage-deflate message at `level` (`None` only if the
/// compressor fails). Data that does not shrink comes out a few bytes longer (deflate
/// stores it): sending it so costs less than trying again for every recipient.
pub(crate) fn compress(data: &[u8], level: u32) -> Option<Bytes> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    COMPRESSOR.with_borrow_mut(|slot| {
        if !matches!(slot, Some((l, _)) if *l == level) {
            *slot = Some((level, Compress::new(Compression::new(level), false)));
        }
        let (_, c) = slot.as_mut()?;
        c.reset();
        let start = c.total_in();
        loop {
            let read = usize::try_from(c.total_in() - start).ok()?;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(64));
            }
            c.compress_vec(&data[read..], &mut out, FlushCompress::Sync)
                .ok()?;
            let read = usize::try_from(c.total_in() - start).ok()?;
            // Done when all input is in and the flush did not fill the output.
            if read == data.len() && out.len() < out.capacity() {
                return Some(());
            }
        }
    })?;
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Some(Bytes::from(out))
}

/// Why a compressed message could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InflateError {
    /// Inflated, the message is larger than `limits.max_message_size`.
    #[error("inflated message too large")]
    TooLarge,
    /// Not valid deflate data, or compressed frames out of order.
    #[error("invalid compressed message")]
    Invalid,
}

impl From<InflateError> for std::io::Error {
    fn from(e: InflateError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// `compressed` (one message's payload as it came, tail dropped) inflated, at most
/// `max` bytes.
pub(crate) fn inflate(mut compressed: Vec<u8>, max: usize) -> Result<Vec<u8>, InflateError> {
    compressed.extend_from_slice(&TAIL);
    INFLATER.with_borrow_mut(|slot| {
        let d = slot.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        let mut out = Vec::with_capacity((compressed.len() * 4).min(max) + 64);
        let start = d.total_in();
        let consumed = |d: &Decompress| usize::try_from(d.total_in() - start).ok();
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(InflateError::TooLarge);
                }
                out.reserve(out.capacity().max(64).min(max + 1 - out.len()));
            }
            let before = (d.total_in(), d.total_out());
            let read = consumed(d).ok_or(InflateError::Invalid)?;
            let status = d
                .decompress_vec(&compressed[read..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Invalid)?;
            let read = consumed(d).ok_or(InflateError::Invalid)?;
            // A final block ends the data (some clients end messages so).
            if status == Status::StreamEnd
                || (read == compressed.len() && out.len() < out.capacity())
            {
                break;
            }
            if before == (d.total_in(), d.total_out()) && out.len() < out.capacity() {
                return Err(InflateError::Invalid);
            }
        }
        finish(out, max)
    })
}

fn finish(out: Vec<u8>, max: usize) -> Result<Vec<u8>, InflateError> {
    if out.len() > max {
        Err(InflateError::TooLarge)
    } else {
        Ok(out)
    }
}

/// The upgraded connection as tungstenite reads it: as it is, or with compressed
/// messages inflated on the way in.
pub enum Io<S> {
    /// No extension negotiated: bytes pass through untouched.
    Plain(S),
    /// permessage-deflate negotiated (boxed: only such connections pay for the state).
    Inflating(Box<Inflating<S>>),
}

/// A reader that inflates compressed messages into plain frames tungstenite can read:
/// it parses the peer's frames, passes uncompressed ones through byte for byte, and
/// turns a compressed message (RSV1 on its first frame) into one plain frame (masked
/// with a zero key if the peer masked it, as a client must).
pub struct Inflating<S> {
    inner: S,
    /// Bytes read from the socket, not yet parsed.
    raw: Vec<u8>,
    /// Bytes ready for tungstenite; `out[sent..]` are still to hand over.
    out: Vec<u8>,
    sent: usize,
    /// The compressed message being gathered from its frames: its opcode and payload.
    message: Option<(Data, Vec<u8>)>,
    /// The largest frame and message (compressed and inflated).
    max: usize,
    /// Something could not be parsed: everything passes through as it is from now on,
    /// and tungstenite reports the error.
    passthrough: bool,
}

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 2048;

impl<S> Io<S> {
    /// `inner`, inflating compressed messages when `deflate` was negotiated; frames and
    /// messages are limited to `max` bytes.
    pub fn new(inner: S, deflate: bool, max: usize) -> Self {
        if !deflate {
            return Self::Plain(inner);
        }
        Self::inflating(inner, max, Vec::new())
    }

    /// `inner` with compressed messages inflated, where `read` are bytes already read
    /// from it past the handshake (a client that shook hands itself).
    pub fn inflating(inner: S, max: usize, read: Vec<u8>) -> Self {
        Self::Inflating(Box::new(Inflating {
            inner,
            raw: read,
            out: Vec::new(),
            sent: 0,
            message: None,
            max,
            passthrough: false,
        }))
    }
}

impl<S> Inflating<S> {
    /// Parses one whole frame from `raw` into `out`. Returns whether there was one.
    fn parse_frame(&mut self) -> Result<bool, InflateError> {
        let mut cursor = Cursor::new(&self.raw[..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(false),
            Err(_) => return Ok(self.pass_through()),
        };
        let start = usize::try_from(cursor.position()).map_err(|_| InflateError::Invalid)?;
        let Ok(len) = usize::try_from(len) else {
            return Ok(self.pass_through());
        };
        if len > self.max {
            // Too large for tungstenite too: it closes with the right code.
            return Ok(self.pass_through());
        }
        let end = start + len;
        if self.raw.len() < end {
            return Ok(false);
        }
        let compressed_start =
            header.rsv1 && matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        match (&mut self.message, header.opcode) {
            (None, _) if !compressed_start => {
                // Uncompressed, or not ours to judge: as it came.
                self.out.extend_from_slice(&self.raw[..end]);
            }
            (None, OpCode::Data(data)) => {
                let mut payload = self.raw[start..end].to_vec();
                unmask(&mut payload, header.mask);
                self.message = Some((data, payload));
            }
            (Some(_), OpCode::Control(_)) => {
                // Control frames may come between a message's frames.
                self.out.extend_from_slice(&self.raw[..end]);
            }
            (Some((_, payload)), OpCode::Data(Data::Continue)) if !header.rsv1 => {
                if payload.len() + len > self.max {
                    return Err(InflateError::TooLarge);
                }
                let from = payload.len();
                payload.extend_from_slice(&self.raw[start..end]);
                unmask(&mut payload[from..], header.mask);
            }
            _ => return Err(InflateError::Invalid),
        }
        if header.is_final && matches!(header.opcode, OpCode::Data(_)) {
            if let Some((data, payload)) = self.message.take() {
                let plain = inflate(payload, self.max)?;
                let header = FrameHeader {
                    is_final: true,
                    rsv1: false,
                    rsv2: header.rsv2,
                    rsv3: header.rsv3,
                    opcode: OpCode::Data(data),
                    // Masked as it came (a client's frame must be): with a zero key,
                    // so the plain bytes stand as they are.
                    mask: header.mask.map(|_| [0; 4]),
                };
                header
                    .format(plain.len() as u64, &mut self.out)
                    .map_err(|_| InflateError::Invalid)?;
                self.out.extend_from_slice(&plain);
            }
        }
        self.raw.drain(..end);
        if self.raw.is_empty() {
            // Idle connections are the common case: they hold no buffer.
            self.raw = Vec::new();
        }
        Ok(true)
    }

    /// Hands everything over unparsed from now on. Returns `true` (there is output).
    fn pass_through(&mut self) -> bool {
        self.passthrough = true;
        self.out.append(&mut self.raw);
        true
    }
}

/// Unmasks a client's payload (in place).
fn unmask(data: &mut [u8], mask: Option<[u8; 4]>) {
    if let Some(mask) = mask {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.sent < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.sent);
                buf.put_slice(&this.out[this.sent..this.sent + n]);
                this.sent += n;
                if this.sent == this.out.len() {
                    this.out = Vec::new();
                    this.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.passthrough {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.parse_frame()? {
                continue;
            }
            // A whole frame is not there yet: read more (through the stack, so that
            // `raw` holds only what is pending).
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            this.raw.extend_from_slice(rb.filled());
            if n == 0 {
                // The client went away: what is left is handed over as it is, so
                // tungstenite tells a clean close from a cut.
                this.pass_through();
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Io<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Inflating(i) => Pin::new(&mut **i).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Io<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.get_mut().inner_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.get_mut().inner_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Inflating(i) => i.inner.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.get_mut().inner_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.get_mut().inner_mut()).poll_shutdown(cx)
    }
}

impl<S> Io<S> {
    /// The socket under the inflater.
    pub fn get_ref(&self) -> &S {
        match self {
            Self::Plain(s) => s,
            Self::Inflating(i) => &i.inner,
        }
    }

    fn inner_mut(&mut self) -> &mut S {
        match self {
            Self::Plain(s) => s,
            Self::Inflating(i) => &mut i.inner,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::WebSocketStream;
    use tungstenite::protocol::Role;
    use tungstenite::Message;

    use super::*;

    fn offer(value: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::SEC_WEBSOCKET_EXTENSIONS,
            value.parse().unwrap(),
        );
        offered(&headers)
    }

    #[test]
    fn accepts_what_browsers_and_ws_offer_and_refuses_what_it_cannot_keep() {
        assert!(offer("permessage-deflate"));
        assert!(offer("permessage-deflate; client_max_window_bits"));
        assert!(offer("permessage-deflate; client_max_window_bits=10"));
        assert!(offer(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ));
        assert!(offer("permessage-deflate; server_max_window_bits=15"));
        // A smaller server window than switchboard compresses with.
        assert!(!offer("permessage-deflate; server_max_window_bits=10"));
        // Unknown parameters, a parameter named twice, bad values, other extensions.
        assert!(!offer("permessage-deflate; x_unknown"));
        assert!(!offer(
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        ));
        assert!(!offer("permessage-deflate; client_max_window_bits=16"));
        assert!(!offer("permessage-deflate; server_no_context_takeover=1"));
        assert!(!offer("x-webkit-deflate-frame"));
        // One acceptable offer among several is enough.
        assert!(offer(
            "permessage-deflate; server_max_window_bits=9, permessage-deflate"
        ));
    }

    #[test]
    fn compressed_messages_inflate_back_and_incompressible_ones_are_stored() {
        let text = "a publication that repeats itself. ".repeat(40);
        for level in [1, 6, 9] {
            let packed = compress(text.as_bytes(), level).unwrap();
            assert!(packed.len() * 4 < text.len());
            assert!(!packed.ends_with(&TAIL));
            assert_eq!(inflate(packed.to_vec(), 1 << 20).unwrap(), text.as_bytes());
        }
        // Each message on its own: the same input gives the same bytes every time.
        assert_eq!(compress(text.as_bytes(), 1), compress(text.as_bytes(), 1));
        // Incompressible data is stored, a few bytes longer.
        let noise: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let stored = compress(&noise, 1).unwrap();
        assert!(stored.len() <= noise.len() + 8, "{}", stored.len());
        assert_eq!(inflate(stored.to_vec(), 1 << 20).unwrap(), noise);
        assert!(matches!(
            inflate(compress(text.as_bytes(), 1).unwrap().to_vec(), 100),
            Err(InflateError::TooLarge)
        ));
        assert!(matches!(
            inflate(vec![0xff, 0xff, 0xff], 100),
            Err(InflateError::Invalid)
        ));
    }

    /// A client frame, masked.
    fn client_frame(opcode: OpCode, rsv1: bool, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let header = FrameHeader {
            is_final: fin,
            rsv1,
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        let mut body = payload.to_vec();
        unmask(&mut body, Some(mask));
        out.extend(body);
        out
    }

    #[tokio::test]
    async fn tungstenite_reads_compressed_messages_through_the_inflater() {
        let text = "hello hello hello hello hello hello".repeat(10);
        let packed = compress(text.as_bytes(), 1).unwrap();
        let (first, rest) = packed.split_at(packed.len() / 2);
        let mut bytes = client_frame(OpCode::Data(Data::Text), false, true, b"plain");
        bytes.extend(client_frame(OpCode::Data(Data::Text), true, false, first));
        bytes.extend(client_frame(
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping),
            false,
            true,
            b"p",
        ));
        bytes.extend(client_frame(
            OpCode::Data(Data::Continue),
            false,
            true,
            rest,
        ));
        bytes.extend(client_frame(
            OpCode::Data(Data::Binary),
            true,
            true,
            &packed,
        ));

        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            // Small writes: frames arrive cut at every place.
            for chunk in bytes.chunks(7) {
                client.write_all(chunk).await.unwrap();
            }
            client
        });
        let io = Io::new(server, true, 1 << 16);
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(ws.next().await.unwrap().unwrap());
        }
        let expected = vec![
            Message::text("plain"),
            Message::Ping("p".into()),
            Message::text(text.clone()),
            Message::binary(text.into_bytes()),
        ];
        assert_eq!(got, expected);
        drop(writer.await.unwrap());
    }
}
