//! The operator console at `/admin` (docs/admin.md): one page compiled into the binary,
//! its login and sessions, the actions it takes through the server API (each audited),
//! and the connection tokens with which it watches the live feed over the client
//! protocol.
//!
//! # Layout
//! - [`credentials`]: the password, signed session cookies, CSRF and connection tokens.
//! - [`feed`]: the views the node pushes into the console's channels while watched.
//! - `assets/`: the page (HTML, CSS, JavaScript), embedded with `include_str!`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::api::wire::{Command, ErrorResponse};
use crate::api::Api;
use crate::auth::{now_secs, Identity, TokenStamp};
use crate::config::AdminConfig;
use crate::front_door::Peer;
use crate::limiter::PerIpRate;
use crate::node::Node;

pub mod credentials;
pub mod feed;

use credentials::{Keys, Login, CONSOLE_TOKEN_PREFIX};
use feed::Feed;

/// The namespace of the console's feed channels: reserved (no config may define it),
/// watched only by console connections.
pub const FEED_NAMESPACE: &str = "_admin";
/// The session cookie.
const COOKIE: &str = "switchboard_admin";
/// The header that carries the CSRF token of the session.
const CSRF_HEADER: &str = "x-csrf-token";
/// Server API methods the console calls to read what its views show.
const READS: &[&str] = &[
    "info",
    "channels",
    "presence",
    "presence_stats",
    "history",
    "user_status",
];
/// Server API methods the console calls as actions: each one is an audit line.
const ACTIONS: &[&str] = &["publish", "disconnect", "unsubscribe", "history_remove"];

const PAGE: &str = include_str!("assets/index.html");
const STYLE: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

/// What the console needs beside the node: its keys, the login rate and the feed.
#[derive(Debug)]
pub struct Console {
    keys: Keys,
    logins: PerIpRate,
    /// The loop that computes the watched views.
    pub(crate) feed: Feed,
    session_ttl: u64,
    token_ttl: u64,
}

impl Console {
    /// The console `config` describes (enabled, with a password: see
    /// [`crate::Config::validate`]).
    pub fn new(config: &AdminConfig) -> Self {
        Self {
            keys: Keys::new(&config.secret, &config.password),
            logins: PerIpRate::per_period(
                config.login_attempts_per_minute,
                Duration::from_secs(60),
            ),
            feed: Feed::default(),
            session_ttl: config.session_ttl.as_secs().max(1),
            token_ttl: config.token_ttl.as_secs().max(1),
        }
    }

    /// The identity of a console connection, if `token` is a connection token of a
    /// login that has not ended: no user, the login's expiry.
    pub(crate) async fn verify_connection(&self, node: &Node, token: &str) -> Option<Identity> {
        let login = self.keys.verify_connection_token(token, now_secs())?;
        if self.logged_out(node, &login).await {
            return None;
        }
        Some(Identity {
            user: Arc::from(""),
            expires_at: Some(login.expires_at),
            console: true,
            ..Identity::default()
        })
    }

    /// Whether the login was ended by a logout (on any node sharing the engine's
    /// revocation store). A store that does not answer counts as logged out.
    async fn logged_out(&self, node: &Node, login: &Login) -> bool {
        let stamp = TokenStamp {
            id: Some(revocation_id(login)),
            issued_at: None,
        };
        match node.revocations.is_revoked("", None, &stamp).await {
            Ok(revoked) => revoked,
            Err(e) => {
                tracing::warn!(error = %e, "console session not checked: revocation store failed");
                true
            }
        }
    }
}

/// The id under which a logout is kept in the revocation store.
fn revocation_id(login: &Login) -> String {
    format!("admin-session:{}", login.id)
}

/// Whether a connect token is a console's (rather than a JWT).
pub fn is_console_token(token: &str) -> bool {
    token.starts_with(CONSOLE_TOKEN_PREFIX)
}

