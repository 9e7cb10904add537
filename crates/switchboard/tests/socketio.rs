//! The Socket.IO transport (Engine.IO v4, Socket.IO v5) at `/socket.io/` over real HTTP
//! long-polling and real WebSockets: handshakes, the upgrade, `CONNECT` and its errors,
//! events with acknowledgements, pushes, disconnects, Engine.IO error codes and CORS.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::auth::{now_secs, MintClaims};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const RS: char = '\x1e';

// ---------------------------------------------------------------------------------------
// Packets

/// Name and arguments of the event `42["name",arg,...]` (an ack id after `42` is skipped).
fn event_of(packet: &str) -> Option<(String, Vec<Value>)> {
    let rest = packet.strip_prefix("42")?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let mut items: Vec<Value> = serde_json::from_str(rest).ok()?;
    if items.is_empty() {
        return None;
    }
    let name = items.remove(0).as_str()?.to_owned();
    Some((name, items))
}

/// The argument of the acknowledgement `43<id>[arg]`.
fn ack_of(packet: &str, id: u64) -> Option<Value> {
    let rest = packet.strip_prefix(&format!("43{id}["))?;
    let items: Vec<Value> = serde_json::from_str(&format!("[{rest}")).ok()?;
    assert_eq!(items.len(), 1, "one ack argument: {packet}");
    items.into_iter().next()
}

/// The JSON after a packet's type prefix (`0{...}`, `40{...}`, `44{...}`).
fn body_of(packet: &str, prefix: &str) -> Value {
    let rest = packet
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix}…, got {packet}"));
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("bad JSON in {packet}: {e}"))
}

fn is_event(packet: &str, name: &str) -> bool {
    event_of(packet).is_some_and(|(n, _)| n == name)
}

/// The error code of an ack argument `{"error":{"code":..}}`.
fn ack_error(ack: &Value) -> u64 {
    ack["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an error ack: {ack}"))
}

fn connect_packet(token: &str) -> String {
    format!("40{}", json!({ "token": token }))
}

// ---------------------------------------------------------------------------------------
// A Socket.IO client over WebSocket

/// A raw Socket.IO client on a WebSocket: one Engine.IO packet per text message.
struct SioWs {
    ws: Ws,
    /// The Engine.IO handshake (`0{...}`), `Null` for a connection upgraded from polling.
    handshake: Value,
    /// Packets read while waiting for something else.
    backlog: VecDeque<String>,
    /// Answer the server's pings (`2`) with `3` and hide them.
    auto_pong: bool,
    next_ack: u64,
}

fn ws_url(server: &TestServer, sid: Option<&str>) -> String {
    let mut url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    if let Some(sid) = sid {
        url.push_str("&sid=");
        url.push_str(sid);
    }
    url
}

/// The HTTP status of a refused WebSocket handshake to `url`, sent from `origin`.
async fn ws_refused(url: &str, origin: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let mut req = url.into_client_request().expect("request");
    if let Some(origin) = origin {
        req.headers_mut()
            .insert("Origin", origin.parse().expect("origin"));
    }
    let connect = tokio_tungstenite::connect_async(req);
    match tokio::time::timeout(TIMEOUT, connect)
        .await
        .expect("timeout")
    {
        Err(Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected: {e}"),
        Ok(_) => panic!("not refused: {url}"),
    }
}

async fn ws_open(url: &str) -> Ws {
    tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("open timeout")
        .expect("open")
        .0
}

impl SioWs {
    fn wrap(ws: Ws, handshake: Value) -> SioWs {
        SioWs {
            ws,
            handshake,
            backlog: VecDeque::new(),
            auto_pong: true,
            next_ack: 0,
        }
    }

    /// Opens a WebSocket directly (no polling first) and reads the handshake.
    async fn open(server: &TestServer) -> SioWs {
        let ws = ws_open(&ws_url(server, None)).await;
        let mut c = SioWs::wrap(ws, Value::Null);
        let open = c.packet().await;
        c.handshake = body_of(&open, "0");
        c
    }

    /// Opens the WebSocket that upgrades the polling session `sid` (no handshake on it).
    async fn upgrading(server: &TestServer, sid: &str) -> SioWs {
        SioWs::wrap(ws_open(&ws_url(server, Some(sid))).await, Value::Null)
    }

    /// Opens a WebSocket and joins the main namespace with `token`; panics unless
    /// that succeeds. Returns the client and the `connected` event's argument.
    async fn connect(server: &TestServer, token: &str) -> (SioWs, Value) {
        let mut c = SioWs::open(server).await;
        let connected = c.join(token).await;
        (c, connected)
    }

    /// Sends `CONNECT` with `token`, expects `40{"sid"}` and the `connected` event.
    async fn join(&mut self, token: &str) -> Value {
        self.send(&connect_packet(token)).await;
        let ok = self.packet().await;
        let sid = body_of(&ok, "40")["sid"].clone();
        let connected = self.event("connected").await.remove(0);
        assert_eq!(
            connected["client"], sid,
            "sid is the client id: {connected}"
        );
        connected
    }

    async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// The next packet off the socket, or how the socket was closed.
    async fn read(&mut self) -> Result<String, Closed> {
        loop {
            let text = next_text(&mut self.ws).await?;
            if self.auto_pong && text == "2" {
                self.send("3").await;
                continue;
            }
            return Ok(text);
        }
    }

    /// The next packet, from the backlog first; panics if the socket closes.
    async fn packet(&mut self) -> String {
        if let Some(p) = self.backlog.pop_front() {
            return p;
        }
        self.read()
            .await
            .unwrap_or_else(|c| panic!("closed waiting for a packet: {c:?}"))
    }

    /// Waits for a packet matching `pred`, keeping the others in the backlog.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        if let Some(pos) = self.backlog.iter().position(|p| pred(p)) {
            return self.backlog.remove(pos).expect("present");
        }
        loop {
            let p = self.read().await.unwrap_or_else(|c| {
                panic!("closed waiting for {what}: {c:?}; got {:?}", self.backlog)
            });
            if pred(&p) {
                return p;
            }
            self.backlog.push_back(p);
        }
    }

    /// The arguments of the next event `name`, keeping other packets in the backlog.
    async fn event(&mut self, name: &str) -> Vec<Value> {
        let p = self.wait_for(name, |p| is_event(p, name)).await;
        event_of(&p).expect("event").1
    }

    /// Emits `event` with `arg` and an ack id; returns the acknowledgement's argument.
    async fn emit(&mut self, event: &str, arg: Value) -> Value {
        self.next_ack += 1;
        let id = self.next_ack;
        self.send(&format!("42{id}{}", json!([event, arg]))).await;
        self.ack(id).await
    }

    /// The argument of the acknowledgement `id`.
    async fn ack(&mut self, id: u64) -> Value {
        let p = self
            .wait_for(&format!("ack {id}"), |p| ack_of(p, id).is_some())
            .await;
        ack_of(&p, id).expect("ack")
    }

    /// Everything left (backlog first) until the server closes the socket.
    async fn until_closed(&mut self) -> (Vec<String>, Closed) {
        let mut seen: Vec<String> = self.backlog.drain(..).collect();
        loop {
            match self.read().await {
                Ok(p) => seen.push(p),
                Err(c) => return (seen, c),
            }
        }
    }

    /// Asserts no packet (other than pings) arrives within `wait`.
    async fn assert_quiet(&mut self, wait: Duration) {
        assert!(self.backlog.is_empty(), "unexpected: {:?}", self.backlog);
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(wait, self.ws.next()).await {
            assert_eq!(t.as_str(), "2", "unexpected packet");
        }
    }
}

// ---------------------------------------------------------------------------------------
// A Socket.IO client over HTTP long-polling

#[derive(Clone)]
struct Polling {
    http: reqwest::Client,
    /// `http://…/socket.io/?EIO=4&transport=polling&sid=…`
    url: String,
    sid: String,
    handshake: Value,
}

fn polling_url(server: &TestServer) -> String {
    server.http_url("/socket.io/?EIO=4&transport=polling")
}

