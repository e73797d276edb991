//! An OTLP/gRPC trace receiver in the test process: it records what the
//! gateway's processes export, so tests can look at real spans.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Clone, Default)]
pub struct Collector {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for the processes under test.
    pub endpoint: String,
    /// `(service name, trace id)` of every span received.
    spans: Arc<Mutex<Vec<(String, String)>>>,
    /// Every export request, rendered in full.
    exports: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector = Collector {
            endpoint: format!("http://{}", listener.local_addr().unwrap()),
            ..Default::default()
        };
        let server = collector.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(server))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        collector
    }

    pub fn spans(&self) -> Vec<(String, String)> {
        self.spans.lock().unwrap().clone()
    }

    pub fn exports(&self) -> Vec<String> {
        self.exports.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.exports
            .lock()
            .unwrap()
            .push(format!("{:?}", request.get_ref()));
        let mut spans = self.spans.lock().unwrap();
        for resource in &request.get_ref().resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    spans.push((service.clone(), trace));
                }
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}