/// Why the console refused a request.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// No session cookie, or one that is forged, expired or logged out.
    #[error("not logged in")]
    NoSession,
    /// Not the console's own page: another origin, or no CSRF token of the session.
    #[error("forbidden")]
    Forbidden,
    /// The password is wrong.
    #[error("wrong password")]
    WrongPassword,
    /// Too many login attempts from the client's address.
    #[error("too many login attempts")]
    TooManyAttempts,
    /// The body is not what the endpoint reads.
    #[error("bad request")]
    BadRequest,
    /// Not a method the console calls.
    #[error("method not found")]
    MethodNotFound,
    /// The revocation store failed.
    #[error("unavailable")]
    Unavailable,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NoSession | Self::WrongPassword => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::MethodNotFound => StatusCode::NOT_FOUND,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if matches!(self, Self::TooManyAttempts) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        response
    }
}

/// State of the console's routes.
struct Admin {
    node: Arc<Node>,
    console: Arc<Console>,
    api: Api,
}

/// The console's routes, when `admin.enabled`; none otherwise (so `/admin` is a 404).
pub fn router(node: Arc<Node>) -> Router {
    let Some(console) = node.admin.clone() else {
        return Router::new();
    };
    let limit = node.config.api_max_body_size;
    let admin = Arc::new(Admin {
        api: Api::new(node.clone()),
        node,
        console,
    });
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(page))
        .route("/admin/console.css", get(style))
        .route("/admin/console.js", get(script))
        .route("/admin/api/login", post(login))
        .route("/admin/api/logout", post(logout))
        .route("/admin/api/session", get(session))
        .route("/admin/api/token", post(token))
        .route("/admin/api/call/{method}", post(call))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(guard_headers))
        .with_state(admin)
}

/// Headers of every console response: nothing loads from elsewhere, nothing frames the
/// page, nothing is cached.
async fn guard_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

#[derive(Deserialize)]
struct LoginRequest {
    password: String,
}

