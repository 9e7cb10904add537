//! A long-polling Engine.IO connection as the writer driver's sink: packets go out in
//! long-poll responses until the client upgrades, then as WebSocket messages. The swap
//! happens inside the sink, so one writer serves a connection from its handshake to its
//! close. (A connection opened on WebSocket writes into its WebSocket sink directly.)

use std::sync::{Arc, Mutex};

use switchboard_protocol::socketio::{CLOSE, RECORD_SEPARATOR};
use switchboard_protocol::Disconnect;
use tokio::sync::{oneshot, Notify};

use super::Conn;
use crate::event::Frame;
use crate::transport::websocket::WsSink;
use crate::transport::writer::{FrameSink, SinkClosed};

/// Packets a long-poll response keeps room for between bursts.
const KEEP_QUEUED: usize = 16;

/// Where the pending long-poll waits for the writer (Engine.IO allows one at a time).
#[derive(Default)]
pub(super) struct Polls {
    /// Short sections only: offer, take, close.
    waiting: Mutex<Waiting>,
    /// Wakes the writer when a poll arrives.
    arrived: Notify,
}

#[derive(Default)]
enum Waiting {
    #[default]
    Idle,
    /// A poll's reply channel: the writer sends it the response body.
    Poll(oneshot::Sender<String>),
    /// The writer has ended: no reply will come.
    Gone,
}

impl Polls {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a long-poll's reply channel to the writer. A poll still waiting here was
    /// given up by its client (the next poll only comes after it). When the writer has
    /// ended, `reply` is dropped: its receiver fails at once.
    pub(super) fn offer(&self, reply: oneshot::Sender<String>) {
        let mut waiting = self.lock();
        if matches!(*waiting, Waiting::Gone) {
            return;
        }
        *waiting = Waiting::Poll(reply);
        drop(waiting);
        self.arrived.notify_one();
    }

    fn take(&self) -> Option<oneshot::Sender<String>> {
        let mut waiting = self.lock();
        if !matches!(*waiting, Waiting::Poll(_)) {
            return None;
        }
        match std::mem::take(&mut *waiting) {
            Waiting::Poll(reply) => Some(reply),
            _ => None,
        }
    }
}

/// The write side of an Engine.IO connection that starts on long-polling.
pub(super) struct EngineSink {
    conn: Arc<Conn>,
    /// Packets fed since the last flush: one long-poll response carries them all.
    queued: Vec<Frame>,
    /// The WebSocket, once the connection is on it.
    ws: Option<WsSink>,
    /// Where an upgrade hands its WebSocket over (`None` once done or on WebSocket).
    upgrade: Option<oneshot::Receiver<WsSink>>,
}

impl EngineSink {
    /// A connection that starts on long-polling; [`Conn::upgraded`] moves it to a
    /// WebSocket.
    pub(super) fn polling(conn: Arc<Conn>) -> Self {
        let (tx, rx) = oneshot::channel();
        if let Some(polling) = &conn.polling {
            *polling.upgrade.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        }
        Self {
            conn,
            queued: Vec::new(),
            ws: None,
            upgrade: Some(rx),
        }
    }

    /// Waits for the pending long-poll, or for the upgrade: then the connection is on
    /// the WebSocket, which took the packets queued so far, and this returns `None`.
    async fn next_poll(&mut self) -> Result<Option<oneshot::Sender<String>>, SinkClosed> {
        let Some(polling) = &self.conn.polling else {
            return Err(SinkClosed);
        };
        loop {
            if let Some(poll) = polling.polls.take() {
                return Ok(Some(poll));
            }
            tokio::select! {
                biased;
                // Cancel-safe: a notification that arrives while nobody waits is kept.
                () = polling.polls.arrived.notified() => {}
                // Cancel-safe: the receiver is polled by reference.
                ws = upgraded(&mut self.upgrade) => {
                    self.upgrade = None;
                    if let Ok(ws) = ws {
                        // Kept before anything is written: a writer interrupted here
                        // still closes the WebSocket.
                        let ws = self.ws.insert(ws);
                        for frame in std::mem::take(&mut self.queued) {
                            ws.feed(frame).await?;
                        }
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// The WebSocket an upgrade hands over; never, when there is no upgrade to wait for.
async fn upgraded(
    upgrade: &mut Option<oneshot::Receiver<WsSink>>,
) -> Result<WsSink, oneshot::error::RecvError> {
    match upgrade {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// Packets as one long-poll response: separated by the record separator.
fn payload(packets: &[Frame]) -> String {
    let mut body = String::with_capacity(packets.iter().map(|p| p.len() + 1).sum());
    for packet in packets {
        // Socket.IO's frames are all text (its codec makes no binary ones).
        if let Frame::Text(packet) = packet {
            if !body.is_empty() {
                body.push(RECORD_SEPARATOR);
            }
            body.push_str(packet);
        }
    }
    body
}

impl FrameSink for EngineSink {
    fn reserve(&mut self, frames: usize) {
        if let Some(ws) = &mut self.ws {
            ws.reserve(frames);
        }
    }

    async fn feed(&mut self, frame: Frame) -> Result<(), SinkClosed> {
        match &mut self.ws {
            Some(ws) => ws.feed(frame).await,
            None => {
                self.queued.push(frame);
                Ok(())
            }
        }
    }

    async fn flush(&mut self) -> Result<(), SinkClosed> {
        let mut body = None;
        while self.ws.is_none() && !self.queued.is_empty() {
            // Boxed: only long-polling connections wait here, and the wait would
            // otherwise take room in every connection's writer.
            let Some(poll) = Box::pin(self.next_poll()).await? else {
                break;
            };
            let reply = body.take().unwrap_or_else(|| payload(&self.queued));
            match poll.send(reply) {
                Ok(()) => {
                    self.queued.clear();
                    if self.queued.capacity() > KEEP_QUEUED {
                        self.queued = Vec::new();
                    }
                }
                // Its client gave the poll up: the next poll takes the packets.
                Err(back) => body = Some(back),
            }
        }
        match &mut self.ws {
            Some(ws) => ws.flush().await,
            None => Ok(()),
        }
    }

    async fn close(mut self, reason: Disconnect) {
        if self.ws.is_none() {
            // The close packet goes alone, in the next poll: `engine.io-client` acts on
            // it at once, before `socket.io-client` has handled the packets before it
            // (a `connect_error`, `server_disconnect`, `41`). What is still queued was
            // held back (a slow client).
            self.queued.clear();
            self.queued.push(Frame::from_static(CLOSE));
            if self.flush().await.is_err() {
                return;
            }
        }
        if let Some(ws) = self.ws.take() {
            ws.close(reason).await;
        }
    }
}

impl Drop for EngineSink {
    fn drop(&mut self) {
        // A poll waiting now, or arriving later, gets no reply: it must not hang.
        if let Some(polling) = &self.conn.polling {
            *polling.polls.lock() = Waiting::Gone;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_poll_response_separates_packets() {
        let packets = [Frame::from_static("2"), Frame::from_static("42[\"a\"]")];
        assert_eq!(payload(&packets), "2\u{1e}42[\"a\"]");
        assert_eq!(payload(&[]), "");
    }
}