/// `(status, body)` of a response.
async fn answer(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// Status and Engine.IO error code of an error response.
fn engine_error((status, body): (u16, String)) -> (u16, u64) {
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    (status, v["code"].as_u64().expect("code"))
}

async fn http_get(url: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("http");
    answer(resp).await
}

async fn http_post(url: &str, body: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(url)
        .timeout(TIMEOUT)
        .body(body.to_owned())
        .send()
        .await
        .expect("http");
    answer(resp).await
}

impl Polling {
    /// The polling handshake.
    async fn open(server: &TestServer) -> Polling {
        let (status, body) = http_get(&polling_url(server)).await;
        assert_eq!(status, 200, "{body}");
        let handshake = body_of(&body, "0");
        let sid = handshake["sid"].as_str().expect("sid").to_owned();
        Polling {
            http: reqwest::Client::new(),
            url: format!("{}&sid={sid}", polling_url(server)),
            sid,
            handshake,
        }
    }

    /// Handshake, then `CONNECT` with `token`; panics unless that succeeds. Returns the
    /// client and the `connected` event's argument.
    async fn connect(server: &TestServer, token: &str) -> (Polling, Value) {
        let p = Polling::open(server).await;
        p.send(&[&connect_packet(token)]).await;
        let packets = p.until(|p| is_event(p, "connected")).await;
        assert!(packets[0].starts_with("40{\"sid\":"), "{packets:?}");
        let connected = event_of(packets.last().expect("connected"))
            .expect("event")
            .1;
        (p, connected[0].clone())
    }

    /// POSTs packets joined by the record separator.
    async fn post(&self, packets: &[&str]) -> (u16, String) {
        let body = packets.join(&RS.to_string());
        let resp = self
            .http
            .post(&self.url)
            .timeout(TIMEOUT)
            .body(body)
            .send()
            .await
            .expect("post");
        answer(resp).await
    }

    /// POSTs packets; asserts the server takes them.
    async fn send(&self, packets: &[&str]) {
        let (status, body) = self.post(packets).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
    }

    /// One long-poll.
    async fn poll(&self) -> (u16, String) {
        let resp = self
            .http
            .get(&self.url)
            .timeout(TIMEOUT)
            .send()
            .await
            .expect("poll (timed out?)");
        answer(resp).await
    }

    /// One successful long-poll, split into packets.
    async fn packets(&self) -> Vec<String> {
        let (status, body) = self.poll().await;
        assert_eq!(status, 200, "{body}");
        body.split(RS).map(str::to_owned).collect()
    }

    /// Polls until a packet matches `pred`; returns everything received up to it.
    async fn until(&self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let got = self.packets().await;
            let done = got.iter().any(|p| pred(p));
            seen.extend(got);
            if done {
                return seen;
            }
            assert!(!seen.iter().any(|p| p == "1"), "closed: {seen:?}");
        }
    }

    /// Emits `event` with ack `id`; returns the acknowledgement's argument.
    async fn emit(&self, id: u64, event: &str, arg: Value) -> Value {
        self.send(&[&format!("42{id}{}", json!([event, arg]))])
            .await;
        let packets = self.until(|p| ack_of(p, id).is_some()).await;
        packets.iter().find_map(|p| ack_of(p, id)).expect("ack")
    }
}

// ---------------------------------------------------------------------------------------
// The server API

async fn api(server: &TestServer, method: &str, params: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(server.http_url(&format!("/api/{method}")))
        .header("X-API-Key", API_KEY)
        .timeout(TIMEOUT)
        .body(params.to_string())
        .send()
        .await
        .expect("api");
    let (status, body) = answer(resp).await;
    let v: Value = serde_json::from_str(&body).expect("api json");
    assert_eq!(status, 200, "{v}");
    assert!(v.get("error").is_none(), "{v}");
    v["result"].clone()
}

// ---------------------------------------------------------------------------------------
// Long-polling

