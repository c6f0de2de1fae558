//! Log output (`--log-format text|json`) on stderr, filtered by `RUST_LOG` (default
//! `info`). JSON is one object per line: `timestamp` (RFC 3339, UTC), `level`,
//! `target`, `message`, and every field of the event under its own name, numbers as
//! numbers — so `jq 'select(.target == "tessera::request")'` finds the per-request lines.
//! A line that cannot be written (stderr a pipe nobody reads) is lost, and nothing else.

use std::fmt;

use serde_json::{Map, Number, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (`tracing`'s default format).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "--log-format must be `text` or `json`. Given: `{other}`"
            )),
        }
    }
}

/// Installs the process-wide logger (a second call does nothing).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A log write that fails (stderr a pipe whose reader is gone) loses that line only:
    // tracing-subscriber would report it with `eprintln!`, which panics then, in the
    // thread that logged (a request's worker, the drain, the exit deadline).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLines).try_init(),
    };
}

/// Formats each event as one JSON object.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writeln!(writer, "{}", json_line(event))
    }
}

/// The JSON object of `event`.
pub fn json_line(event: &Event<'_>) -> String {
    let mut timestamp = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    let meta = event.metadata();
    let mut fields = Map::new();
    fields.insert("timestamp".into(), Value::String(timestamp));
    fields.insert("level".into(), Value::String(meta.level().to_string()));
    fields.insert("target".into(), Value::String(meta.target().to_string()));
    event.record(&mut JsonFields(&mut fields));
    Value::Object(fields).to_string()
}

/// Collects an event's fields as JSON values.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl JsonFields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        self.0.insert(field.name().to_string(), value);
    }
}

impl Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let number = Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.put(field, number);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_become_one_json_object_per_line() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let missing: Option<&str> = None;
            tracing::info!(target: "t", id = %"r-1", n = 3u64, ms = 1.5, ok = true, missing, "done \"x\"");
            tracing::warn!("second");
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf8");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["target"], "t");
        assert_eq!(first["message"], "done \"x\"");
        assert_eq!(first["id"], "r-1");
        assert_eq!(first["n"], 3);
        assert_eq!(first["ms"], 1.5);
        assert_eq!(first["ok"], true);
        assert!(first.get("missing").is_none(), "{first}");
        assert!(first["timestamp"].as_str().is_some_and(|t| t.contains('T')));
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
