//! The trace of a world: tracing events stamped with simulated time, hashed and printed.
//!
//! [`TraceLayer`] is a `tracing` layer installed (per thread) for the length of one run. Every
//! event of fjord's crates (targets starting with `fjord`) at DEBUG or above is folded, with
//! its simulated timestamp and the label of the node span it happened in, into a running hash:
//! two runs of one seed must produce the same hash (`--check-determinism`). Optionally the
//! layer prints events (`--seed N`, `--verbose`), one line each:
//! `   12.345678s  INFO n2.1 fjord_sim::world: node starts`.
//!
//! Labels: everything a server node runs is labelled with its incarnation (`n2.1`: node 2,
//! incarnation 1), everything a client runs with the client (`c1`), and the rest `sim`. The
//! tasks of a node or client run inside [`Labelled`], which keeps the label in a thread-local
//! while it polls (two swaps per poll, where entering a span on every poll through
//! `Instrument` cost four lookups in the span registry); events that name a node's span
//! ([`node_span`], field `id`) as their explicit parent are labelled through the span.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::hash::Hasher;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Events at this level or above are hashed.
pub const HASH_LEVEL: Level = Level::DEBUG;

/// The running hash of a run's trace, and the simulated time of its last event.
#[derive(Clone, Debug, Default)]
pub struct TraceHash {
    hash: Arc<AtomicU64>,
    last_at_nanos: Arc<AtomicU64>,
}

impl TraceHash {
    pub fn value(&self) -> u64 {
        self.hash.load(Ordering::Relaxed)
    }

    /// Simulated time of the last hashed event.
    pub fn last_at(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.last_at_nanos.load(Ordering::Relaxed))
    }

    fn fold(&self, at: std::time::Duration, event: u64) {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.value());
        h.write_u64(event);
        self.hash.store(h.finish(), Ordering::Relaxed);
        self.last_at_nanos.store(
            u64::try_from(at.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Whether `meta` belongs to fjord's code (the trace ignores madsim's and libraries' events,
/// which carry process-global task ids).
fn is_fjord(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("fjord")
}

/// The label of a simulator span, kept in the span's extensions.
struct Label(String);

thread_local! {
    /// The label of the [`Labelled`] future being polled on this thread.
    static CURRENT: Cell<Option<Arc<str>>> = const { Cell::new(None) };
}

/// The label of the [`Labelled`] future being polled, if any.
fn current_label() -> Option<Arc<str>> {
    CURRENT.with(|c| {
        let label = c.take();
        c.set(label.clone());
        label
    })
}

/// The span of a server node incarnation labelled `label` (for events that name it as their
/// explicit parent; its tasks run in [`Labelled`] with the same label).
pub fn node_span(label: &str) -> tracing::Span {
    tracing::info_span!(target: "fjord_sim", "node", id = %label)
}

/// Puts a label in [`CURRENT`] for its lifetime, and gives it back (also when unwinding).
struct Enter<'a> {
    slot: &'a mut Option<Arc<str>>,
    previous: Option<Arc<str>>,
}

impl<'a> Enter<'a> {
    fn new(slot: &'a mut Option<Arc<str>>) -> Self {
        let previous = CURRENT.with(|c| c.replace(slot.take()));
        Enter { slot, previous }
    }
}

impl Drop for Enter<'_> {
    fn drop(&mut self) {
        *self.slot = CURRENT.with(|c| c.replace(self.previous.take()));
    }
}

/// A future whose events (those without an explicit parent) carry `label`, while it is
/// polled and while it is dropped (as `Instrument` does with its span).
pub struct Labelled<F: Future + Unpin> {
    future: Option<F>,
    label: Option<Arc<str>>,
}

impl<F: Future + Unpin> Labelled<F> {
    pub fn new(future: F, label: Arc<str>) -> Self {
        Labelled {
            future: Some(future),
            label: Some(label),
        }
    }
}