#[tokio::test]
async fn polling_handshake_connect_subscribe_and_publications_arrive_by_long_poll() {
    let server = start_default().await;
    let p = Polling::open(&server).await;
    assert!(!p.sid.is_empty());
    assert_eq!(p.handshake["upgrades"], json!(["websocket"]));
    assert_eq!(p.handshake["pingInterval"], json!(25_000));
    assert_eq!(p.handshake["pingTimeout"], json!(8_000));
    assert_eq!(p.handshake["maxPayload"], json!(65_536));

    p.send(&[&connect_packet(&token("ann"))]).await;
    let packets = p.until(|p| is_event(p, "connected")).await;
    let sid = body_of(&packets[0], "40")["sid"].clone();
    let connected = &event_of(&packets[1]).expect("connected").1[0];
    assert_eq!(connected["client"], sid);
    assert!(connected["subs"]["user:ann"].is_object(), "{connected}");

    let ack = p.emit(1, "subscribe", json!("chat:1")).await;
    assert!(ack["result"].is_object(), "{ack}");
    assert!(ack.get("error").is_none(), "{ack}");

    // The long-poll waits until there is something to deliver.
    let pending = tokio::spawn({
        let p = p.clone();
        async move { p.packets().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "a poll with nothing to send waits");
    api(
        &server,
        "publish",
        json!({"channel": "chat:1", "data": {"text": "hi"}}),
    )
    .await;
    let got = pending.await.expect("poll task");
    assert_eq!(got.len(), 1, "{got:?}");
    let (name, args) = event_of(&got[0]).expect("event");
    assert_eq!(name, "publication");
    assert_eq!(
        args,
        vec![json!({"channel": "chat:1", "data": {"text": "hi"}, "offset": 1})]
    );

    // Several packets in one POST; the answers come back joined in one poll.
    p.send(&[
        &format!(
            "422{}",
            json!(["publish", {"channel": "chat:1", "data": 2}])
        ),
        &format!("423{}", json!(["presence_stats", "chat:1"])),
    ])
    .await;
    let mut got = p.until(|p| ack_of(p, 3).is_some()).await;
    if !got.iter().any(|p| is_event(p, "publication")) {
        got.extend(p.until(|p| is_event(p, "publication")).await);
    }
    let publish = got.iter().find_map(|p| ack_of(p, 2)).expect("ack 2");
    assert_eq!(publish, json!({"result": {}}));
    let stats = got.iter().find_map(|p| ack_of(p, 3)).expect("ack 3");
    assert_eq!(stats, json!({"result": {"num_clients": 1, "num_users": 1}}));
    let own = got.iter().find(|p| is_event(p, "publication")).unwrap();
    let publication = &event_of(own).expect("event").1[0];
    assert_eq!(publication["data"], json!(2));
    assert_eq!(publication["info"]["user"], json!("ann"));
}

#[tokio::test]
async fn polling_upgrades_to_websocket_and_events_queued_meanwhile_follow() {
    let server = start_default().await;
    let (p, _) = Polling::connect(&server, &token("ann")).await;
    assert!(p.emit(1, "subscribe", json!("chat:1")).await["result"].is_object());

    // socket.io-client keeps a long-poll pending while it probes the WebSocket.
    let pending = tokio::spawn({
        let p = p.clone();
        async move { p.poll().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ws = SioWs::upgrading(&server, &p.sid).await;
    ws.send("2probe").await;
    assert_eq!(ws.packet().await, "3probe");
    let released = pending.await.expect("poll task");
    assert_eq!(
        released,
        (200, "6".to_owned()),
        "the pending poll ends with noop"
    );

    // Published between the probe and the upgrade: delivered over the WebSocket.
    api(
        &server,
        "publish",
        json!({"channel": "chat:1", "data": "queued"}),
    )
    .await;
    ws.send("5").await;
    let publication = ws.event("publication").await;
    assert_eq!(publication[0]["data"], json!("queued"));

    // From now on everything flows over the WebSocket.
    let ack = ws
        .emit("publish", json!({"channel": "chat:1", "data": "ws"}))
        .await;
    assert_eq!(ack, json!({"result": {}}));
    assert_eq!(ws.event("publication").await[0]["data"], json!("ws"));
    assert_eq!(
        engine_error(p.poll().await),
        (400, 3),
        "no polling after the upgrade"
    );
    // The connection survived the refused poll.
    assert_eq!(ws.emit("ping", json!({})).await, json!({"result": {}}));
}

// engine.io-client may have sent a poll just before `3probe` reached it, and waits for
// that poll to end before it sends `5`: the server answers it with a noop, not an error.
#[tokio::test]
async fn a_poll_in_flight_during_the_upgrade_is_answered_with_noop() {
    let server = start_default().await;
    let (p, _) = Polling::connect(&server, &token("ann")).await;
    let mut ws = SioWs::upgrading(&server, &p.sid).await;
    ws.send("2probe").await;
    assert_eq!(ws.packet().await, "3probe");
    // The poll the client sent just before it saw `3probe`.
    assert_eq!(p.poll().await, (200, "6".to_owned()));
    ws.send("5").await;
    assert_eq!(ws.emit("ping", json!({})).await, json!({"result": {}}));
}

// ---------------------------------------------------------------------------------------
// WebSocket

#[tokio::test]
async fn websocket_without_polling_gets_a_handshake_and_connects() {
    let server = start_default().await;
    let mut c = SioWs::open(&server).await;
    let hs = &c.handshake;
    assert!(hs["sid"].as_str().is_some_and(|s| !s.is_empty()), "{hs}");
    assert_eq!(hs["upgrades"], json!([]));
    assert_eq!(hs["pingInterval"], json!(25_000));
    assert_eq!(hs["pingTimeout"], json!(8_000));

    let connected = c.join(&token("ann")).await;
    assert!(connected["client"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(connected["subs"]["user:ann"].is_object(), "{connected}");
    assert!(connected.get("expires").is_none(), "{connected}");

    // The personal channel is live right away.
    api(
        &server,
        "publish",
        json!({"channel": "user:ann", "data": 7}),
    )
    .await;
    let p = c.event("publication").await;
    assert_eq!(
        p,
        vec![json!({"channel": "user:ann", "data": 7, "offset": 1})]
    );
    assert_eq!(c.emit("ping", json!({})).await, json!({"result": {}}));
}

#[tokio::test]
async fn connect_result_reports_expiry_of_an_expiring_token() {
    let server = start_default().await;
    let (_c, connected) = SioWs::connect(&server, &expiring_token("ann", 600)).await;
    assert_eq!(connected["expires"], json!(true), "{connected}");
    let ttl = connected["ttl"].as_u64().expect("ttl");
    assert!((590..=600).contains(&ttl), "{connected}");
}

// ---------------------------------------------------------------------------------------
// CONNECT errors

#[tokio::test]
async fn invalid_token_gets_connect_error_then_close_3500() {
    let server = start_default().await;
    let mut c = SioWs::open(&server).await;
    c.send(&connect_packet("not-a-jwt")).await;
    let (packets, closed) = c.until_closed().await;
    assert_eq!(packets.len(), 1, "{packets:?}");
    assert_eq!(
        body_of(&packets[0], "44"),
        json!({"message": "invalid token", "data": {"code": 3500, "message": "invalid token"}})
    );
    assert_eq!(closed.code, 3500, "{closed:?}");

    // Over polling: the error, then the Engine.IO close packet.
    let p = Polling::open(&server).await;
    p.send(&[&connect_packet("not-a-jwt")]).await;
    let packets = p.until(|p| p == "1").await;
    assert_eq!(packets.len(), 2, "{packets:?}");
    assert_eq!(body_of(&packets[0], "44")["data"]["code"], json!(3500));
}

#[tokio::test]
async fn expired_token_gets_connect_error_and_a_fresh_token_succeeds_on_the_same_connection() {
    let server = start_default().await;
    let expired = token_with(&MintClaims {
        sub: "ann".into(),
        exp: Some(now_secs() - 3600),
        ..MintClaims::default()
    });
    let mut c = SioWs::open(&server).await;
    c.send(&connect_packet(&expired)).await;
    let refused = body_of(&c.packet().await, "44");
    assert_eq!(refused["message"], json!("token expired"));
    assert_eq!(refused["data"]["code"], json!(109), "{refused}");
    assert_eq!(refused["data"]["message"], json!("token expired"));

    let connected = c.join(&token("ann")).await;
    assert!(connected["subs"]["user:ann"].is_object(), "{connected}");
}

#[tokio::test]
async fn other_namespaces_are_refused_and_the_main_one_still_works() {
    let server = start_default().await;
    let mut c = SioWs::open(&server).await;
    c.send(&format!("40/admin,{}", json!({"token": token("ann")})))
        .await;
    assert_eq!(
        c.packet().await,
        r#"44/admin,{"message":"Invalid namespace"}"#
    );
    c.join(&token("ann")).await;
    // Events addressed to another namespace are ignored.
    c.send(r#"42/admin,1["ping"]"#).await;
    c.assert_quiet(Duration::from_millis(200)).await;
    assert_eq!(c.emit("ping", json!({})).await, json!({"result": {}}));
}

#[tokio::test]
async fn an_event_before_connect_closes_with_3501() {
    let server = start_default().await;
    let mut c = SioWs::open(&server).await;
    c.send(r#"421["ping"]"#).await;
    let (packets, closed) = c.until_closed().await;
    assert!(packets.is_empty(), "{packets:?}");
    assert_eq!(closed.code, 3501);
}

// ---------------------------------------------------------------------------------------
// Events and acknowledgements

#[tokio::test]
async fn forbidden_and_unknown_channels_get_error_acks_and_the_connection_survives() {
    let server = start_default().await;
    let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
    let denied = c.emit("subscribe", json!("observation:1")).await;
    assert_eq!(
        denied,
        json!({"error": {"code": 103, "message": "permission denied"}})
    );
    let ack = c.emit("subscribe", json!({"channel": "nope:1"})).await;
    assert_eq!(ack_error(&ack), 102);
    // Publishing into a namespace without `publish` is forbidden too.
    let ack = c
        .emit("publish", json!({"channel": "news:1", "data": 1}))
        .await;
    assert_eq!(ack_error(&ack), 103);
    assert!(c.emit("subscribe", json!("chat:1")).await["result"].is_object());
    let again = c.emit("subscribe", json!("chat:1")).await;
    assert_eq!(ack_error(&again), 105, "already subscribed");
}

#[tokio::test]
async fn unknown_events_and_malformed_arguments_get_error_acks() {
    let server = start_default().await;
    let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
    assert_eq!(
        c.emit("frobnicate", json!({})).await,
        json!({"error": {"code": 104, "message": "unknown event"}})
    );
    let ack = c.emit("publish", json!([1])).await;
    assert_eq!(ack_error(&ack), 107);
    assert!(
        ack["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("bad request")),
        "{ack}"
    );
    let ack = c
        .emit("history", json!({"channel": "chat:1", "limit": "x"}))
        .await;
    assert_eq!(ack_error(&ack), 107);
    // An event that is not a JSON array still gets its ack.
    c.send("4277{}").await;
    assert_eq!(ack_error(&c.ack(77).await), 107);
    c.send("4278[1]").await;
    assert_eq!(ack_error(&c.ack(78).await), 107);
    assert_eq!(c.emit("ping", json!({})).await, json!({"result": {}}));
}

#[tokio::test]
async fn errors_without_an_ack_arrive_as_error_events() {
    let server = start_default().await;
    let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
    c.send(&format!("42{}", json!(["subscribe", "observation:1"])))
        .await;
    assert_eq!(
        c.event("error").await,
        vec![json!({"code": 103, "message": "permission denied", "event": "subscribe"})]
    );
    c.send(r#"42["frobnicate",{}]"#).await;
    assert_eq!(
        c.event("error").await,
        vec![json!({"code": 104, "message": "unknown event", "event": "frobnicate"})]
    );
    c.send(r#"42["publish",5]"#).await;
    let e = c.event("error").await.remove(0);
    assert_eq!(
        (e["code"].clone(), e["event"].clone()),
        (json!(107), json!("publish"))
    );
    // Successful events without an ack get no answer (only the effect: here, the own join).
    c.send(r#"42["subscribe","chat:1"]"#).await;
    let join = c.event("join").await.remove(0);
    assert_eq!(join["info"]["user"], json!("ann"), "{join}");
    c.assert_quiet(Duration::from_millis(200)).await;
    c.send(&format!(
        "42{}",
        json!(["publish", {"channel": "chat:1", "data": 1}])
    ))
    .await;
    assert_eq!(c.event("publication").await[0]["data"], json!(1));
}

#[tokio::test]
async fn too_many_protocol_errors_disconnect_with_3501() {
    let mut cfg = config();
    cfg.limits.max_protocol_errors = 2;
    let server = start(cfg).await;
    let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
    for _ in 0..2 {
        assert_eq!(ack_error(&c.emit("frobnicate", json!({})).await), 104);
    }
    // Ordinary refusals (permission denied) are not protocol errors.
    assert_eq!(
        ack_error(&c.emit("subscribe", json!("observation:1")).await),
        103
    );
    c.send(r#"429["frobnicate"]"#).await;
    let (packets, closed) = c.until_closed().await;
    assert_eq!(packets.len(), 3, "{packets:?}");
    assert_eq!(ack_error(&ack_of(&packets[0], 9).expect("ack")), 104);
    assert_eq!(
        event_of(&packets[1]).expect("event"),
        (
            "server_disconnect".to_owned(),
            vec![json!({"code": 3501, "reason": "bad request", "reconnect": false})]
        )
    );
    assert_eq!(packets[2], "41");
    assert_eq!(closed.code, 3501);
}

#[tokio::test]
async fn channel_commands_as_events_with_recovery() {
    let server = start_default().await;
    let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
    let sub = c.emit("subscribe", json!("chat:r")).await;
    let epoch = sub["result"]["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(sub["result"]["recoverable"], json!(true), "{sub}");
    for i in 1..=3 {
        api(&server, "publish", json!({"channel": "chat:r", "data": i})).await;
        assert_eq!(c.event("publication").await[0]["data"], json!(i));
    }
    let history = c
        .emit(
            "history",
            json!({"channel": "chat:r", "limit": 2, "reverse": true}),
        )
        .await;
    let data: Vec<_> = history["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{history}"))
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(data, vec![json!(3), json!(2)], "{history}");
    assert_eq!(history["result"]["offset"], json!(3));
    assert_eq!(history["result"]["epoch"], json!(epoch));

    // Missed while unsubscribed, recovered on the next subscribe.
    assert_eq!(
        c.emit("unsubscribe", json!("chat:r")).await,
        json!({"result": {}})
    );
    for i in 4..=5 {
        api(&server, "publish", json!({"channel": "chat:r", "data": i})).await;
    }
    let sub = c
        .emit(
            "subscribe",
            json!({"channel": "chat:r", "recover": true, "offset": 3, "epoch": epoch}),
        )
        .await;
    assert_eq!(sub["result"]["recovered"], json!(true), "{sub}");
    let recovered: Vec<_> = sub["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{sub}"))
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(recovered, vec![json!(4), json!(5)]);

    let presence = c.emit("presence", json!("chat:r")).await;
    let clients = presence["result"]["presence"]
        .as_object()
        .expect("presence");
    assert_eq!(clients.len(), 1, "{presence}");
    assert_eq!(clients.values().next().unwrap()["user"], json!("ann"));
    let refreshed = c
        .emit("refresh", json!({"token": expiring_token("ann", 600)}))
        .await;
    assert_eq!(refreshed["result"]["expires"], json!(true), "{refreshed}");
}

// ---------------------------------------------------------------------------------------
// Pushes

#[tokio::test]
async fn a_publication_tagged_with_an_event_arrives_as_that_event() {
    let server = start_default().await;
    let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
    assert!(c.emit("subscribe", json!("chat:1")).await["result"].is_object());
    api(
        &server,
        "publish",
        json!({"channel": "chat:1", "data": {"text": "hi"}, "tags": {"event": "message:new", "k": "v"}}),
    )
    .await;
    let args = c.event("message:new").await;
    assert_eq!(
        args,
        vec![
            json!({"text": "hi"}),
            json!({"channel": "chat:1", "offset": 1, "tags": {"event": "message:new", "k": "v"}}),
        ]
    );

    // Names socket.io-client keeps for itself fall back to `publication`.
    api(
        &server,
        "publish",
        json!({"channel": "chat:1", "data": 2, "tags": {"event": "disconnect"}}),
    )
    .await;
    assert_eq!(
        c.event("publication").await,
        vec![json!({"channel": "chat:1", "data": 2, "offset": 2, "tags": {"event": "disconnect"}})]
    );
    // So do switchboard's own event names: a publication can not pass for a disconnect.
    api(
        &server,
        "publish",
        json!({"channel": "chat:1", "data": 3, "tags": {"event": "server_disconnect"}}),
    )
    .await;
    assert_eq!(
        c.event("publication").await,
        vec![
            json!({"channel": "chat:1", "data": 3, "offset": 3, "tags": {"event": "server_disconnect"}})
        ]
    );
}

#[tokio::test]
async fn server_side_subscribe_unsubscribe_and_refresh_arrive_as_events() {
    let server = start_default().await;
    let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
    api(
        &server,
        "subscribe",
        json!({"user": "ann", "channel": "news:1"}),
    )
    .await;
    let sub = c.event("subscribe").await.remove(0);
    assert_eq!(sub["channel"], json!("news:1"), "{sub}");
    api(
        &server,
        "publish",
        json!({"channel": "news:1", "data": "n"}),
    )
    .await;
    assert_eq!(c.event("publication").await[0]["data"], json!("n"));

    api(
        &server,
        "unsubscribe",
        json!({"user": "ann", "channel": "news:1"}),
    )
    .await;
    let unsub = c.event("unsubscribe").await.remove(0);
    assert_eq!(unsub["channel"], json!("news:1"), "{unsub}");
    assert!(unsub["code"].as_u64().is_some(), "{unsub}");
    assert!(unsub["reason"].as_str().is_some(), "{unsub}");

    api(
        &server,
        "refresh",
        json!({"user": "ann", "expire_at": now_secs() + 3600}),
    )
    .await;
    let refresh = c.event("refresh").await.remove(0);
    assert_eq!(refresh["expires"], json!(true), "{refresh}");
    assert!(refresh["ttl"].as_u64().unwrap() > 3500, "{refresh}");
}

#[tokio::test]
async fn a_fresh_client_gets_the_users_inbox_as_events_and_reads_reach_the_other_devices() {
    let server = start_default().await;
    let (first, _) = SioWs::connect(&server, &token("ann")).await;
    drop(first);
    eventually("the first connection released", || {
        server.node.user_sessions("ann", None).is_empty()
    })
    .await;
    for i in 0..5 {
        api(
            &server,
            "publish",
            json!({"channel": "user:ann", "data": i}),
        )
        .await;
    }
    // No pid, no offset: a fresh socket.io-client.
    let (mut c, connected) = SioWs::connect(&server, &token("ann")).await;
    let sub = &connected["subs"]["user:ann"];
    assert_eq!(sub["recovered"], json!(true), "{connected}");
    assert!(
        sub.get("publications").is_none(),
        "they come as events: {connected}"
    );
    for i in 0..5 {
        let p = c.event("publication").await.remove(0);
        assert_eq!(
            (p["channel"].clone(), p["data"].clone()),
            (json!("user:ann"), json!(i))
        );
    }
    let (mut other, _) = SioWs::connect(&server, &token("ann")).await;
    let ack = c
        .emit("inbox:read", json!({"channel": "user:ann", "offset": 5}))
        .await;
    assert_eq!(ack["result"]["read"], json!(5), "{ack}");
    let push = other.event("inbox:read").await.remove(0);
    assert_eq!(
        (push["channel"].clone(), push["read"].clone()),
        (json!("user:ann"), json!(5)),
        "{push}"
    );
    let ack = c
        .emit("inbox:read", json!({"channel": "chat:1", "offset": 1}))
        .await;
    assert_eq!(ack_error(&ack), 103, "not subscribed: {ack}");
}

#[tokio::test]
async fn centrifugo_and_socketio_clients_see_each_others_publications_and_presence() {
    let server = start_default().await;
    let (mut sio, _) = SioWs::connect(&server, &token("ann")).await;
    assert!(sio.emit("subscribe", json!("chat:1")).await["result"].is_object());
    let mut bob = Client::connect_user(&server, "bob").await;
    assert!(bob.subscribe("chat:1").await.get("subscribe").is_some());

    let join = sio
        .wait_for("bob's join", |p| {
            is_event(p, "join") && event_of(p).unwrap().1[0]["info"]["user"] == json!("bob")
        })
        .await;
    assert_eq!(event_of(&join).unwrap().1[0]["channel"], json!("chat:1"));

    let ack = sio
        .emit(
            "publish",
            json!({"channel": "chat:1", "data": {"from": "sio"}}),
        )
        .await;
    assert_eq!(ack, json!({"result": {}}));
    let p = bob.next_pub("chat:1").await;
    assert_eq!(p["data"], json!({"from": "sio"}));
    assert_eq!(p["info"]["user"], json!("ann"));
    assert_eq!(
        sio.event("publication").await[0]["data"],
        json!({"from": "sio"})
    );

    bob.publish("chat:1", json!({"from": "centrifugo"})).await;
    let p = sio.event("publication").await.remove(0);
    assert_eq!(p["data"], json!({"from": "centrifugo"}));
    assert_eq!(p["info"]["user"], json!("bob"));

    let presence = sio.emit("presence", json!("chat:1")).await;
    let mut users: Vec<_> = presence["result"]["presence"]
        .as_object()
        .expect("presence")
        .values()
        .map(|i| i["user"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    assert_eq!(users, ["ann", "bob"]);
    let r = bob
        .request(json!({"presence_stats": {"channel": "chat:1"}}))
        .await;
    assert_eq!(r["presence_stats"]["num_users"], json!(2), "{r}");

    bob.close().await;
    let leave = sio.event("leave").await.remove(0);
    assert_eq!(leave["info"]["user"], json!("bob"), "{leave}");
}

// ---------------------------------------------------------------------------------------
// Disconnects and heartbeats

#[tokio::test]
async fn api_disconnect_sends_server_disconnect_then_41_then_closes_with_3503() {
    let server = start_default().await;
    let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
    api(&server, "disconnect", json!({"user": "ann"})).await;
    let (packets, closed) = c.until_closed().await;
    assert_eq!(
        packets,
        vec![
            format!(
                "42{}",
                json!(["server_disconnect", {"code": 3503, "reason": "force disconnect", "reconnect": false}])
            ),
            "41".to_owned(),
        ]
    );
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (3503, "force disconnect")
    );

    // A reconnectable code: no `41`, so socket.io-client reconnects by itself.
    let (mut c, _) = SioWs::connect(&server, &token("bob")).await;
    api(
        &server,
        "disconnect",
        json!({"user": "bob", "disconnect": {"code": 4001, "reason": "moved"}}),
    )
    .await;
    let (packets, closed) = c.until_closed().await;
    assert_eq!(packets.len(), 1, "{packets:?}");
    assert_eq!(
        event_of(&packets[0]).expect("event").1,
        vec![json!({"code": 4001, "reason": "moved", "reconnect": true})]
    );
    assert_eq!(closed.code, 4001);

    // Over polling the last poll carries the farewell and the Engine.IO close packet.
    let (p, _) = Polling::connect(&server, &token("cy")).await;
    api(&server, "disconnect", json!({"user": "cy"})).await;
    let packets = p.until(|p| p == "1").await;
    assert_eq!(packets.len(), 3, "{packets:?}");
    assert!(is_event(&packets[0], "server_disconnect"), "{packets:?}");
    assert_eq!(event_of(&packets[0]).unwrap().1[0]["code"], json!(3503));
    assert_eq!(packets[1], "41");
    assert_eq!(packets[2], "1");
}

#[tokio::test]
async fn shutdown_sends_a_reconnectable_server_disconnect_and_closes_with_3001() {
    let server = start_default().await;
    let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
    let stopping = tokio::spawn(server.stop());
    let (packets, closed) = c.until_closed().await;
    assert_eq!(
        packets,
        vec![format!(
            "42{}",
            json!(["server_disconnect", {"code": 3001, "reason": "shutdown", "reconnect": true}])
        )],
        "no 41: the client reconnects"
    );
    assert_eq!(closed.code, 3001);
    stopping.await.expect("stop");

    // Over polling, the pending poll carries the farewell, the next one the close packet.
    let server = start_default().await;
    let (p, _) = Polling::connect(&server, &token("ann")).await;
    let pending = tokio::spawn({
        let p = p.clone();
        async move { p.packets().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(
        pending.await.expect("poll task"),
        [format!(
            "42{}",
            json!(["server_disconnect", {"code": 3001, "reason": "shutdown", "reconnect": true}])
        ),]
    );
    // The next poll gets the close packet, unless the server has stopped listening
    // already: either way the client sees its transport close and reconnects.
    if let Ok(resp) = reqwest::Client::new()
        .get(&p.url)
        .timeout(TIMEOUT)
        .send()
        .await
    {
        assert_eq!(resp.text().await.expect("body"), "1");
    }
    stopping.await.expect("stop");
}

#[tokio::test]
async fn a_missing_pong_closes_with_3012_and_answered_pings_keep_the_connection() {
    let mut cfg = config();
    cfg.client.ping_interval = Duration::from_millis(300);
    cfg.client.pong_timeout = Duration::from_millis(300);
    let server = start(cfg).await;
    // A client that keeps reading answers every ping and stays.
    let (mut alive, _) = SioWs::connect(&server, &token("ann")).await;
    for _ in 0..10 {
        assert_eq!(alive.emit("ping", json!({})).await, json!({"result": {}}));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(alive);

    let (mut silent, _) = SioWs::connect(&server, &token("bob")).await;
    silent.auto_pong = false;
    assert_eq!(silent.packet().await, "2", "the Engine.IO ping");
    let (packets, closed) = silent.until_closed().await;
    assert_eq!(closed.code, 3012, "{closed:?} after {packets:?}");
    assert_eq!(
        packets,
        vec![format!(
            "42{}",
            json!(["server_disconnect", {"code": 3012, "reason": "no pong", "reconnect": true}])
        )]
    );
}

#[tokio::test]
async fn polling_clients_answer_pings_by_post_or_are_closed_with_3012() {
    let mut cfg = config();
    cfg.client.ping_interval = Duration::from_millis(300);
    cfg.client.pong_timeout = Duration::from_millis(300);
    let server = start(cfg).await;
    let (p, _) = Polling::connect(&server, &token("ann")).await;
    for _ in 0..3 {
        assert_eq!(p.packets().await, ["2"]);
        p.send(&["3"]).await;
    }
    assert_eq!(p.emit(1, "ping", json!({})).await, json!({"result": {}}));

    // No pong: the next poll carries the farewell and the close packet.
    assert_eq!(p.packets().await, ["2"]);
    let packets = p.until(|p| p == "1").await;
    assert_eq!(
        packets,
        [
            format!(
                "42{}",
                json!(["server_disconnect", {"code": 3012, "reason": "no pong", "reconnect": true}])
            ),
            "1".to_owned(),
        ]
    );
}

#[tokio::test]
async fn a_client_that_never_connects_is_closed_as_stale_with_3502() {
    let mut cfg = config();
    cfg.client.connect_timeout = Duration::from_millis(300);
    let server = start(cfg).await;
    let mut c = SioWs::open(&server).await;
    let (packets, closed) = c.until_closed().await;
    assert!(packets.is_empty(), "{packets:?}");
    assert_eq!(closed.code, 3502);

    let p = Polling::open(&server).await;
    assert_eq!(p.packets().await, ["1"]);
}

#[tokio::test]
async fn binary_and_garbage_packets_close_with_3501() {
    let server = start_default().await;
    let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
    c.ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    let (_, closed) = c.until_closed().await;
    assert_eq!(closed.code, 3501, "binary frame");

    let bad = [
        "bAQID",                                      // Engine.IO base64 binary
        r#"451-["x",{"_placeholder":true,"num":0}]"#, // Socket.IO binary event
        "4x",                                         // unknown Socket.IO type
        "9",                                          // unknown Engine.IO type
        "",                                           // empty packet
    ];
    for packet in bad {
        let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
        c.send(packet).await;
        let (packets, closed) = c.until_closed().await;
        assert_eq!(closed.code, 3501, "{packet:?}: {packets:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Engine.IO request errors

#[tokio::test]
async fn unsupported_engine_io_versions_and_transports_are_refused() {
    let server = start_default().await;
    for query in [
        "EIO=3&transport=polling",
        "transport=polling",
        "EIO=5&transport=websocket",
    ] {
        let r = http_get(&server.http_url(&format!("/socket.io/?{query}"))).await;
        assert_eq!(engine_error(r), (400, 5), "{query}");
    }
    for query in ["EIO=4&transport=flash", "EIO=4"] {
        let r = http_get(&server.http_url(&format!("/socket.io/?{query}"))).await;
        assert_eq!(engine_error(r), (400, 0), "{query}");
    }
    // `transport=websocket` without a WebSocket upgrade.
    let r = http_get(&server.http_url("/socket.io/?EIO=4&transport=websocket")).await;
    assert_eq!(engine_error(r), (400, 3));
    // The path without its trailing slash works too.
    let (status, body) = http_get(&server.http_url("/socket.io?EIO=4&transport=polling")).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("0{"), "{body}");
}

#[tokio::test]
async fn unknown_session_ids_are_refused_with_code_1() {
    let server = start_default().await;
    let url = format!("{}&sid=nope", polling_url(&server));
    assert_eq!(engine_error(http_get(&url).await), (400, 1));
    assert_eq!(engine_error(http_post(&url, "40").await), (400, 1));
    assert_eq!(ws_refused(&ws_url(&server, Some("nope")), None).await, 400);
}

#[tokio::test]
async fn a_second_concurrent_poll_is_refused_and_closes_the_session() {
    let server = start_default().await;
    let (p, _) = Polling::connect(&server, &token("ann")).await;
    // Whichever poll the server sees second is refused; the other ends the session.
    let (a, b) = tokio::join!(p.poll(), p.poll());
    let ((status, body), refused) = if a.0 == 200 { (a, b) } else { (b, a) };
    assert_eq!(engine_error(refused), (400, 3));
    assert_eq!(status, 200);
    let packets: Vec<_> = body.split(RS).collect();
    assert_eq!(packets.len(), 2, "{packets:?}");
    assert_eq!(
        event_of(packets[0]).expect("event").1[0]["code"],
        json!(3501)
    );
    assert_eq!(packets[1], "41");
    // The close packet comes in a poll of its own, after the client handled the rest.
    assert_eq!(p.packets().await, ["1"]);

    // The session is gone.
    let mut status = (0, 0);
    for _ in 0..20 {
        status = engine_error(p.post(&["3"]).await);
        if status == (400, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, (400, 1));
}

#[tokio::test]
async fn an_oversized_post_is_refused_and_closes_the_session_with_3506() {
    let mut cfg = config();
    cfg.limits.max_message_size = 1024;
    let server = start(cfg).await;
    let (p, _) = Polling::connect(&server, &token("ann")).await;
    assert_eq!(p.handshake["maxPayload"], json!(1024));
    let big = format!(
        "42{}",
        json!(["publish", {"channel": "chat:1", "data": "x".repeat(2000)}])
    );
    assert_eq!(engine_error(p.post(&[&big]).await), (400, 3));
    let packets = p.until(|p| p == "1").await;
    assert_eq!(packets.len(), 3, "{packets:?}");
    assert_eq!(
        event_of(&packets[0]).expect("event").1,
        vec![json!({"code": 3506, "reason": "message size limit exceeded", "reconnect": false})]
    );
    assert_eq!(packets[1], "41");

    // Over WebSocket, the frame limit applies.
    let (mut c, _) = SioWs::connect(&server, &token("bob")).await;
    c.send(&big).await;
    let (_, closed) = c.until_closed().await;
    assert_eq!(closed.code, 3506);
}

#[tokio::test]
async fn a_post_up_to_the_configured_message_size_is_taken_past_two_mebibytes() {
    let mut cfg = config();
    cfg.limits.max_message_size = 3 << 20;
    let server = start(cfg).await;
    let (p, _) = Polling::connect(&server, &token("ann")).await;
    // 2.5 MiB: over the HTTP framework's default body limit (2 MiB), which must not
    // stand in for the configured one; WebSocket takes a message this large as well.
    let ack = p.emit(1, "subscribe", json!("chat:1")).await;
    assert!(ack.get("error").is_none(), "{ack}");
    let data = "x".repeat(5 << 19);
    let ack = p
        .emit(2, "publish", json!({"channel": "chat:1", "data": data}))
        .await;
    assert!(ack.get("error").is_none(), "{ack}");
}

// ---------------------------------------------------------------------------------------
// CORS

#[tokio::test]
async fn cors_preflight_and_origin_headers() {
    let server = start_default().await;
    let http = reqwest::Client::new();
    let url = polling_url(&server);
    let resp = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("options");
    assert_eq!(resp.status().as_u16(), 204);
    let h = resp.headers();
    // No origin configured: any page may poll, without credentials.
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(h.get("access-control-allow-credentials").is_none());
    assert_eq!(h["access-control-allow-headers"], "content-type");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("GET") && methods.contains("POST"),
        "{methods}"
    );

    let resp = http
        .get(&url)
        .header("Origin", "https://app.example")
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    // Without an Origin, no CORS headers.
    let resp = http.get(&url).timeout(TIMEOUT).send().await.expect("get");
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    // With allowed origins configured, others are forbidden (code 4).
    let mut cfg = config();
    cfg.allowed_origins = vec!["https://app.example".into()];
    let server = start(cfg).await;
    let url = polling_url(&server);
    let get_from = |origin: &'static str| {
        http.get(&url)
            .header("Origin", origin)
            .timeout(TIMEOUT)
            .send()
    };
    let resp = get_from("https://evil.example").await.expect("get");
    assert_eq!(engine_error(answer(resp).await), (403, 4));
    let resp = get_from("https://app.example").await.expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    let resp = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "https://evil.example")
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("options");
    assert_eq!(resp.status().as_u16(), 403);
    let forbidden = ws_refused(&ws_url(&server, None), Some("https://evil.example")).await;
    assert_eq!(forbidden, 403);
}

/// `(Access-Control-Allow-Origin, Access-Control-Allow-Credentials)` of a long-poll
/// handshake sent from `origin`, after checking it was answered `200`.
async fn polling_cors(server: &TestServer, origin: &str) -> (String, Option<String>) {
    let resp = reqwest::Client::new()
        .get(polling_url(server))
        .header("Origin", origin)
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200, "from {origin}");
    let h = resp.headers();
    let value = |name: &str| h.get(name).map(|v| v.to_str().unwrap_or("?").to_owned());
    (
        value("access-control-allow-origin").unwrap_or_default(),
        value("access-control-allow-credentials"),
    )
}

#[tokio::test]
async fn polling_grants_credentials_only_to_listed_or_same_origins_never_null() {
    let server = start_default().await;
    let same = format!("http://{}", server.addr);
    let credentialed = |origin: &str| (origin.to_owned(), Some("true".to_owned()));
    let anyone = ("*".to_owned(), None);
    // allowed_origins empty: cross-origin pages may poll without credentials.
    assert_eq!(polling_cors(&server, "https://evil.example").await, anyone);
    assert_eq!(polling_cors(&server, "null").await, anyone);
    assert_eq!(polling_cors(&server, &same).await, credentialed(&same));

    let mut cfg = config();
    cfg.allowed_origins = vec!["https://app.example".into(), "null".into()];
    let server = start(cfg).await;
    let same = format!("http://{}", server.addr);
    let app = "https://app.example";
    assert_eq!(polling_cors(&server, app).await, credentialed(app));
    // Listed or not, `null` is any sandboxed page: never echoed with credentials.
    assert_eq!(polling_cors(&server, "null").await, anyone);
    // The same origin is allowed without being listed, on both transports.
    assert_eq!(polling_cors(&server, &same).await, credentialed(&same));
    let (ws, _) = tokio::time::timeout(TIMEOUT, async {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = ws_url(&server, None).into_client_request().expect("req");
        req.headers_mut()
            .insert("Origin", same.parse().expect("origin"));
        tokio_tungstenite::connect_async(req).await
    })
    .await
    .expect("timeout")
    .expect("same-origin WebSocket refused");
    drop(ws);

    // "*" allows any origin, but credentials to none but the same origin.
    let mut cfg = config();
    cfg.allowed_origins = vec!["*".into()];
    let server = start(cfg).await;
    assert_eq!(polling_cors(&server, "https://app.example").await, anyone);
}

/// Sends `packet` over and over while reading, until the server closes; returns the
/// packets read and how the socket closed.
async fn keep_sending_until_closed(c: SioWs, packet: &str) -> (Vec<String>, Closed) {
    let (mut sink, mut stream) = c.ws.split();
    let frame = Message::text(packet.to_owned());
    let sender = tokio::spawn(async move { while sink.send(frame.clone()).await.is_ok() {} });
    let mut got = Vec::new();
    let closed = loop {
        match next_text(&mut stream).await {
            Ok(p) => got.push(p),
            Err(c) => break c,
        }
    };
    tokio::time::timeout(TIMEOUT, sender)
        .await
        .expect("sender stops after the close")
        .expect("sender task");
    (got, closed)
}

#[tokio::test]
async fn a_flooding_client_still_gets_server_disconnect_and_the_close_code() {
    let mut cfg = config();
    cfg.limits.command_rate = 5;
    cfg.limits.command_burst = 5;
    cfg.limits.max_protocol_errors = 3;
    cfg.limits.max_message_size = 1024;
    let server = start(cfg).await;
    // Pongs (`3`) are metered: a flood of them is a flood (3013, reconnect: no `41`).
    let (c, _) = SioWs::connect(&server, &token("ann")).await;
    let (got, closed) = keep_sending_until_closed(c, "3").await;
    assert_eq!(closed.code, 3013, "{closed:?}");
    let farewell = got
        .iter()
        .find(|p| is_event(p, "server_disconnect"))
        .unwrap_or_else(|| panic!("no server_disconnect in {got:?}"));
    assert_eq!(event_of(farewell).unwrap().1[0]["code"], json!(3013));
    // Oversized messages, over and over: 3506 says not to reconnect, so the namespace
    // DISCONNECT (`41`) comes too.
    let (c, _) = SioWs::connect(&server, &token("bob")).await;
    let big = format!("42[\"publish\",\"{}\"]", "x".repeat(4000));
    let (got, closed) = keep_sending_until_closed(c, &big).await;
    assert_eq!(closed.code, 3506, "{closed:?}");
    assert!(
        got.iter().any(|p| is_event(p, "server_disconnect")),
        "{got:?}"
    );
    assert_eq!(got.last().map(String::as_str), Some("41"), "{got:?}");
}

// ---------------------------------------------------------------------------------------
// Token expiry

/// A config whose other timers (connect deadline, pings) are far beyond every receive
/// timeout, so an expiry close that arrives at all arrives from its own deadline.
fn expiry_config() -> switchboard::Config {
    let mut cfg = config();
    cfg.client.connect_timeout = Duration::from_secs(600);
    cfg.client.ping_interval = Duration::from_secs(600);
    cfg.client.expired_close_delay = Duration::ZERO;
    // The tokens below may be past `exp` when they arrive (a second boundary between
    // minting and checking); the leeway admits them and the close still follows.
    cfg.token_leeway = Duration::from_secs(3600);
    cfg
}

/// A subscription token for `observation:<n>` (a namespace without subscribe rules)
/// that expires within the second.
fn expiring_sub_token(user: &str, channel: &str) -> String {
    token_with(&MintClaims {
        sub: user.into(),
        channel: Some(channel.into()),
        exp: Some(now_secs() + 1),
        ..MintClaims::default()
    })
}

fn server_disconnect_code(packets: &[String]) -> Option<u64> {
    packets.iter().find_map(|p| {
        let (name, args) = event_of(p)?;
        (name == "server_disconnect").then(|| args[0]["code"].as_u64())?
    })
}

#[tokio::test]
async fn connection_token_expiry_closes_with_3005_on_time_over_both_transports() {
    let server = start(expiry_config()).await;
    // Before the fix the timer slept until the (here 600 s) connect deadline and every
    // receive below timed out.
    let (mut c, _) = SioWs::connect(&server, &expiring_token("ann", 1)).await;
    let (packets, closed) = c.until_closed().await;
    assert_eq!(closed.code, 3005, "{closed:?}");
    assert_eq!(server_disconnect_code(&packets), Some(3005), "{packets:?}");

    let (p, _) = Polling::connect(&server, &expiring_token("bob", 1)).await;
    let packets = p.until(|p| p == "1").await;
    assert_eq!(server_disconnect_code(&packets), Some(3005), "{packets:?}");
}

#[tokio::test]
async fn subscription_token_expiry_closes_with_3006_on_time_over_both_transports() {
    let server = start(expiry_config()).await;
    let (mut c, _) = SioWs::connect(&server, &token("ann")).await;
    let arg =
        json!({"channel": "observation:1", "token": expiring_sub_token("ann", "observation:1")});
    let ack = c.emit("subscribe", arg).await;
    assert_eq!(ack["result"]["expires"], json!(true), "{ack}");
    // Before the fix the close came with the next ping (here 600 s away).
    let (packets, closed) = c.until_closed().await;
    assert_eq!(closed.code, 3006, "{closed:?}");
    assert_eq!(server_disconnect_code(&packets), Some(3006), "{packets:?}");

    let (p, _) = Polling::connect(&server, &token("bob")).await;
    let arg =
        json!({"channel": "observation:2", "token": expiring_sub_token("bob", "observation:2")});
    let ack = p.emit(1, "subscribe", arg).await;
    assert_eq!(ack["result"]["expires"], json!(true), "{ack}");
    let packets = p.until(|p| p == "1").await;
    assert_eq!(server_disconnect_code(&packets), Some(3006), "{packets:?}");
}

// ---------------------------------------------------------------------------------------
// Where the token comes from

/// Opens a WebSocket to `url` whose upgrade request carries `authorization`.
async fn ws_open_with(url: &str, authorization: &str) -> SioWs {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("request");
    req.headers_mut()
        .insert("Authorization", authorization.parse().expect("header"));
    let ws = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("open timeout")
        .expect("open")
        .0;
    let mut c = SioWs::wrap(ws, Value::Null);
    let open = c.packet().await;
    c.handshake = body_of(&open, "0");
    c
}

/// Sends `CONNECT` with no `auth` and returns the user the `connected` event names.
async fn connect_without_auth(c: &mut SioWs) -> Value {
    c.send("40").await;
    let first = c.packet().await;
    assert!(first.starts_with("40{\"sid\""), "{first}");
    let connected = c.event("connected").await.remove(0);
    connected["subs"].clone()
}

#[tokio::test]
async fn a_token_in_the_authorization_header_or_the_query_connects_without_auth() {
    let server = start_default().await;
    // WebSocket, `extraHeaders: {Authorization: "Bearer …"}`.
    let mut c = ws_open_with(&ws_url(&server, None), &format!("Bearer {}", token("ann"))).await;
    let subs = connect_without_auth(&mut c).await;
    assert!(subs["user:ann"].is_object(), "{subs}");

    // WebSocket, `query: {token}`.
    let url = format!("{}&token={}", ws_url(&server, None), token("bob"));
    let mut c = SioWs::wrap(ws_open(&url).await, Value::Null);
    let _open = c.packet().await;
    let subs = connect_without_auth(&mut c).await;
    assert!(subs["user:bob"].is_object(), "{subs}");

    // Long-polling: the handshake request carries the header.
    let resp = reqwest::Client::new()
        .get(polling_url(&server))
        .header("Authorization", format!("bearer {}", token("cyd")))
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("http");
    let (status, body) = answer(resp).await;
    assert_eq!(status, 200, "{body}");
    let sid = body_of(&body, "0")["sid"].as_str().expect("sid").to_owned();
    let p = Polling {
        http: reqwest::Client::new(),
        url: format!("{}&sid={sid}", polling_url(&server)),
        sid,
        handshake: Value::Null,
    };
    p.send(&["40"]).await;
    let packets = p.until(|p| is_event(p, "connected")).await;
    let connected = event_of(packets.last().expect("connected"))
        .expect("event")
        .1;
    assert!(connected[0]["subs"]["user:cyd"].is_object(), "{packets:?}");

    // `auth.token` wins over the header (it is the one a reconnect renews).
    let mut c = ws_open_with(&ws_url(&server, None), &format!("Bearer {}", token("ann"))).await;
    let connected = c.join(&token("dee")).await;
    assert!(connected["subs"]["user:dee"].is_object(), "{connected}");

    // A bad header token is refused like any other.
    let mut c = ws_open_with(&ws_url(&server, None), "Bearer not-a-jwt").await;
    c.send("40").await;
    let (packets, closed) = c.until_closed().await;
    assert_eq!(body_of(&packets[0], "44")["data"]["code"], json!(3500));
    assert_eq!(closed.code, 3500);
}

// ---------------------------------------------------------------------------------------
// Event routes: the app's own client events

fn route(event: &str, action: &str, channel: &str) -> switchboard::config::RouteConfig {
    let action = serde_json::from_value(json!(action)).expect("action");
    switchboard::config::RouteConfig {
        event: event.into(),
        action,
        channel: channel.into(),
        ..Default::default()
    }
}

/// The routes of seed 004's chat frontend, over a `conversation` namespace.
fn routes_config() -> switchboard::Config {
    let mut cfg = config();
    cfg.namespaces.insert(
        "conversation".into(),
        switchboard::config::NamespaceConfig {
            subscribe: vec!["*".into()],
            publish: true,
            presence: true,
            ..Default::default()
        },
    );
    cfg.user_status.query = true;
    let typing = |event: &str| switchboard::config::RouteConfig {
        data: Some(json!({"conversationId": "{0.conversationId}", "userId": "{sub}"})),
        ..route(event, "typing_start", "conversation:{0.conversationId}")
    };
    cfg.socketio.routes = vec![
        route("join:conversation", "subscribe", "conversation:{0}"),
        route("leave:conversation", "unsubscribe", "conversation:{0}"),
        route("join:observation", "subscribe", "observation:{0}"),
        switchboard::config::RouteConfig {
            emit: "message:new".into(),
            ..route("message:send", "publish", "conversation:{0.conversationId}")
        },
        typing("typing:start"),
        route(
            "conversation:get-online-users",
            "presence",
            "conversation:{0}",
        ),
        switchboard::config::RouteConfig {
            user: "{0}".into(),
            ..route("user:get-status", "user_status", "")
        },
        switchboard::config::RouteConfig {
            user: "{0}".into(),
            ..route("users:get-status", "user_status", "")
        },
    ];
    cfg
}

#[tokio::test]
async fn routed_events_subscribe_publish_type_and_answer_presence_and_status() {
    let server = start(routes_config()).await;
    let (mut ann, _) = SioWs::connect(&server, &token("ann")).await;
    let (mut bob, _) = SioWs::connect(&server, &token("bob")).await;
    assert_eq!(
        ann.emit("join:conversation", json!("c1")).await,
        json!({"ok": true})
    );
    assert_eq!(
        bob.emit("join:conversation", json!("c1")).await,
        json!({"ok": true})
    );

    // publish: the event tag names the receivers' event; the sender gets it too.
    let sent = json!({"conversationId": "c1", "text": "hi"});
    assert_eq!(
        ann.emit("message:send", sent.clone()).await,
        json!({"ok": true})
    );
    assert_eq!(bob.event("message:new").await[0], sent);
    assert_eq!(ann.event("message:new").await[0], sent);

    // typing: `socket.to(room).emit`, so everyone but the sender.
    let ack = bob
        .emit("typing:start", json!({"conversationId": "c1"}))
        .await;
    assert_eq!(ack, json!({"ok": true}));
    let typing = ann.event("typing:start").await;
    assert_eq!(typing[0], json!({"conversationId": "c1", "userId": "bob"}));
    // The sender's own signal never reaches it: a ping's ack comes first and no
    // `typing:start` is queued before it.
    assert_eq!(bob.emit("ping", json!({})).await, json!({"result": {}}));
    assert!(
        !bob.backlog.iter().any(|p| is_event(p, "typing:start")),
        "{:?}",
        bob.backlog
    );

    // presence: a list of user ids.
    let online = ann.emit("conversation:get-online-users", json!("c1")).await;
    assert_eq!(online, json!(["ann", "bob"]));

    // user status, one and a batch.
    let one = ann.emit("user:get-status", json!("bob")).await;
    assert_eq!(
        (one["userId"].clone(), one["status"].clone()),
        (json!("bob"), json!("online")),
        "{one}"
    );
    let many = ann.emit("users:get-status", json!(["bob", "zed"])).await;
    let shaped: Vec<(Value, Value)> = many
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| (s["userId"].clone(), s["status"].clone()))
        .collect();
    assert_eq!(
        shaped,
        [
            (json!("bob"), json!("online")),
            (json!("zed"), json!("offline"))
        ]
    );

    // unsubscribe: no more messages.
    assert_eq!(
        bob.emit("leave:conversation", json!("c1")).await,
        json!({"ok": true})
    );
    ann.emit("message:send", json!({"conversationId": "c1", "text": "2"}))
        .await;
    ann.event("message:new").await;
    assert_eq!(bob.emit("ping", json!({})).await, json!({"result": {}}));
    assert!(
        !bob.backlog.iter().any(|p| is_event(p, "message:new")),
        "{:?}",
        bob.backlog
    );
}

#[tokio::test]
async fn routed_events_keep_the_permission_checks_and_refuse_bad_arguments() {
    let server = start(routes_config()).await;
    let (mut ann, _) = SioWs::connect(&server, &token("ann")).await;
    // `observation` admits only a subscription token, whatever the route says.
    let ack = ann.emit("join:observation", json!("1")).await;
    assert_eq!(ack_error(&ack), 103, "{ack}");
    // Publishing into a channel the client has not joined is refused, as `publish` is.
    let ack = ann
        .emit("message:send", json!({"conversationId": "c9", "text": "x"}))
        .await;
    assert_eq!(ack_error(&ack), 103, "{ack}");
    let ack = ann.emit("conversation:get-online-users", json!("c9")).await;
    assert_eq!(ack_error(&ack), 103, "{ack}");
    // An argument the template needs is missing.
    let ack = ann.emit("message:send", json!("not an object")).await;
    assert_eq!(ack_error(&ack), 107, "{ack}");
    assert!(
        ack["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("{0.conversationId}")),
        "{ack}"
    );
    // The connection survives all of it.
    assert_eq!(ann.emit("ping", json!({})).await, json!({"result": {}}));
}

#[test]
fn bad_route_templates_are_config_errors_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("sb-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("routes.toml");
    std::fs::write(
        &file,
        r#"
token_hmac_secret = "s"
[namespaces.conversation]
subscribe = ["*"]
[[socketio.routes]]
event = "join:conversation"
action = "subscribe"
channel = "conversation:{id}"
[[socketio.routes]]
event = "typing:start"
action = "typing_start"
channel = "chat:{0}"
data = { userId = "{sub" }
"#,
    )
    .expect("write");
    let err = switchboard::Config::load(Some(&file), &[])
        .expect_err("bad templates")
        .to_string();
    assert!(err.contains("socketio.routes[0].channel"), "{err}");
    assert!(err.contains("socketio.routes[1].channel"), "{err}");
    assert!(err.contains("socketio.routes[1].data"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn named_pushes_carry_the_apps_event_names_and_shapes() {
    let mut cfg = routes_config();
    cfg.socketio.pushes.join = "user_online".into();
    cfg.socketio.pushes.leave = "user_offline".into();
    cfg.socketio.pushes.status = "user:status-changed".into();
    cfg.namespaces.insert(
        "status".into(),
        switchboard::config::NamespaceConfig {
            subscribe: vec!["*".into()],
            ..Default::default()
        },
    );
    cfg.socketio.routes.push(switchboard::config::RouteConfig {
        method: "user_status".into(),
        data: Some(json!({"users": ["{0}"]})),
        ..route("status:rpc", "rpc", "")
    });
    let server = start(cfg).await;
    let (mut ann, _) = SioWs::connect(&server, &token("ann")).await;
    assert!(ann
        .emit("subscribe", json!("chat:1"))
        .await
        .get("result")
        .is_some());
    assert!(ann
        .emit("subscribe", json!("status:bob"))
        .await
        .get("result")
        .is_some());

    let (mut bob, connected) = SioWs::connect(&server, &token("bob")).await;
    let status = ann.event("user:status-changed").await;
    assert_eq!(
        (status[0]["userId"].clone(), status[0]["status"].clone()),
        (json!("bob"), json!("online")),
        "{status:?}"
    );
    assert!(bob
        .emit("subscribe", json!("chat:1"))
        .await
        .get("result")
        .is_some());
    // Ann's own join came first.
    let bobs =
        |name: &'static str| move |p: &str| is_event(p, name) && p.contains(r#""userId":"bob""#);
    let joined = ann.wait_for("bob online", bobs("user_online")).await;
    let joined = event_of(&joined).expect("event").1;
    assert_eq!(
        joined[0],
        json!({"userId": "bob", "clientId": connected["client"], "channel": "chat:1"})
    );
    bob.emit("unsubscribe", json!("chat:1")).await;
    let left = ann.wait_for("bob offline", bobs("user_offline")).await;
    let left = event_of(&left).expect("event").1;
    assert_eq!(left[0]["userId"], json!("bob"), "{left:?}");

    // An `rpc` route: the acknowledgement is the method's answer as is.
    let answer = ann.emit("status:rpc", json!("bob")).await;
    assert_eq!(answer["statuses"][0]["online"], json!(true), "{answer}");
}

#[test]
fn push_names_socket_io_client_reserves_are_config_errors() {
    let mut cfg = config();
    cfg.socketio.pushes.join = "disconnect".into();
    let err = cfg.validate().expect_err("reserved").to_string();
    assert!(err.contains("socketio.pushes.join"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Re-joining after a reconnect

/// Waits until the API's presence of `channel` has no client of `user` (the closed
/// connection has been cleaned up, after what it leaves for its reconnect was kept).
async fn until_absent(server: &TestServer, channel: &str, user: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let p = api(server, "presence", json!({ "channel": channel })).await;
        let present = p["presence"]
            .as_object()
            .is_some_and(|m| m.values().any(|c| c["user"] == json!(user)));
        if !present {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} still in {channel}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn channels_joined_through_routes_are_joined_again_after_a_reconnect_with_the_pid() {
    let server = start(routes_config()).await;
    let mut c = SioWs::open(&server).await;
    c.send(&connect_packet(&token("ann"))).await;
    let ok = body_of(&c.packet().await, "40");
    let pid = ok["pid"].as_str().expect("a pid").to_owned();
    c.event("connected").await;
    assert_eq!(
        c.emit("join:conversation", json!("c1")).await,
        json!({"ok": true})
    );
    c.ws.close(None).await.expect("close");
    until_absent(&server, "conversation:c1", "ann").await;

    // Another user presenting the pid gets nothing back.
    let mut other = SioWs::open(&server).await;
    other
        .send(&format!("40{}", json!({"token": token("bob"), "pid": pid})))
        .await;
    other.event("connected").await;

    // socket.io-client ≥ 4.6 sends `pid` (and `offset`) in its next CONNECT.
    let mut again = SioWs::open(&server).await;
    again
        .send(&format!(
            "40{}",
            json!({"token": token("ann"), "pid": pid, "offset": "x"})
        ))
        .await;
    let ok = body_of(&again.packet().await, "40");
    assert_ne!(
        ok["pid"],
        json!(pid),
        "recovered stays false: missed events are not replayed"
    );
    again.event("connected").await;
    // The ack of a ping is queued after the re-join.
    assert_eq!(again.emit("ping", json!({})).await, json!({"result": {}}));
    api(
        &server,
        "publish",
        json!({"channel": "conversation:c1", "data": {"n": 1}, "tags": {"event": "message:new"}}),
    )
    .await;
    assert_eq!(again.event("message:new").await[0], json!({"n": 1}));
    assert_eq!(other.emit("ping", json!({})).await, json!({"result": {}}));
    assert!(
        !other.backlog.iter().any(|p| is_event(p, "message:new")),
        "{:?}",
        other.backlog
    );

    // The pid is used once.
    let mut third = SioWs::open(&server).await;
    third
        .send(&format!("40{}", json!({"token": token("ann"), "pid": pid})))
        .await;
    third.event("connected").await;
    let p = api(&server, "presence", json!({"channel": "conversation:c1"})).await;
    assert_eq!(p["presence"].as_object().map(|m| m.len()), Some(1), "{p}");
}

#[tokio::test]
async fn a_zero_rejoin_window_sends_no_pid() {
    let mut cfg = routes_config();
    cfg.socketio.rejoin_window = Duration::ZERO;
    let server = start(cfg).await;
    let mut c = SioWs::open(&server).await;
    c.send(&connect_packet(&token("ann"))).await;
    let ok = body_of(&c.packet().await, "40");
    assert!(ok.get("pid").is_none(), "{ok}");
    assert!(ok["sid"].is_string(), "{ok}");
}

/// The seed 004 routes with history in `conversation` and connection-state recovery.
fn recovery_config(window: Duration) -> switchboard::Config {
    let mut cfg = routes_config();
    if let Some(ns) = cfg.namespaces.get_mut("conversation") {
        ns.history_size = 10;
        ns.history_ttl = Duration::from_secs(60);
    }
    cfg.socketio.recovery_window = window;
    cfg
}

/// Connects as ann, joins `conversation:c1` and gets one publication; returns the pid
/// and that publication's offset argument, after the connection closed.
async fn join_receive_and_drop(server: &TestServer) -> (String, Value) {
    let mut c = SioWs::open(server).await;
    c.send(&connect_packet(&token("ann"))).await;
    let pid = body_of(&c.packet().await, "40")["pid"].clone();
    c.event("connected").await;
    c.emit("join:conversation", json!("c1")).await;
    let data =
        json!({"channel": "conversation:c1", "data": {"n": 0}, "tags": {"event": "message:new"}});
    api(server, "publish", data).await;
    let args = c.event("message:new").await;
    c.ws.close(None).await.expect("close");
    until_absent(server, "conversation:c1", "ann").await;
    let pid = pid.as_str().expect("a pid").to_owned();
    (pid, args[2].clone())
}

#[tokio::test]
async fn publications_carry_an_offset_and_a_reconnect_replays_what_was_missed() {
    let server = start(recovery_config(Duration::from_secs(60))).await;
    let (pid, offset) = join_receive_and_drop(&server).await;
    assert!(
        offset.is_string(),
        "the offset is the last argument: {offset}"
    );
    for n in 1..=2 {
        let data = json!({"channel": "conversation:c1", "data": {"n": n}, "tags": {"event": "message:new"}});
        api(&server, "publish", data).await;
    }
    let mut again = SioWs::open(&server).await;
    let auth = json!({"token": token("ann"), "pid": pid, "offset": offset});
    again.send(&format!("40{auth}")).await;
    let ok = body_of(&again.packet().await, "40");
    assert_eq!(ok["pid"], json!(pid), "recovered: the same pid");
    again.event("connected").await;
    assert_eq!(again.event("message:new").await[0], json!({"n": 1}));
    assert_eq!(again.event("message:new").await[0], json!({"n": 2}));
}

#[tokio::test]
async fn a_reconnect_past_the_recovery_window_rejoins_without_replay() {
    let server = start(recovery_config(Duration::from_millis(10))).await;
    let (pid, offset) = join_receive_and_drop(&server).await;
    let data =
        json!({"channel": "conversation:c1", "data": {"n": 1}, "tags": {"event": "message:new"}});
    api(&server, "publish", data).await;
    // Past the 10 ms window (a lower bound, not a measurement).
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut again = SioWs::open(&server).await;
    let auth = json!({"token": token("ann"), "pid": pid, "offset": offset});
    again.send(&format!("40{auth}")).await;
    let ok = body_of(&again.packet().await, "40");
    assert_ne!(ok["pid"], json!(pid), "not recovered: a new pid");
    again.event("connected").await;
    assert_eq!(again.emit("ping", json!({})).await, json!({"result": {}}));
    assert!(
        !again.backlog.iter().any(|p| is_event(p, "message:new")),
        "nothing replayed: {:?}",
        again.backlog
    );
    // The room is joined again (within rejoin_window).
    let data =
        json!({"channel": "conversation:c1", "data": {"n": 2}, "tags": {"event": "message:new"}});
    api(&server, "publish", data).await;
    assert_eq!(again.event("message:new").await[0], json!({"n": 2}));
}

#[test]
fn a_recovery_window_needs_a_publication_limit() {
    let mut cfg = recovery_config(Duration::from_secs(60));
    cfg.socketio.recovery_max_publications = 0;
    let err = cfg.validate().expect_err("refused");
    assert!(
        err.to_string()
            .contains("socketio.recovery_max_publications"),
        "{err}"
    );
}

#[test]
fn a_status_feed_outside_any_namespace_is_a_config_error() {
    let mut cfg = config();
    cfg.user_status.feed = "lobby:all".into();
    let err = cfg.validate().expect_err("refused").to_string();
    assert!(err.contains("user_status.feed"), "{err}");
    cfg.socketio.pushes.online = "connect".into();
    let err = cfg.validate().expect_err("refused").to_string();
    assert!(err.contains("socketio.pushes.online"), "{err}");
}
