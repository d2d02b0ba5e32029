//! The trace of a world: tracing events stamped with simulated time, hashed and printed.
//!
//! [`TraceLayer`] is a `tracing` layer installed (per thread) for the length of one run. Every
//! event of fjord's crates (targets starting with `fjord`) at DEBUG or above is folded, with
//! its simulated timestamp and the label of the node span it happened in, into a running hash:
//! two runs of one seed must produce the same hash (`--check-determinism`). Optionally the
//! layer prints events (`--seed N`, `--verbose`), one line each:
//! `   12.345678s  INFO n2.1 fjord_sim::world: node starts`.
//!
//! Spans labelled by the simulator: `node` spans (field `id = "n2.1"`: node 2, incarnation 1)
//! wrap everything a server node runs; `client` spans (`id = "c1"`) everything a client runs.

use std::fmt::{self, Write as _};
use std::hash::Hasher;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
        let label = ctx
            .event_scope(event)
            .and_then(|scope| {
                scope
                    .into_iter()
                    .find_map(|span| span.extensions().get::<Label>().map(|l| l.0.clone()))
            })
            .unwrap_or_else(|| "sim".to_string());
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
    let layer = TraceLayer::new(hash, print);
    let max = layer.max_level();
    let filter = tracing_subscriber::filter::filter_fn(move |meta| {
        is_fjord(meta) && (meta.is_span() || *meta.level() <= max)
    });
    let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter));
    tracing::subscriber::set_default(subscriber)
}
