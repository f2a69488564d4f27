//! How a matched rule (or the default route) is retried and timed out (§2.5): Istio's mesh
//! default retry policy, a rule's `retry` stanza, and `timeouts`. Pure; the caller runs
//! the retries and the timers.

use std::time::Duration;

use super::Rule;

/// How a request is retried (§2.5). `unavailable` and `cancelled` are gRPC statuses 14 and
/// 1 in response headers; `refused_stream` an HTTP/2 REFUSED_STREAM reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try; 0 = off.
    pub attempts: u32,
    pub on_connect_failure: bool,
    pub on_refused_stream: bool,
    pub on_unavailable: bool,
    pub on_cancelled: bool,
    /// Response status codes that are retried.
    pub codes: Vec<u16>,
    /// Base interval of Envoy's exponential backoff (jittered), 25 ms by default.
    pub backoff: Duration,
    /// 10 × `backoff`, Envoy's default cap.
    pub max_backoff: Duration,
    /// Retry on another endpoint than the ones tried (Envoy `previous_hosts`, 5 attempts).
    pub avoid_previous_hosts: bool,
}

impl RetryPolicy {
    /// Tries in all: the first and its retries (`attempts` is a route's, up to u32::MAX).
    pub fn tries(&self) -> u32 {
        self.attempts.saturating_add(1)
    }

    pub fn off() -> RetryPolicy {
        RetryPolicy {
            attempts: 0,
            on_connect_failure: false,
            on_refused_stream: false,
            on_unavailable: false,
            on_cancelled: false,
            codes: Vec::new(),
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_BACKOFF * 10,
            avoid_previous_hosts: false,
        }
    }
}

const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// The retry policy for a matched rule, or for the default route (`None`): without a
/// `retry` stanza Istio's mesh default — 2 retries on connect-failure, refused-stream,
/// unavailable, cancelled; with one, `attempts` (default 2, 0 = off), the same conditions
/// plus `codes`, `backoff` as the base interval.
pub fn retry_policy(rule: Option<&Rule>) -> RetryPolicy {
    let default = RetryPolicy {
        attempts: 2,
        on_connect_failure: true,
        on_refused_stream: true,
        on_unavailable: true,
        on_cancelled: true,
        avoid_previous_hosts: true,
        ..RetryPolicy::off()
    };
    let Some(retry) = rule.and_then(|r| r.retry.as_ref()) else {
        return default;
    };
    let attempts = retry.attempts.unwrap_or(2);
    if attempts == 0 {
        return RetryPolicy::off();
    }
    let backoff = retry
        .backoff
        .filter(|b| !b.is_zero())
        .unwrap_or(DEFAULT_BACKOFF);
    RetryPolicy {
        attempts,
        codes: retry.codes.clone(),
        backoff,
        max_backoff: backoff * 10,
        ..default
    }
}

/// (whole-request timeout, per-try timeout) for a matched rule (§2.5); zero durations are
/// "none"; no default. `backendRequest` is the per-try timeout when the rule has a `retry`
/// stanza, otherwise it replaces the request timeout (Istio). With `retry: {attempts: 0}`
/// it still bounds the single try (Istio drops it there; the spec says it bounds each try).
pub fn timeouts(rule: Option<&Rule>) -> (Option<Duration>, Option<Duration>) {
    let Some(rule) = rule else {
        return (None, None);
    };
    let request = rule.timeouts.request.filter(|d| !d.is_zero());
    let backend = rule.timeouts.backend_request.filter(|d| !d.is_zero());
    if rule.retry.is_some() {
        (request, backend)
    } else {
        (backend.or(request), None)
    }
}
