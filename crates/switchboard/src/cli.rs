//! The operator CLI's side of the server API: `switchboard publish`, `info`,
//! `presence` call a running server over HTTP, as any backend would.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};

/// The URL at which a server listening on `bind` is reached from this host: an
/// unspecified address (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn url_of_bind(bind: &str) -> String {
    match bind.parse::<SocketAddr>() {
        Ok(mut addr) => {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{addr}")
        }
        Err(_) => format!("http://{bind}"),
    }
}

/// Why a CLI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server could not be reached, or its answer could not be read.
    #[error("request to {url} failed: {source}")]
    Http {
        /// The URL called.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The server refused the request itself (bad key, malformed request, ...).
    #[error("server answered HTTP {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The error message from the body, or the body.
        message: String,
    },
    /// The API call failed (unknown channel, feature off, ...).
    #[error("API error {code}: {message}")]
    Api {
        /// Error code (see docs/api.md).
        code: u64,
        /// Message.
        message: String,
    },
}

/// A client of one server's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl ApiClient {
    /// A client of the server at `url` (e.g. `http://127.0.0.1:8000`) using API `key`.
    pub fn new(url: &str, key: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base: url.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
        }
    }

    /// Calls `method` with `params`; returns its `result`.
    ///
    /// # Errors
    /// [`CliError`] for an unreachable server, a refused request or an API error.
    pub async fn call(&self, method: &str, params: &Value) -> Result<Value, CliError> {
        let url = format!("{}/api/{method}", self.base);
        let http_err = |source| CliError::Http {
            url: url.clone(),
            source,
        };
        let resp = self
            .http
            .post(&url)
            .header("X-API-Key", &self.key)
            .json(params)
            .send()
            .await
            .map_err(http_err)?;
        let status = resp.status();
        let text = resp.text().await.map_err(http_err)?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let error = &body["error"];
        if !status.is_success() {
            return Err(CliError::Status {
                status: status.as_u16(),
                message: error["message"]
                    .as_str()
                    .map_or_else(|| text.trim().to_owned(), str::to_owned),
            });
        }
        if let Some(code) = error["code"].as_u64() {
            return Err(CliError::Api {
                code,
                message: error["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Ok(body.get("result").cloned().unwrap_or(body))
    }

    /// Publishes `data` into `channel`.
    ///
    /// # Errors
    /// See [`ApiClient::call`].
    pub async fn publish(&self, channel: &str, data: Value) -> Result<Value, CliError> {
        self.call("publish", &json!({"channel": channel, "data": data}))
            .await
    }

    /// The node's counts.
    ///
    /// # Errors
    /// See [`ApiClient::call`].
    pub async fn info(&self) -> Result<Value, CliError> {
        self.call("info", &json!({})).await
    }

    /// Who is subscribed to `channel`.
    ///
    /// # Errors
    /// See [`ApiClient::call`].
    pub async fn presence(&self, channel: &str) -> Result<Value, CliError> {
        self.call("presence", &json!({"channel": channel})).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_become_urls_reachable_here() {
        assert_eq!(url_of_bind("127.0.0.1:8000"), "http://127.0.0.1:8000");
        assert_eq!(url_of_bind("0.0.0.0:9000"), "http://127.0.0.1:9000");
        assert_eq!(url_of_bind("[::]:9000"), "http://[::1]:9000");
        assert_eq!(url_of_bind("gateway:80"), "http://gateway:80");
    }
}
