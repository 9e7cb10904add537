//! Delivering an endpoint's queue: batches of up to `batch_size` events, signed, POSTed
//! with the proxies' HTTP client, retried with backoff on a timeout, a network error,
//! 5xx, 408 or 429, and dropped from the queue only once the endpoint answered 2xx (or
//! refused them for good with another 4xx).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use super::{Endpoint, Inner};

/// The header carrying the body's signature: lowercase hex HMAC-SHA256 of the body
/// with the endpoint's secret.
pub const SIGNATURE_HEADER: &str = "X-Switchboard-Signature";

/// Lowercase hex HMAC-SHA256 of `body` with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length; new_from_slice can not fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How one attempt went.
enum Attempt {
    /// 2xx.
    Delivered,
    /// A 4xx other than 408 and 429: the endpoint will never take this batch.
    Refused(u16),
    /// Worth another try.
    Failed(String),
}

/// Delivers endpoint `index`'s queue until shutdown, then lets another node deliver it.
pub(super) async fn run(inner: Arc<Inner>, index: usize, shutdown: CancellationToken) {
    let Some(endpoint) = inner.endpoints.get(index) else {
        return;
    };
    deliver(&inner, endpoint, &shutdown).await;
    if let Err(e) = endpoint.queue.release(inner.cluster.as_ref()).await {
        tracing::warn!(endpoint = %endpoint.name, error = %e, "webhook delivery lock not released");
    }
}

async fn deliver(inner: &Inner, endpoint: &Endpoint, shutdown: &CancellationToken) {
    let config = &inner.config;
    let cluster = inner.cluster.as_ref();
    // The lock outlives one request: a holder that died frees it after at most this.
    let lease = config.timeout + inner.lease.max(Duration::from_secs(1));
    // An idle queue is looked at this often (new local events wake it at once).
    let idle = config
        .batch_delay
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        let held = match endpoint.queue.hold(cluster, lease).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(endpoint = %endpoint.name, error = %e, "webhook queue unavailable");
                false
            }
        };
        let batch = if held {
            peek_batch(inner, endpoint, shutdown).await
        } else {
            Vec::new()
        };
        if batch.is_empty() {
            // Cancel-safe: a notification or a sleep.
            tokio::select! {
                () = endpoint.wake.notified() => {}
                () = tokio::time::sleep(if held { idle } else { lease / 2 }) => {}
                () = shutdown.cancelled() => return,
            }
            continue;
        }
        let Some(outcome) = send_until_done(inner, endpoint, &batch, lease, shutdown).await else {
            continue;
        };
        match endpoint.queue.ack(cluster, batch.len()).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(endpoint = %endpoint.name,
                "another node took over webhook delivery; it sends this batch again"),
            Err(e) => tracing::warn!(endpoint = %endpoint.name, error = %e,
                "delivered webhook batch not removed from its queue; it will be sent again"),
        }
        let m = &inner.metrics.webhooks;
        match outcome {
            Attempt::Delivered => m.delivered.add(batch.len() as u64),
            Attempt::Refused(status) => {
                m.refused.add(batch.len() as u64);
                tracing::warn!(endpoint = %endpoint.name, status, events = batch.len(),
                    "webhook batch refused by the endpoint; dropped");
            }
            Attempt::Failed(_) => {}
        }
    }
}

/// Up to `batch_size` events, waiting up to `batch_delay` for a partial batch to fill.
async fn peek_batch(
    inner: &Inner,
    endpoint: &Endpoint,
    shutdown: &CancellationToken,
) -> Vec<String> {
    let config = &inner.config;
    let cluster = inner.cluster.as_ref();
    let read = || endpoint.queue.peek(cluster, config.batch_size);
    let first = match read().await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(endpoint = %endpoint.name, error = %e, "webhook queue unavailable");
            return Vec::new();
        }
    };
    if first.is_empty() || first.len() >= config.batch_size {
        return first;
    }
    tokio::select! {
        () = tokio::time::sleep(config.batch_delay) => {}
        () = shutdown.cancelled() => return Vec::new(),
    }
    read().await.unwrap_or(first)
}

/// POSTs one batch until it is delivered or refused for good. `None`: delivery moved
/// to another node (this one lost the lock) or shutdown.
async fn send_until_done(
    inner: &Inner,
    endpoint: &Endpoint,
    batch: &[String],
    lease: Duration,
    shutdown: &CancellationToken,
) -> Option<Attempt> {
    let config = &inner.config;
    let body = format!("{{\"events\":[{}]}}", batch.join(","));
    let signature = sign(endpoint.secret.as_bytes(), body.as_bytes());
    let mut backoff = config.min_backoff;
    loop {
        let started = Instant::now();
        match attempt(inner, endpoint, &body, &signature).await {
            Attempt::Failed(why) => {
                inner.metrics.webhooks.retried.inc();
                tracing::warn!(endpoint = %endpoint.name, error = %why, retry_in_ms = backoff.as_millis(),
                    "webhook delivery failed; retrying");
            }
            done => {
                inner.metrics.webhooks.latency.observe(started.elapsed());
                return Some(done);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return None,
        }
        backoff = next_backoff(backoff, config.max_backoff);
        if !endpoint
            .queue
            .hold(inner.cluster.as_ref(), lease)
            .await
            .unwrap_or(false)
        {
            return None;
        }
    }
}

/// The wait after `backoff`: doubled, at most `max`.
fn next_backoff(backoff: Duration, max: Duration) -> Duration {
    backoff.saturating_mul(2).min(max)
}

async fn attempt(inner: &Inner, endpoint: &Endpoint, body: &str, signature: &str) -> Attempt {
    let request = inner
        .http
        .post(&endpoint.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_owned())
        .send();
    match tokio::time::timeout(inner.config.timeout, request).await {
        Err(_) => Attempt::Failed("timed out".into()),
        Ok(Err(e)) => Attempt::Failed(crate::proxy::without_url(&e)),
        Ok(Ok(resp)) => {
            let status = resp.status();
            if status.is_success() {
                Attempt::Delivered
            } else if status.is_client_error()
                && status != reqwest::StatusCode::REQUEST_TIMEOUT
                && status != reqwest::StatusCode::TOO_MANY_REQUESTS
            {
                Attempt::Refused(status.as_u16())
            } else {
                Attempt::Failed(format!("HTTP status {}", status.as_u16()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let max = Duration::from_secs(1);
        let mut b = Duration::from_millis(200);
        let mut waits = Vec::new();
        for _ in 0..5 {
            waits.push(b.as_millis());
            b = next_backoff(b, max);
        }
        assert_eq!(waits, [200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn signs_as_rfc_4231_says() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