/// `POST /admin/api/login` with `{"password"}`: a session cookie and the session's
/// CSRF token.
async fn login(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    peer: Peer,
    body: Bytes,
) -> Result<Response, Refusal> {
    if !same_origin(&headers) {
        return Err(Refusal::Forbidden);
    }
    let ip = peer
        .addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    if !admin.console.logins.admit(ip) {
        tracing::warn!(target: "switchboard::admin::audit", %ip, "admin login refused: too many attempts");
        return Err(Refusal::TooManyAttempts);
    }
    let request: LoginRequest = serde_json::from_slice(&body).map_err(|_| Refusal::BadRequest)?;
    let keys = &admin.console.keys;
    if !keys.password_matches(&request.password) {
        tracing::warn!(target: "switchboard::admin::audit", %ip, "admin login failed: wrong password");
        return Err(Refusal::WrongPassword);
    }
    let (login, cookie) = keys.login(now_secs(), admin.console.session_ttl);
    tracing::info!(target: "switchboard::admin::audit", admin = login.short_id(), %ip, "admin logged in");
    let secure = if admin.node.config.tls.enabled() {
        "; Secure"
    } else {
        ""
    };
    let set_cookie = format!(
        "{COOKIE}={cookie}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        admin.console.session_ttl
    );
    let mut response = Json(session_json(&admin, &login)).into_response();
    if let Ok(value) = HeaderValue::from_str(&set_cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// What the console learns of its session.
fn session_json(admin: &Admin, login: &Login) -> serde_json::Value {
    json!({
        "csrf": admin.console.keys.csrf(login),
        "expires_at": login.expires_at,
        "node": admin.node.name,
        "stats_interval_ms": u64::try_from(admin.node.config.admin.stats_interval.as_millis()).unwrap_or(u64::MAX),
    })
}

/// `GET /admin/api/session`: whether the cookie is a live session, and its CSRF token.
async fn session(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Result<Response, Refusal> {
    let login = admin.login_of(&headers).await?;
    Ok(Json(session_json(&admin, &login)).into_response())
}

/// `POST /admin/api/logout`: ends the session on every node sharing the revocation
/// store, and clears the cookie.
async fn logout(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Result<Response, Refusal> {
    let login = admin.authorize(&headers).await?;
    admin
        .node
        .revocations
        .revoke_token(&revocation_id(&login), login.expires_at)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "admin logout not recorded: revocation store failed");
            Refusal::Unavailable
        })?;
    tracing::info!(target: "switchboard::admin::audit", admin = login.short_id(), "admin logged out");
    let mut response = Json(json!({})).into_response();
    let clear = format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `POST /admin/api/token`: a short-lived token for the console's WebSocket.
async fn token(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Result<Response, Refusal> {
    let login = admin.authorize(&headers).await?;
    let token = admin
        .console
        .keys
        .connection_token(&login, now_secs(), admin.console.token_ttl);
    Ok(Json(json!({ "token": token })).into_response())
}

/// `POST /admin/api/call/<method>`: a server API call, with the same body, checks and
/// answer as `POST /api/<method>`; the actions among them are audited.
async fn call(
    State(admin): State<Arc<Admin>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    peer: Peer,
    body: Bytes,
) -> Result<Response, Refusal> {
    let login = admin.authorize(&headers).await?;
    let action = ACTIONS.contains(&method.as_str());
    if !action && !READS.contains(&method.as_str()) {
        return Err(Refusal::MethodNotFound);
    }
    let command = Command::decode(&method, &body);
    let what = command.as_ref().map(describe).unwrap_or_default();
    let outcome = match command {
        Ok(command) => admin.api.execute(command).await,
        Err(e) => Err(e),
    };
    let (status, body, code) = match outcome {
        Ok(reply) => (StatusCode::OK, reply.to_response_json(), 0),
        Err(e) => {
            let (status, error) = e.classify();
            let code = error.code;
            let body = serde_json::to_vec(&ErrorResponse { error }).unwrap_or_default();
            (status, body, code)
        }
    };
    if action {
        tracing::info!(
            target: "switchboard::admin::audit",
            admin = login.short_id(),
            ip = %peer.addr().map(|a| a.ip().to_string()).unwrap_or_default(),
            method = method.as_str(),
            what = what.as_str(),
            code,
            "admin action"
        );
    }
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// What an action acts on, for its audit line (never the published data).
fn describe(command: &Command) -> String {
    match command {
        Command::Publish(r) => format!("channel={}", r.channel),
        Command::Disconnect(r) => match r.client.as_deref().filter(|c| !c.is_empty()) {
            Some(client) => format!("user={} client={client}", r.user),
            None => format!("user={}", r.user),
        },
        Command::Unsubscribe(r) => format!("user={} channel={}", r.user, r.channel),
        Command::HistoryRemove(r) => format!("channel={}", r.channel),
        _ => String::new(),
    }
}

impl Admin {
    /// The login a request's session cookie stands for.
    async fn login_of(&self, headers: &HeaderMap) -> Result<Login, Refusal> {
        let login = cookie(headers, COOKIE)
            .and_then(|value| self.console.keys.session(value, now_secs()))
            .ok_or(Refusal::NoSession)?;
        if self.console.logged_out(&self.node, &login).await {
            return Err(Refusal::NoSession);
        }
        Ok(login)
    }

    /// The login of a request that acts or takes a credential: from the console's own
    /// origin, with the session cookie and the session's CSRF token.
    async fn authorize(&self, headers: &HeaderMap) -> Result<Login, Refusal> {
        if !same_origin(headers) {
            return Err(Refusal::Forbidden);
        }
        let login = self.login_of(headers).await?;
        let csrf = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !self.console.keys.csrf_matches(&login, csrf) {
            return Err(Refusal::Forbidden);
        }
        Ok(login)
    }
}

/// Whether a request comes from the console's own origin: a browser names its page's
/// origin in `Origin`; a request without one is not a browser's cross-site request.
fn same_origin(headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        None => true,
        Some(Ok(origin)) => crate::transport::same_origin(origin, headers),
        Some(Err(_)) => false,
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_origins() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; switchboard_admin=v.1.2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE), Some("v.1.2"));
        assert_eq!(cookie(&h, "b"), None);
        assert!(
            same_origin(&h),
            "no Origin: not a browser's cross-site request"
        );
        h.insert(header::HOST, "127.0.0.1:8000".parse().unwrap());
        h.insert(header::ORIGIN, "http://127.0.0.1:8000".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
    }
}
