//! The OpenAPI 3.1 document of the server API, generated from the request and result
//! types in [`super::wire`] and the method annotations in [`super::methods`].

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{AdditionalProperties, Schema};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::wire::*;
use super::{inbox, methods};

/// The document's source: every method and the shared schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "switchboard server API",
        description = "Centrifugo-compatible server HTTP API: publish, broadcast, \
            server-side subscribe and disconnect, presence, history, channels, info, user status, \
            inbox (unread counts, mark read, read receipts), batch. \
            Requests are `POST /api/<method>` with a JSON object body and `X-API-Key: <key>` \
            (or `Authorization: apikey <key>`). Errors about the request itself get a 4xx \
            status; errors about channels (102 unknown channel, 108 not available) get 200 \
            with an `error` object. See docs/api.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        methods::publish,
        methods::broadcast,
        methods::subscribe,
        methods::unsubscribe,
        methods::disconnect,
        methods::refresh,
        methods::presence,
        methods::presence_stats,
        methods::history,
        methods::history_remove,
        methods::channels,
        methods::info,
        methods::user_status,
        methods::revoke_token,
        methods::invalidate_user_tokens,
        inbox::inbox_status,
        inbox::inbox_read,
        inbox::inbox_readers,
        methods::batch,
    ),
    components(schemas(ErrorResponse, Command, Reply)),
    modifiers(&RequestErrors),
)]
pub struct ApiDoc;

/// Adds what every method shares: the API key scheme, and the 400, 401 and 413 answers.
/// Also marks the bodies of `info` and `channels` optional, and batch commands closed.
struct RequestErrors;

impl Modify for RequestErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        // A batch command is an object with exactly one key naming the method: a second
        // key makes it ambiguous, so the server refuses it.
        if let Some(RefOr::T(Schema::OneOf(command))) = components.schemas.get_mut("Command") {
            for variant in &mut command.items {
                if let RefOr::T(Schema::Object(o)) = variant {
                    o.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            if let Some(op) = item.post.as_mut() {
                add_request_errors(op);
                // Methods without required parameters take an empty body as `{}`.
                if path == "/api/info" || path == "/api/channels" {
                    if let Some(body) = op.request_body.as_mut() {
                        body.required = Some(Required::False);
                    }
                }
            }
        }
    }
}

fn add_request_errors(op: &mut Operation) {
    op.security = Some(vec![SecurityRequirement::new(
        "api_key",
        Vec::<String>::new(),
    )]);
    let answers = [
        (
            "400",
            "Malformed JSON, a field of the wrong type, or a missing or empty required field (107)",
        ),
        ("401", "Missing or wrong API key (101)"),
        ("413", "Body larger than api_max_body_size (107)"),
    ];
    for (status, description) in answers {
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorResponse")))
            .build();
        let response = ResponseBuilder::new()
            .description(description)
            .content("application/json", content)
            .build();
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| response.into());
    }
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|_| "{}".to_owned())
    })
}

/// Serves `GET /api/openapi.json` (no key needed: it holds no secrets).
pub async fn handler() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_every_method_with_request_errors() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        for m in crate::api::decode::METHODS.iter().chain(&["batch"]) {
            let op = &doc["paths"][format!("/api/{m}")]["post"];
            assert!(op.is_object(), "{m} missing");
            for status in ["200", "400", "401", "413"] {
                assert!(op["responses"][status].is_object(), "{m} {status}");
            }
        }
        assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    }
}
