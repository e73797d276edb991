//! Logs and traces. Readable log lines in development, JSON lines in
//! production (`OPENCLAW_LOG_FORMAT=json` or the production profile), and
//! OpenTelemetry spans exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. W3C trace context travels in
//! `traceparent`/`tracestate` headers and gRPC metadata, so one trace shows
//! edge → core → provider. `RUST_LOG` filters log lines; `OPENCLAW_TRACE_FILTER`
//! (default `info`) filters exported spans.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Keeps the exporter alive; dropping it flushes the spans not yet sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Flushing waits for the exporter task: let the runtime keep running it meanwhile.
            let flush = || provider.shutdown();
            let outcome = match tokio::runtime::Handle::try_current() {
                Ok(handle)
                    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
                {
                    tokio::task::block_in_place(flush)
                }
                _ => flush(),
            };
            if let Err(err) = outcome {
                eprintln!("telemetry: flushing spans failed: {err}");
            }
        }
    }

    /// True when spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs logging (and tracing export when configured) for `service`.
pub fn init(service: &'static str, json: bool) -> Telemetry {
    let filter = || {
        let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        // The Redis client reports every retry of a cluster failover as a warning (dozens a
        // second); the gateway says what matters itself. `RUST_LOG=redis=warn` brings them back.
        let spec = if spec.contains("redis") {
            spec
        } else {
            format!("{spec},redis=error")
        };
        EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info,redis=error"))
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().with_current_span(true).boxed()
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    // The endpoint may carry credentials (userinfo, a token parameter): logged without them.
    let shown = endpoint
        .as_deref()
        .map(crate::redact::url)
        .unwrap_or_default();
    let provider = endpoint
        .as_deref()
        .and_then(|endpoint| match exporter(service, endpoint) {
            Ok(provider) => Some(provider),
            Err(err) => {
                eprintln!("telemetry: OTLP export to {shown} is off: {err}");
                None
            }
        });
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        // Exported spans have their own filter, so quiet logs do not silence traces.
        .with(otel.map(|layer| {
            let traces = std::env::var("OPENCLAW_TRACE_FILTER").unwrap_or_else(|_| "info".into());
            layer.with_filter(EnvFilter::new(traces))
        }))
        .try_init();
    if provider.is_some() {
        tracing::info!(endpoint = %shown, "exporting traces over OTLP");
    }
    Telemetry { provider }
}

fn exporter(service: &'static str, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    // The gRPC exporter needs the Tokio runtime, so batches are sent from a task on it.
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// Writes the current span's trace context into outgoing headers or metadata.
pub fn inject(span: &tracing::Span, carrier: &mut dyn Injector) {
    TraceContextPropagator::new().inject_context(&span.context(), carrier);
}

/// Makes `span` a child of the trace context found in incoming headers or metadata.
pub fn adopt(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = TraceContextPropagator::new().extract(carrier);
    let _ = span.set_parent(parent);
}

/// `http` headers as a trace-context carrier.
pub struct HeaderCarrier<'a>(pub &'a mut axum::http::HeaderMap);

impl Injector for HeaderCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(key.as_bytes()),
            axum::http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Read-only `http` headers as a trace-context carrier.
pub struct HeaderSource<'a>(pub &'a axum::http::HeaderMap);

impl Extractor for HeaderSource<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// gRPC metadata as a trace-context carrier.
pub struct MetadataCarrier<'a>(pub &'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Read-only gRPC metadata as a trace-context carrier.
pub struct MetadataSource<'a>(pub &'a tonic::metadata::MetadataMap);

impl Extractor for MetadataSource<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
