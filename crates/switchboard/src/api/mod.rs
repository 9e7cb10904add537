//! The server API: Centrifugo-compatible HTTP calls from application backends.
//!
//! `POST /api/<method>` with a JSON body and `X-API-Key: <key>` (or
//! `Authorization: apikey <key>`); the older `POST /api` with `{"method", "params"}`;
//! the OpenAPI document at `GET /api/openapi.json`. See docs/api.md.
//!
//! # Layout
//! - [`wire`]: request and result shapes (and so the OpenAPI schemas).
//! - [`decode`]: bodies into checked commands; what makes a request a 400.
//! - [`methods`]: what each method does, through the [`Node`]; [`inbox`]: the inbox
//!   methods with their shapes.
//! - [`error`]: [`ApiError`] and the one mapping to HTTP status and error code.
//! - [`key`], [`idempotency`], [`pattern`]: API keys, idempotent publish, channel globs.
//! - [`openapi`]: the generated document.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use crate::node::Node;

pub mod decode;
pub mod error;
pub mod idempotency;
pub mod inbox;
pub mod key;
pub mod methods;
pub mod openapi;
pub mod pattern;
pub mod wire;

use decode::METHODS;
pub use error::ApiError;
use idempotency::IdempotencyCache;
use key::ApiKeys;
pub(crate) use methods::intern as intern_reason;
use wire::{BatchRequest, Command, ErrorResponse, RawJson};

/// State shared by API calls.
#[derive(Debug)]
pub struct Api {
    node: Arc<Node>,
    keys: ApiKeys,
    idempotency: IdempotencyCache,
}

impl Api {
    /// API state for `node`, with its configured keys and idempotency window.
    pub fn new(node: Arc<Node>) -> Self {
        let config = &node.config;
        Self {
            keys: ApiKeys::new(config.api_keys()),
            idempotency: IdempotencyCache::new(
                config.api_idempotency_window,
                idempotency::CAPACITY,
            ),
            node,
        }
    }
}

/// The API routes, with the body limit of `api_max_body_size`.
pub fn router(node: Arc<Node>) -> Router {
    let api = Arc::new(Api::new(node));
    if api.keys.is_empty() {
        tracing::warn!("no api_key configured: the server API at /api refuses every call");
    }
    let limit = api.node.config.api_max_body_size;
    Router::new()
        .route("/api", post(legacy))
        .route("/api/openapi.json", get(openapi::handler))
        .route("/api/{method}", post(call))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api)
}

/// The older single-endpoint form: `POST /api` with `{"method": ..., "params": ...}`.
#[derive(Deserialize)]
struct LegacyCall {
    method: String,
    #[serde(default)]
    params: Option<RawJson>,
}

/// What a call produced: status, JSON body, and the API error code if it failed.
struct Outcome {
    status: StatusCode,
    body: Vec<u8>,
    code: Option<u32>,
}

impl From<ApiError> for Outcome {
    fn from(e: ApiError) -> Self {
        let (status, error) = e.classify();
        let code = Some(error.code);
        Self {
            status,
            body: serde_json::to_vec(&ErrorResponse { error }).unwrap_or_default(),
            code,
        }
    }
}

/// `POST /api/<method>`.
async fn call(State(api): State<Arc<Api>>, req: Request) -> HttpResponse {
    let started = Instant::now();
    let requested = req.uri().path().strip_prefix("/api/").unwrap_or_default();
    let method = known_method(requested);
    let outcome = match api.authorize(&req) {
        Err(e) => e.into(),
        Ok(()) if method == "unknown" => ApiError::MethodNotFound.into(),
        Ok(()) => match read_body(req).await {
            Err(e) => e.into(),
            Ok(body) => api.run(method, &body).await,
        },
    };
    api.finish(method, started, outcome)
}

/// `POST /api` with `{"method": ..., "params": ...}`.
async fn legacy(State(api): State<Arc<Api>>, req: Request) -> HttpResponse {
    let started = Instant::now();
    let mut method = "unknown";
    let outcome = match api.authorize(&req) {
        Err(e) => e.into(),
        Ok(()) => match read_body(req)
            .await
            .and_then(|b| decode::decode::<LegacyCall>(&b))
        {
            Err(e) => e.into(),
            Ok(legacy) => {
                method = known_method(&legacy.method);
                let params = legacy
                    .params
                    .as_deref()
                    .map_or("{}", serde_json::value::RawValue::get);
                if method == "unknown" {
                    ApiError::MethodNotFound.into()
                } else {
                    api.run(method, params.as_bytes()).await
                }
            }
        },
    };
    api.finish(method, started, outcome)
}

/// The method's static name, `"unknown"` when there is no such method.
fn known_method(name: &str) -> &'static str {
    if name == "batch" {
        return "batch";
    }
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("unknown")
}

async fn read_body(req: Request) -> Result<bytes::Bytes, ApiError> {
    bytes::Bytes::from_request(req, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })
}

impl Api {
    fn authorize(&self, req: &Request) -> Result<(), ApiError> {
        if self.keys.admits(req.headers()) {
            return Ok(());
        }
        self.node.metrics.api_auth_failures.inc();
        Err(ApiError::Unauthorized)
    }

    /// Decodes and runs one call of a known method.
    async fn run(&self, method: &'static str, body: &[u8]) -> Outcome {
        if method == "batch" {
            return match BatchRequest::decode(body) {
                Ok(batch) => {
                    let result = methods::batch(self, batch).await;
                    Outcome {
                        status: StatusCode::OK,
                        body: serde_json::to_vec(&result).unwrap_or_default(),
                        code: None,
                    }
                }
                Err(e) => e.into(),
            };
        }
        let reply = match Command::decode(method, body) {
            Ok(command) => self.execute(command).await,
            Err(e) => Err(e),
        };
        match reply {
            Ok(reply) => Outcome {
                status: StatusCode::OK,
                body: reply.to_response_json(),
                code: None,
            },
            Err(e) => e.into(),
        }
    }

    /// Counts, logs (never the key) and answers one call.
    fn finish(&self, method: &'static str, started: Instant, outcome: Outcome) -> HttpResponse {
        let elapsed = started.elapsed();
        let api_metrics = &self.node.metrics.api;
        api_metrics.record(method, outcome.status.as_u16(), outcome.code);
        api_metrics.duration.observe(elapsed);
        tracing::info!(
            target: "switchboard::api",
            method,
            status = outcome.status.as_u16(),
            code = outcome.code.unwrap_or(0),
            elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "api call"
        );
        (
            outcome.status,
            [(header::CONTENT_TYPE, "application/json")],
            outcome.body,
        )
            .into_response()
    }
}
