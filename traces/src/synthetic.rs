//! Realistic span batches for the store benchmark and `vigil-load spans-fill`: traces of a
//! small shop (gateway → orders → market/payments/inventory), 3 to 12 spans each, with the
//! attributes OpenTelemetry's HTTP and database instrumentations set, a `request_id` on the
//! root, SDK resource attributes, and about 2% error spans. Deterministic from a seed.

use serde_json::{json, Map};
use vigil_model::{Span, SpanEvent, SpanKind, SpanResource, StatusCode};

/// Services of the synthetic fleet.
pub const SERVICES: [&str; 6] = [
    "gateway",
    "orders",
    "market",
    "payments",
    "inventory",
    "users",
];

const ROUTES: [&str; 8] = [
    "GET /api/checkout",
    "POST /api/orders",
    "GET /api/orders/{id}",
    "GET /api/prices",
    "POST /api/payments",
    "GET /api/stock/{sku}",
    "GET /api/users/{id}",
    "PUT /api/cart",
];

/// A deterministic generator of span batches.
#[derive(Clone, Debug)]
pub struct SpanGenerator {
    state: u64,
    next_start_ns: i64,
    step_ns: i64,
    resources: Vec<SpanResource>,
    /// Spans generated but not yet returned, per service.
    pending: Vec<Vec<Span>>,
}

impl SpanGenerator {
    /// Returns a generator whose traces start at `start_ns`, `step_ns` apart.
    pub fn new(seed: u64, start_ns: i64, step_ns: i64) -> SpanGenerator {
        let resources = SERVICES
            .iter()
            .map(|service| {
                let value = json!({
                    "service.name": service,
                    "service.version": "1.4.2",
                    "service.instance.id": format!("{service}-7d9f8b6c5-x2k4p"),
                    "host.name": format!("node-{}", service.len()),
                    "telemetry.sdk.name": "opentelemetry",
                    "telemetry.sdk.language": "go",
                    "telemetry.sdk.version": "1.28.0",
                    "deployment.environment": "production",
                });
                SpanResource::new(value.as_object().cloned().unwrap_or_default())
            })
            .collect();
        SpanGenerator {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            next_start_ns: start_ns,
            step_ns: step_ns.max(1),
            resources,
            pending: Vec::new(),
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// Returns the spans of one trace, root first, and the trace's request ID.
    pub fn trace(&mut self) -> (Vec<Span>, String) {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        trace_id[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        let request_id = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            self.next_u64() as u32,
            self.below(0x10000),
            self.below(0x1000),
            self.below(0x1000),
            self.next_u64() & 0xffff_ffff_ffff
        );
        let start_ns = self.next_start_ns;
        self.next_start_ns += self.step_ns;
        let span_count = 3 + self.below(10) as usize;
        let mut spans: Vec<Span> = Vec::with_capacity(span_count);
        for index in 0..span_count {
            let service_index = if index == 0 {
                0
            } else {
                1 + self.below(SERVICES.len() as u64 - 1) as usize
            };
            let parent = if index == 0 {
                None
            } else {
                Some(self.below(index as u64) as usize)
            };
            let route = ROUTES[self.below(ROUTES.len() as u64) as usize];
            let offset_ns = (index as i64) * 1_500_000 + self.below(1_000_000) as i64;
            let duration_ns = 200_000 + self.below(80_000_000) as i64;
            let is_error = self.below(50) == 0;
            let kind = match (index, self.below(3)) {
                (0, _) => SpanKind::Server,
                (_, 0) => SpanKind::Client,
                (_, 1) => SpanKind::Internal,
                _ => SpanKind::Server,
            };
            let mut span_id = self.next_u64().to_be_bytes();
            if span_id == [0; 8] {
                span_id[7] = 1;
            }
            let mut attributes = Map::new();
            let (method, target) = route.split_once(' ').unwrap_or(("GET", route));
            attributes.insert("http.request.method".into(), json!(method));
            attributes.insert("http.route".into(), json!(target));
            attributes.insert(
                "http.response.status_code".into(),
                json!(if is_error { 500 } else { 200 }),
            );
            attributes.insert("server.address".into(), json!(SERVICES[service_index]));
            attributes.insert("network.protocol.version".into(), json!("1.1"));
            if kind == SpanKind::Internal {
                attributes.insert("db.system".into(), json!("postgresql"));
                attributes.insert(
                    "db.statement".into(),
                    json!("SELECT id, sku, quantity FROM stock WHERE sku = $1"),
                );
            }
            if index == 0 {
                attributes.insert("request_id".into(), json!(request_id));
                attributes.insert(
                    "user_agent.original".into(),
                    json!("Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0"),
                );
            }
            let mut events = Vec::new();
            if is_error {
                let exception = json!({
                    "exception.type": "TimeoutError",
                    "exception.message": "upstream request timed out after 30s",
                });
                events.push(SpanEvent {
                    time_unix_nano: start_ns + offset_ns + duration_ns,
                    name: "exception".to_string(),
                    attributes: exception.as_object().cloned().unwrap_or_default(),
                });
            }
            spans.push(Span {
                trace_id,
                span_id,
                parent_span_id: parent.map(|parent| spans[parent].span_id),
                service: SERVICES[service_index].to_string(),
                name: route.to_string(),
                kind,
                start_unix_nano: start_ns + offset_ns,
                duration_ns,
                status: if is_error {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                },
                status_message: if is_error {
                    "upstream timeout".to_string()
                } else {
                    String::new()
                },
                attributes,
                resource: self.resources[service_index].clone(),
                events,
                links: Vec::new(),
            });
        }
        (spans, request_id)
    }

    /// Returns a batch of `size` spans of one service, as one SDK exports them: spans of many
    /// traces, the other services' spans of those traces kept for their own batches. Also
    /// returns the request IDs of the traces started during the call.
    pub fn batch(&mut self, size: usize) -> (Vec<Span>, Vec<String>) {
        let size = size.max(1);
        if self.pending.is_empty() {
            self.pending = vec![Vec::new(); SERVICES.len()];
        }
        let mut request_ids = Vec::new();
        loop {
            if let Some(full) = self.pending.iter().position(|spans| spans.len() >= size) {
                let batch: Vec<Span> = self.pending[full].drain(..size).collect();
                return (batch, request_ids);
            }
            let (spans, request_id) = self.trace();
            request_ids.push(request_id);
            for span in spans {
                let service = SERVICES
                    .iter()
                    .position(|name| *name == span.service)
                    .unwrap_or(0);
                self.pending[service].push(span);
            }
        }
    }
}
