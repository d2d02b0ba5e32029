//! The producer's background task: runs [`ProducerState::step`], sends what it plans, and
//! feeds outcomes back. Requests, the metadata refresh and InitProducerId run concurrently
//! as futures inside this one task, so the state is only touched between awaits.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use fjord_replication::{BoxFuture, Instant};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, ProducerId};

use super::state::{Outcome, RequestPlan};
use super::{Acks, Shared};
use crate::client::cluster::Client;
use crate::client::error::Error;

enum Event {
    Produce(RequestPlan, Outcome),
    Metadata(Result<(), Error>),
    ProducerId(Result<(i64, i16), Error>),
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Retry pacing of one kind of background call.
#[derive(Default)]
struct Pacing {
    busy: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Pacing {
    fn may_start(&self, now: Instant) -> bool {
        !self.busy && self.retry_at.is_none_or(|at| at <= now)
    }

    fn done(&mut self, client: &Client, now: Instant, ok: bool) {
        self.busy = false;
        if ok {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        // Even a successful refresh is not repeated sooner than the backoff: a topic being
        // created would otherwise be asked for in a tight loop.
        let delay = client.retry_delay(self.failures.saturating_sub(1));
        self.retry_at = now.checked_add(delay);
    }
}

pub(super) async fn run(shared: Arc<Shared>) {
    let client = shared.client.clone();
    let clock = client.clock().clone();
    let request_timeout = client.config().request_timeout;
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Event>> = FuturesUnordered::new();
    let mut metadata = Pacing::default();
    let mut producer_id = Pacing::default();
    loop {
        let now = clock.now();
        let snapshot = client.metadata();
        let (step, waiting_topics, pending) = {
            let mut state = shared.state();
            let step = state.step(now, &snapshot);
            (step, state.waiting_topics(), state.pending_records())
        };
        client.register_topics(waiting_topics.iter().map(String::as_str));
        for plan in step.requests {
            in_flight.push(Box::pin(produce(client.clone(), plan, request_timeout)));
        }
        let mut wake_at = step.wake_at;
        let want_metadata = step.want_metadata || (pending > 0 && client.metadata_needs_refresh());
        if want_metadata {
            if metadata.may_start(now) {
                metadata.busy = true;
                let client = client.clone();
                in_flight.push(Box::pin(async move {
                    Event::Metadata(client.refresh_metadata().await.map(|_| ()))
                }));
            } else if !metadata.busy {
                wake_at = earliest(wake_at, metadata.retry_at);
            }
        }
        if step.want_producer_id {
            if producer_id.may_start(now) {
                producer_id.busy = true;
                let client = client.clone();
                in_flight.push(Box::pin(async move {
                    Event::ProducerId(init_producer_id(&client).await)
                }));
            } else if !producer_id.busy {
                wake_at = earliest(wake_at, producer_id.retry_at);
            }
        }
        if step.finished && in_flight.is_empty() {
            tracing::debug!("kafka producer: sender stopped");
            return;
        }
        let mut sleep = wake_at.map(|at| clock.sleep(at.saturating_duration_since(now)));
        let mut notified = std::pin::pin!(shared.notify.notified());
        let event = futures::future::poll_fn(|cx| {
            if !in_flight.is_empty() {
                if let Poll::Ready(Some(event)) = in_flight.poll_next_unpin(cx) {
                    return Poll::Ready(Some(event));
                }
            }
            if notified.as_mut().poll_unpin(cx).is_ready() {
                return Poll::Ready(None);
            }
            if let Some(sleep) = sleep.as_mut() {
                if sleep.poll_unpin(cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            Poll::Pending
        })
        .await;
        let now = clock.now();
        match event {
            None => {}
            Some(Event::Produce(plan, outcome)) => {
                let stale = shared.state().on_outcome(plan, outcome, now);
                if stale {
                    client.request_metadata_update();
                }
            }
            Some(Event::Metadata(result)) => {
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "kafka producer: metadata refresh failed");
                }
                metadata.done(&client, now, result.is_ok());
            }
            Some(Event::ProducerId(result)) => match result {
                Ok(id) => {
                    producer_id.done(&client, now, true);
                    producer_id.retry_at = None;
                    shared.state().on_producer_id(Ok(id));
                }
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, "kafka producer: InitProducerId failed, retrying");
                    producer_id.done(&client, now, false);
                }
                Err(e) => {
                    producer_id.done(&client, now, false);
                    shared.state().on_producer_id(Err(e.to_string()));
                }
            },
        }
    }
}

async fn produce(client: Client, plan: RequestPlan, timeout: Duration) -> Event {
    let outcome = send_plan(&client, &plan, timeout).await;
    Event::Produce(plan, outcome)
}

async fn send_plan(client: &Client, plan: &RequestPlan, timeout: Duration) -> Outcome {
    let not_sent = |error: String| Outcome::Failed {
        written: false,
        error,
    };
    let Some(addr) = client.broker_address(plan.node) else {
        return not_sent(format!("broker {} unknown", plan.node));
    };
    let conn = match client.connection(&addr).await {
        Ok(conn) => conn,
        Err(e) => return not_sent(e.to_string()),
    };
    if let Err(e) = conn.version_for(ApiKey::Produce) {
        return not_sent(e.to_string());
    }
    let request = plan.request(timeout);
    if plan.acks == Acks::None {
        return match conn.send_only(request).await {
            Ok(()) => Outcome::Sent,
            Err(e) => {
                client.connection_failed(&conn, &e).await;
                Outcome::Failed {
                    written: true,
                    error: e.to_string(),
                }
            }
        };
    }
    match client.call_on(&conn, &|_| request.clone(), None).await {
        Ok(response) => Outcome::Response(response),
        Err(e) => Outcome::Failed {
            written: true,
            error: e.to_string(),
        },
    }
}

/// Asks any broker for a producer id (non-transactional: a fresh id every time).
async fn init_producer_id(client: &Client) -> Result<(i64, i16), Error> {
    let response = client
        .call_any(|_| {
            InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(i32::MAX)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        })
        .await?;
    if let Some(e) = Error::from_code(response.error_code, None) {
        return Err(e);
    }
    Ok((response.producer_id.0, response.producer_epoch))
}