impl<F: Future + Unpin> Future for Labelled<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _enter = Enter::new(&mut this.label);
        let future = this.future.as_mut().expect("polled after completion");
        let out = Pin::new(future).poll(cx);
        if out.is_ready() {
            this.future = None;
        }
        out
    }
}

impl<F: Future + Unpin> Drop for Labelled<F> {
    fn drop(&mut self) {
        if self.future.is_some() {
            let _enter = Enter::new(&mut self.label);
            self.future = None;
        }
    }
}

/// Writes a value's `Debug` form into a hasher without allocating.
struct HashWriter<'a>(&'a mut std::hash::DefaultHasher);

impl fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

struct HashFields<'a>(&'a mut std::hash::DefaultHasher);

impl Visit for HashFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.write(field.name().as_bytes());
        let _ = write!(HashWriter(self.0), "{value:?}");
    }
}

/// Formats fields as `message k=v k=v`.
#[derive(Default)]
struct FormatFields {
    message: String,
    rest: String,
}

impl Visit for FormatFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

/// Collects the value of a span's `id` field.
#[derive(Default)]
struct SpanId(String);

impl Visit for SpanId {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "id" {
            let _ = write!(self.0, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "id" {
            self.0.push_str(value);
        }
    }
}

/// The layer: hashes fjord events and optionally prints them.
pub struct TraceLayer {
    hash: TraceHash,
    /// Print events at this level or above.
    print: Option<Level>,
}

impl TraceLayer {
    pub fn new(hash: TraceHash, print: Option<Level>) -> Self {
        TraceLayer { hash, print }
    }

    /// The most verbose level this layer wants.
    pub fn max_level(&self) -> Level {
        match self.print {
            Some(p) if p > HASH_LEVEL => p,
            _ => HASH_LEVEL,
        }
    }
}

impl<S> Layer<S> for TraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !is_fjord(attrs.metadata()) {
            return;
        }
        let mut label = SpanId::default();
        attrs.record(&mut label);
        if label.0.is_empty() {
            return;
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Label(label.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !is_fjord(meta) {
            return;
        }
        let at = madsim::time::TimeHandle::try_current()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let current = if event.is_contextual() {
            current_label()
        } else {
            None
        };
        let scoped;
        let label: &str = match &current {
            Some(label) => label,
            None => {
                scoped = ctx
                    .event_scope(event)
                    .and_then(|scope| {
                        scope
                            .into_iter()
                            .find_map(|span| span.extensions().get::<Label>().map(|l| l.0.clone()))
                    })
                    .unwrap_or_else(|| "sim".to_string());
                &scoped
            }
        };
        if *meta.level() <= HASH_LEVEL {
            let mut h = std::hash::DefaultHasher::new();
            h.write_u128(at.as_nanos());
            h.write(meta.level().as_str().as_bytes());
            h.write(meta.target().as_bytes());
            h.write(label.as_bytes());
            event.record(&mut HashFields(&mut h));
            self.hash.fold(at, h.finish());
        }
        if self.print.is_some_and(|p| *meta.level() <= p) {
            let mut fields = FormatFields::default();
            event.record(&mut fields);
            let line = format!(
                "{:>12.6}s {:>5} {label} {}: {}{}\n",
                at.as_secs_f64(),
                meta.level().as_str(),
                meta.target(),
                fields.message,
                fields.rest
            );
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }
}

/// Installs a [`TraceLayer`] as this thread's subscriber until the guard drops.
pub fn install(hash: TraceHash, print: Option<Level>) -> tracing::subscriber::DefaultGuard {
    use tracing_subscriber::layer::SubscriberExt;
    CURRENT.with(|c| c.set(None));
    let layer = TraceLayer::new(hash, print);
    let max = layer.max_level();
    let filter = tracing_subscriber::filter::filter_fn(move |meta| {
        is_fjord(meta) && (meta.is_span() || *meta.level() <= max)
    });
    let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter));
    tracing::subscriber::set_default(subscriber)
}
