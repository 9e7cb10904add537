//! Why an API call failed, and the one function that turns it into what the caller sees.

use axum::http::StatusCode;
use switchboard_protocol::ErrorCode;

use super::wire::ErrorBody;
use crate::node::NodeError;
use crate::rules::RuleError;

/// Why a server API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No API key, or a wrong one.
    #[error("unauthorized")]
    Unauthorized,
    /// The method does not exist.
    #[error("method not found")]
    MethodNotFound,
    /// The body is larger than `api_max_body_size`.
    #[error("request body too large")]
    TooLarge,
    /// The body is not JSON, has fields of the wrong type, or misses required ones.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The node refused or failed the operation.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl ApiError {
    /// The one place an API error becomes what callers see: the HTTP status (when the
    /// call is a request of its own, not an item of a batch or broadcast) and the body.
    ///
    /// Mistakes in the request itself (key, method, size, shape) get a 4xx status;
    /// everything the node answers about the channel gets 200 with an `error` in the
    /// body, as Centrifugo does. Internal details stay in the logs.
    pub fn classify(&self) -> (StatusCode, ErrorBody) {
        let (status, code, message) = match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, None),
            Self::MethodNotFound => (StatusCode::NOT_FOUND, ErrorCode::MethodNotFound, None),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BadRequest,
                Some("bad request: body exceeds api_max_body_size".to_owned()),
            ),
            Self::BadRequest(why) => (
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                Some(format!("bad request: {why}")),
            ),
            Self::Node(e) => match e {
                NodeError::Channel(RuleError::InvalidName | RuleError::UnknownChannel) => {
                    (StatusCode::OK, ErrorCode::UnknownChannel, None)
                }
                NodeError::Channel(RuleError::PermissionDenied) => {
                    (StatusCode::OK, ErrorCode::PermissionDenied, None)
                }
                NodeError::NotAvailable => (StatusCode::OK, ErrorCode::NotAvailable, None),
                NodeError::UnrecoverablePosition => {
                    (StatusCode::OK, ErrorCode::UnrecoverablePosition, None)
                }
                NodeError::BadRequest(why) => (
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    Some(format!("bad request: {why}")),
                ),
                NodeError::Engine(err) => {
                    tracing::error!(error = %err, "server API: engine error");
                    (StatusCode::OK, ErrorCode::Internal, None)
                }
            },
        };
        let body = ErrorBody {
            code: code.code(),
            message: message.unwrap_or_else(|| code.message().to_owned()),
        };
        (status, body)
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        Self::Node(NodeError::Channel(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;

    #[test]
    fn request_mistakes_are_4xx_and_channel_answers_are_200() {
        let cases = [
            (ApiError::Unauthorized, 401, 101),
            (ApiError::MethodNotFound, 404, 104),
            (ApiError::TooLarge, 413, 107),
            (ApiError::BadRequest("x".into()), 400, 107),
            (NodeError::UnrecoverablePosition.into(), 200, 112),
            (RuleError::UnknownChannel.into(), 200, 102),
            (RuleError::InvalidName.into(), 200, 102),
            (NodeError::NotAvailable.into(), 200, 108),
            (NodeError::BadRequest("y".into()).into(), 400, 107),
        ];
        for (err, status, code) in cases {
            let (s, body) = err.classify();
            assert_eq!((s.as_u16(), body.code), (status, code), "{err:?}");
        }
    }

    #[test]
    fn engine_details_do_not_leak() {
        let err = ApiError::from(NodeError::Engine(EngineError::Unavailable(
            "redis://secret@host".into(),
        )));
        let (status, body) = err.classify();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.code, 100);
        assert!(!body.message.contains("secret"));
    }
}
