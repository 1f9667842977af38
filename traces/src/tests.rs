//! Store, query and HTTP tests over a real SQLite store in a temporary directory; the router
//! is driven in-process with `oneshot`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode as HttpStatus};
use serde_json::{json, Value};
use tower::ServiceExt;
use vigil_model::{
    hex_id, LogRecord, Span, SpanEvent, SpanKind, SpanResource, SpanSink, StatusCode,
};

use crate::api::CorrelatedLogs;
use crate::query::TraceQuery;
use crate::{router, SpanStore, SpanStoreOptions};

const BASE_NS: i64 = 1_700_000_000_000_000_000;
const TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];

fn span(
    service: &str,
    name: &str,
    span_id: u8,
    parent: Option<u8>,
    offset_ms: i64,
    duration_ms: i64,
) -> Span {
    let mut span = Span {
        trace_id: TRACE,
        span_id: [0, 0, 0, 0, 0, 0, 0, span_id],
        parent_span_id: parent.map(|parent| [0, 0, 0, 0, 0, 0, 0, parent]),
        service: service.to_string(),
        name: name.to_string(),
        kind: SpanKind::Server,
        start_unix_nano: BASE_NS + offset_ms * 1_000_000,
        duration_ns: duration_ms * 1_000_000,
        ..Span::default()
    };
    let resource = SpanResource::make_mut(&mut span.resource);
    resource.insert("service.name".into(), json!(service));
    resource.insert("host.name".into(), json!(format!("{service}-1")));
    span
}

/// gateway → orders → market, with a request ID on the gateway span; the orders client span
/// fails. Each service writes its own batch, as three SDKs would.
fn three_service_batches() -> Vec<Vec<Span>> {
    let mut gateway = span("gateway", "GET /checkout", 1, None, 0, 120);
    gateway
        .attributes
        .insert("request_id".into(), json!("req-7f3a"));
    gateway
        .attributes
        .insert("http.status_code".into(), json!(200));
    let mut orders = span("orders", "POST /orders", 2, Some(1), 10, 90);
    orders
        .attributes
        .insert("http.status_code".into(), json!(200));
    let mut orders_client = span("orders", "GET /price", 3, Some(2), 20, 40);
    orders_client.kind = SpanKind::Client;
    orders_client.status = StatusCode::Error;
    orders_client.status_message = "timeout".into();
    orders_client.events.push(SpanEvent {
        time_unix_nano: BASE_NS + 60_000_000,
        name: "exception".into(),
        attributes: json!({"exception.message": "deadline exceeded"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    });
    let market = span("market", "GET /price", 4, Some(3), 25, 30);
    vec![vec![market], vec![orders, orders_client], vec![gateway]]
}

fn open(directory: &std::path::Path) -> Arc<SpanStore> {
    SpanStore::open(directory, SpanStoreOptions::default()).unwrap()
}

fn window() -> (i64, i64) {
    (BASE_NS - 1_000_000_000, BASE_NS + 1_000_000_000)
}

fn query() -> TraceQuery {
    let (start_ns, end_ns) = window();
    TraceQuery {
        start_ns,
        end_ns,
        limit: 20,
        ..TraceQuery::default()
    }
}

fn stored_three_service_trace() -> (tempfile::TempDir, Arc<SpanStore>) {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    for batch in three_service_batches() {
        store.write(batch).unwrap();
    }
    (directory, store)
}

#[test]
fn a_trace_comes_back_whole_with_parent_links() {
    let (_directory, store) = stored_three_service_trace();
    let spans = store.trace(&TRACE).unwrap();
    let links: Vec<(u8, Option<u8>, &str)> = spans
        .iter()
        .map(|span| {
            (
                span.span_id[7],
                span.parent_span_id.map(|parent| parent[7]),
                span.service.as_str(),
            )
        })
        .collect();
    assert_eq!(
        links,
        vec![
            (1, None, "gateway"),
            (2, Some(1), "orders"),
            (3, Some(2), "orders"),
            (4, Some(3), "market")
        ]
    );
    assert_eq!(spans[2].events[0].name, "exception");
    assert!(store.trace(&[9; 16]).unwrap().is_empty());
}

#[test]
fn search_finds_by_service_operation_tag_and_duration() {
    let (_directory, store) = stored_three_service_trace();
    let find = |query: TraceQuery| store.find_trace_ids(&query).unwrap();
    assert_eq!(
        find(TraceQuery {
            service: Some("market".into()),
            ..query()
        }),
        vec![TRACE]
    );
    assert_eq!(
        find(TraceQuery {
            service: Some("orders".into()),
            operation: Some("GET /price".into()),
            ..query()
        }),
        vec![TRACE]
    );
    assert_eq!(
        find(TraceQuery {
            operation: Some("GET /price".into()),
            ..query()
        }),
        vec![TRACE]
    );
    assert!(find(TraceQuery {
        service: Some("orders".into()),
        operation: Some("GET /checkout".into()),
        ..query()
    })
    .is_empty());
    assert_eq!(
        find(TraceQuery {
            service: Some("gateway".into()),
            tags: vec![("http.status_code".into(), "200".into())],
            ..query()
        }),
        vec![TRACE]
    );
    assert_eq!(
        find(TraceQuery {
            tags: vec![("request_id".into(), "req-7f3a".into())],
            ..query()
        }),
        vec![TRACE]
    );
    assert!(find(TraceQuery {
        tags: vec![("request_id".into(), "req-other".into())],
        ..query()
    })
    .is_empty());
    assert_eq!(
        find(TraceQuery {
            service: Some("orders".into()),
            tags: vec![("error".into(), "true".into())],
            ..query()
        }),
        vec![TRACE]
    );
    assert!(find(TraceQuery {
        service: Some("market".into()),
        tags: vec![("error".into(), "true".into())],
        ..query()
    })
    .is_empty());
    // The market span takes 30 ms; gateway 120 ms.
    assert!(find(TraceQuery {
        service: Some("market".into()),
        min_duration_ns: Some(31_000_000),
        ..query()
    })
    .is_empty());
    assert_eq!(
        find(TraceQuery {
            service: Some("gateway".into()),
            min_duration_ns: Some(100_000_000),
            ..query()
        }),
        vec![TRACE]
    );
    assert!(find(TraceQuery {
        service: Some("gateway".into()),
        max_duration_ns: Some(100_000_000),
        ..query()
    })
    .is_empty());
    // Outside the time window.
    assert!(find(TraceQuery {
        service: Some("gateway".into()),
        start_ns: BASE_NS + 1,
        ..query()
    })
    .is_empty());

    let summaries = store
        .search(&TraceQuery {
            service: Some("market".into()),
            ..query()
        })
        .unwrap();
    assert_eq!(summaries.len(), 1);
    let summary = &summaries[0];
    assert_eq!(
        (summary.root_service.as_str(), summary.root_name.as_str()),
        ("gateway", "GET /checkout")
    );
    assert_eq!((summary.span_count, summary.error_count), (4, 1));
    assert_eq!(summary.services, ["gateway", "market", "orders"]);
    assert_eq!(summary.duration_ns, 120_000_000);
}

#[test]
fn search_returns_newest_traces_first_up_to_the_limit() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    let mut batch = Vec::new();
    for index in 0..50u8 {
        let mut root = span("gateway", "GET /", 1, None, i64::from(index), 5);
        root.trace_id = [index; 16];
        batch.push(root);
    }
    store.write(batch).unwrap();
    let found = store
        .find_trace_ids(&TraceQuery {
            service: Some("gateway".into()),
            limit: 3,
            ..query()
        })
        .unwrap();
    assert_eq!(found, vec![[49; 16], [48; 16], [47; 16]]);
}

/// A root span of trace `[id; 16]` of the gateway, `offset_ms` after `BASE_NS`.
fn gateway_root(id: u8, offset_ms: i64) -> Span {
    let mut root = span("gateway", "GET /", 1, None, offset_ms, 5);
    root.trace_id = [id; 16];
    root
}

#[test]
fn search_orders_traces_by_their_latest_matching_span_across_index_rows() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    // Trace 1 has spans 50 s apart (one index row, keyed by the later); traces 2 and 3 come
    // in later writes with single spans between them.
    let mut early = gateway_root(1, 0);
    early.span_id = [1; 8];
    let mut late = gateway_root(1, 50_000);
    late.span_id = [2; 8];
    store.write(vec![early, late]).unwrap();
    store.write(vec![gateway_root(2, 40_000)]).unwrap();
    store.write(vec![gateway_root(3, 45_000)]).unwrap();
    let search = |start_ms: i64, end_ms: i64, limit: usize| {
        store
            .find_trace_ids(&TraceQuery {
                service: Some("gateway".into()),
                start_ns: BASE_NS + start_ms * 1_000_000,
                end_ns: BASE_NS + end_ms * 1_000_000,
                limit,
                ..TraceQuery::default()
            })
            .unwrap()
    };
    assert_eq!(search(0, 100_000, 2), vec![[1; 16], [3; 16]]);
    assert_eq!(search(0, 100_000, 3), vec![[1; 16], [3; 16], [2; 16]]);
    // Only the earlier span of trace 1 is in this window.
    assert_eq!(search(0, 30_000, 20), vec![[1; 16]]);
    assert_eq!(search(41_000, 44_000, 20), Vec::<[u8; 16]>::new());
}

/// Single-span traces of two services written with starts in random order (as exports of
/// many SDK instances interleave), over several index blocks per service and across a
/// reopening of the store: every search returns exactly the newest `limit` traces started in
/// its window, the ones an exhaustive scan of what was written finds.
#[test]
fn search_over_out_of_order_starts_equals_an_exhaustive_scan() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let mut runner = TestRunner::new(Config {
        cases: 6,
        ..Config::default()
    });
    let case = (
        Just(()).prop_perturb(|(), mut rng| {
            // Distinct starts (ms after BASE_NS), written in the order of start plus up to
            // 10 s of delay each.
            let mut starts: Vec<(i64, i64)> = (0..1_500)
                .map(|index| (index * 50 + rng.random_range(0..10_000), index * 50))
                .collect();
            starts.sort_unstable();
            starts
                .into_iter()
                .map(|(_, start)| start)
                .collect::<Vec<i64>>()
        }),
        proptest::collection::vec((0i64..75_000, 0i64..75_000, 1usize..40), 12),
    );
    runner
        .run(&case, |(starts, windows)| {
            let directory = tempfile::tempdir().unwrap();
            let mut store = open(directory.path());
            let mut written: Vec<(i64, [u8; 16], &str)> = Vec::new();
            for (batch_index, batch) in starts.chunks(64).enumerate() {
                if batch_index == starts.len() / 128 {
                    drop(store);
                    store = open(directory.path());
                }
                let mut spans = Vec::new();
                for start_ms in batch {
                    let service = if start_ms % 3 == 0 {
                        "orders"
                    } else {
                        "gateway"
                    };
                    let mut root = span(service, "GET /", 1, None, *start_ms, 5);
                    root.trace_id[..8].copy_from_slice(&start_ms.to_be_bytes());
                    written.push((*start_ms, root.trace_id, service));
                    spans.push(root);
                }
                store.write(spans).unwrap();
            }
            for (from, to, limit) in windows {
                let (start_ms, end_ms) = (from.min(to), from.max(to));
                for service in [None, Some("gateway"), Some("orders")] {
                    let mut expected: Vec<(i64, [u8; 16])> = written
                        .iter()
                        .filter(|(start, _, of)| {
                            (start_ms..=end_ms).contains(start) && service.is_none_or(|s| s == *of)
                        })
                        .map(|(start, trace_id, _)| (*start, *trace_id))
                        .collect();
                    expected.sort_by_key(|(start, _)| std::cmp::Reverse(*start));
                    let expected: Vec<[u8; 16]> =
                        expected.into_iter().take(limit).map(|(_, id)| id).collect();
                    let found = store
                        .find_trace_ids(&TraceQuery {
                            service: service.map(str::to_string),
                            start_ns: BASE_NS + start_ms * 1_000_000,
                            end_ns: BASE_NS + end_ms * 1_000_000,
                            limit,
                            ..TraceQuery::default()
                        })
                        .unwrap();
                    prop_assert_eq!(
                        found,
                        expected,
                        "{:?} {}..={} limit {}",
                        service,
                        start_ms,
                        end_ms,
                        limit
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn spans_of_one_trace_hours_apart_are_found_in_either_window() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    let mut first = gateway_root(9, 0);
    first.span_id = [1; 8];
    let mut child = span("gateway", "GET /later", 2, Some(1), 3 * 3_600_000, 5);
    child.trace_id = [9; 16];
    store.write(vec![first, child]).unwrap();
    for (start_ms, end_ms, operation) in [
        (-1_000, 1_000, "GET /"),
        (3 * 3_600_000 - 1_000, 3 * 3_600_000 + 1_000, "GET /later"),
    ] {
        let query = TraceQuery {
            service: Some("gateway".into()),
            operation: Some(operation.into()),
            start_ns: BASE_NS + start_ms * 1_000_000,
            end_ns: BASE_NS + end_ms * 1_000_000,
            limit: 20,
            ..TraceQuery::default()
        };
        assert_eq!(store.find_trace_ids(&query).unwrap(), vec![[9; 16]]);
        let wrong_operation = TraceQuery {
            operation: Some(
                if operation == "GET /" {
                    "GET /later"
                } else {
                    "GET /"
                }
                .into(),
            ),
            ..query
        };
        assert!(store.find_trace_ids(&wrong_operation).unwrap().is_empty());
    }
    assert_eq!(store.trace(&[9; 16]).unwrap().len(), 2);
}

#[test]
fn a_partition_of_an_older_layout_is_left_unread_and_a_new_head_written() {
    let directory = tempfile::tempdir().unwrap();
    let older = directory.path().join("spans-0000000001000.db");
    rusqlite::Connection::open(&older)
        .unwrap()
        .execute_batch("CREATE TABLE chunks (id INTEGER PRIMARY KEY, trace_id BLOB, body BLOB);")
        .unwrap();
    let store = open(directory.path());
    for batch in three_service_batches() {
        store.write(batch).unwrap();
    }
    assert_eq!(store.trace(&TRACE).unwrap().len(), 4);
    assert_eq!(store.disk_usage().0, 1);
    assert!(older.exists(), "the older file is not deleted");
}

#[test]
fn dependencies_show_the_two_cross_service_edges() {
    let (_directory, store) = stored_three_service_trace();
    let (start_ns, end_ns) = window();
    let graph = store.dependencies(start_ns, end_ns).unwrap();
    let edges: Vec<(&str, &str, u64, u64)> = graph
        .edges
        .iter()
        .map(|edge| {
            (
                edge.parent.as_str(),
                edge.child.as_str(),
                edge.call_count,
                edge.error_count,
            )
        })
        .collect();
    assert_eq!(
        edges,
        vec![("gateway", "orders", 1, 0), ("orders", "market", 1, 0)]
    );
    assert!(!graph.truncated);
}

#[test]
fn correlation_finds_traces_by_request_id_and_by_trace_id() {
    let (_directory, store) = stored_three_service_trace();
    let by_request = store.correlate("req-7f3a").unwrap();
    assert_eq!(by_request.trace_ids, vec![TRACE]);
    assert_eq!(by_request.spans.len(), 4);
    let by_trace = store.correlate(&hex_id(&TRACE)).unwrap();
    assert_eq!(by_trace.trace_ids, vec![TRACE]);
    assert!(store.correlate("req-unknown").unwrap().trace_ids.is_empty());
}

#[test]
fn services_and_operations_are_listed() {
    let (_directory, store) = stored_three_service_trace();
    assert_eq!(store.services().unwrap(), ["gateway", "market", "orders"]);
    let operations: Vec<(String, String)> = store
        .operations("orders")
        .unwrap()
        .into_iter()
        .map(|operation| (operation.name, operation.kind))
        .collect();
    assert_eq!(
        operations,
        vec![
            ("GET /price".to_string(), "client".to_string()),
            ("POST /orders".to_string(), "server".to_string())
        ]
    );
}

#[test]
fn written_spans_survive_reopening_and_a_retried_batch_is_not_doubled() {
    let directory = tempfile::tempdir().unwrap();
    {
        let store = open(directory.path());
        for batch in three_service_batches() {
            store.write(batch.clone()).unwrap();
            store.write(batch).unwrap();
        }
    }
    // Reopened: the chunks (only in the recent index before) are indexed from the file.
    let store = open(directory.path());
    assert_eq!(store.trace(&TRACE).unwrap().len(), 4);
    assert_eq!(store.correlate("req-7f3a").unwrap().trace_ids, vec![TRACE]);
    assert_eq!(store.services().unwrap().len(), 3);
    // Names loaded from the file: writing the same services again reuses their IDs.
    store.write(three_service_batches().remove(0)).unwrap();
    assert_eq!(store.services().unwrap().len(), 3);
}

#[test]
fn traces_are_found_before_and_after_their_index_entries_are_merged_into_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let options = SpanStoreOptions {
        recent_index_entries: 3,
        ..SpanStoreOptions::default()
    };
    let store = SpanStore::open(directory.path(), options.clone()).unwrap();
    let mut batches = three_service_batches().into_iter();
    // The market and orders chunks (two entries, under the limit) are found in memory.
    store.write(batches.next().unwrap()).unwrap();
    store.write(batches.next().unwrap()).unwrap();
    assert_eq!(store.trace(&TRACE).unwrap().len(), 3);
    // The gateway chunk and its request ID reach the limit: all four entries go to the file.
    store.write(batches.next().unwrap()).unwrap();
    assert_eq!(store.trace(&TRACE).unwrap().len(), 4);
    assert_eq!(store.correlate("req-7f3a").unwrap().spans.len(), 4);
    drop(store);
    let reopened = SpanStore::open(directory.path(), options).unwrap();
    assert_eq!(reopened.trace(&TRACE).unwrap().len(), 4);
    assert_eq!(
        reopened.correlate("req-7f3a").unwrap().trace_ids,
        vec![TRACE]
    );
}

#[test]
fn retention_drops_old_partitions_and_queries_span_partitions() {
    let directory = tempfile::tempdir().unwrap();
    let options = SpanStoreOptions {
        partition_duration: Duration::ZERO,
        retention: Duration::from_secs(3_600),
        ..SpanStoreOptions::default()
    };
    let store = SpanStore::open(directory.path(), options.clone()).unwrap();
    // Every write starts a partition: the trace is spread over three files.
    for batch in three_service_batches() {
        store.write(batch).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let (partitions, bytes) = store.disk_usage();
    assert!(partitions >= 3, "{partitions} partitions");
    assert!(bytes > 0);
    assert_eq!(store.trace(&TRACE).unwrap().len(), 4);
    let (start_ns, end_ns) = window();
    assert_eq!(store.dependencies(start_ns, end_ns).unwrap().edges.len(), 2);
    assert_eq!(store.correlate("req-7f3a").unwrap().spans.len(), 4);

    // Nothing is old yet.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(store.enforce_retention(now).unwrap(), 0);
    // Two hours later every partition but the head is past retention.
    let dropped = store.enforce_retention(now + 2 * 3_600_000).unwrap();
    assert_eq!(dropped, partitions - 1);
    assert_eq!(store.disk_usage().0, 1);
    drop(store);
    let files = std::fs::read_dir(directory.path()).unwrap().count();
    let reopened = SpanStore::open(directory.path(), options).unwrap();
    assert_eq!(reopened.disk_usage().0, 1, "{files} files left");
}

#[test]
fn size_retention_keeps_the_store_under_its_limit() {
    let directory = tempfile::tempdir().unwrap();
    let options = SpanStoreOptions {
        retention_size: 400_000,
        ..SpanStoreOptions::default()
    };
    let store = SpanStore::open(directory.path(), options).unwrap();
    let mut traces_written = 0u32;
    for round in 0..12u32 {
        let mut batch = Vec::new();
        for index in 0..200u32 {
            let mut root = span("gateway", "GET /", 1, None, i64::from(index), 5);
            let id = round * 1_000 + index;
            root.trace_id[..4].copy_from_slice(&id.to_be_bytes());
            root.attributes
                .insert("payload".into(), json!("x".repeat(200)));
            batch.push(root);
            traces_written += 1;
        }
        store.write(batch).unwrap();
        store.enforce_retention(0).unwrap();
    }
    let (_, bytes) = store.disk_usage();
    assert!(bytes <= 400_000 + 400_000 / 4, "{bytes} bytes on disk");
    assert!(traces_written > 0);
    // The newest spans are kept.
    let mut newest = [0u8; 16];
    newest[..4].copy_from_slice(&(11_u32 * 1_000 + 199).to_be_bytes());
    newest[4..].copy_from_slice(&TRACE[4..]);
    assert_eq!(store.trace(&newest).unwrap().len(), 1);
}

struct FixedLogs(Vec<LogRecord>);

impl CorrelatedLogs for FixedLogs {
    fn find(&self, id: &str, _limit: usize) -> Result<Vec<LogRecord>, String> {
        Ok(self
            .0
            .iter()
            .filter(|record| record.correlation_id == id || record.trace_id == id)
            .cloned()
            .collect())
    }
}

async fn get(app: &axum::Router, uri: &str) -> (HttpStatus, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn app(store: Arc<SpanStore>) -> axum::Router {
    let logs = vec![
        LogRecord {
            timestamp_ns: BASE_NS + 15_000_000,
            service: "gateway".into(),
            message: "checkout started".into(),
            correlation_id: "req-7f3a".into(),
            ..LogRecord::default()
        },
        LogRecord {
            timestamp_ns: BASE_NS + 200_000_000,
            service: "orders".into(),
            message: "order failed".into(),
            trace_id: hex_id(&TRACE),
            ..LogRecord::default()
        },
    ];
    router(store, Arc::new(FixedLogs(logs)))
}

const WINDOW: &str = "start=1699999999&end=1700000001";

#[tokio::test]
async fn http_trace_by_id_and_errors() {
    let (_directory, store) = stored_three_service_trace();
    let app = app(store);
    let (status, body) = get(&app, &format!("/api/v1/traces/{}", hex_id(&TRACE))).await;
    assert_eq!(status, HttpStatus::OK);
    let spans = body["data"]["spans"].as_array().unwrap();
    assert_eq!(body["data"]["trace_id"], hex_id(&TRACE));
    assert_eq!(spans.len(), 4);
    assert_eq!(spans[0]["parent_span_id"], Value::Null);
    assert_eq!(spans[1]["parent_span_id"], "0000000000000001");
    assert_eq!(spans[0]["start_time"], "2023-11-14T22:13:20.000000000Z");
    assert_eq!(spans[0]["start_unix_nano"], BASE_NS);
    assert_eq!(
        spans[2]["status"],
        json!({"code": "error", "message": "timeout"})
    );
    assert_eq!(spans[2]["kind"], "client");
    assert_eq!(spans[2]["events"][0]["name"], "exception");
    assert_eq!(spans[0]["attributes"]["request_id"], "req-7f3a");
    assert_eq!(spans[0]["resource"]["service.name"], "gateway");

    let (status, body) = get(&app, &format!("/api/v1/traces/{}", "ab".repeat(16))).await;
    assert_eq!(status, HttpStatus::NOT_FOUND);
    assert_eq!(body["status"], "error");
    assert_eq!(body["errorType"], "not_found");
    let (status, body) = get(&app, "/api/v1/traces/not-hex").await;
    assert_eq!(status, HttpStatus::BAD_REQUEST);
    assert_eq!(body["errorType"], "bad_data");
}

#[tokio::test]
async fn http_search_services_operations_dependencies() {
    let (_directory, store) = stored_three_service_trace();
    let app = app(store);
    let (status, body) = get(
        &app,
        &format!("/api/v1/traces?service=orders&operation=GET%20/price&tags=error%3Dtrue&min_duration=30ms&{WINDOW}"),
    )
    .await;
    assert_eq!(status, HttpStatus::OK, "{body}");
    assert_eq!(
        body["data"][0],
        json!({
            "trace_id": hex_id(&TRACE),
            "root_service": "gateway",
            "root_name": "GET /checkout",
            "start_time": "2023-11-14T22:13:20.000000000Z",
            "duration_ns": 120_000_000,
            "span_count": 4,
            "services": ["gateway", "market", "orders"],
            "error_count": 1,
        })
    );
    let (_, body) = get(
        &app,
        &format!(
            "/api/v1/traces?service=gateway&tags=%7B%22http.status_code%22%3A%22200%22%7D&{WINDOW}"
        ),
    )
    .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let (_, body) = get(
        &app,
        &format!("/api/v1/traces?service=market&min_duration=1s&{WINDOW}"),
    )
    .await;
    assert_eq!(body["data"], json!([]));
    for bad in [
        "/api/v1/traces?min_duration=soon",
        "/api/v1/traces?start=yesterday",
        "/api/v1/traces?tags=novalue",
        "/api/v1/traces?limit=-1",
        "/api/v1/traces?start=1700000001&end=1700000000",
    ] {
        let (status, body) = get(&app, bad).await;
        assert_eq!(status, HttpStatus::BAD_REQUEST, "{bad}");
        assert_eq!(body["errorType"], "bad_data", "{bad}");
    }

    let (_, body) = get(&app, "/api/v1/services").await;
    assert_eq!(body["data"], json!(["gateway", "market", "orders"]));
    let (_, body) = get(&app, "/api/v1/services/orders/operations").await;
    assert_eq!(
        body["data"],
        json!([{"name": "GET /price", "kind": "client"}, {"name": "POST /orders", "kind": "server"}])
    );
    let (_, body) = get(&app, &format!("/api/v1/dependencies?{WINDOW}")).await;
    assert_eq!(
        body["data"],
        json!([
            {"parent": "gateway", "child": "orders", "call_count": 1, "error_count": 0},
            {"parent": "orders", "child": "market", "call_count": 1, "error_count": 0},
        ])
    );
}

#[tokio::test]
async fn http_correlate_merges_spans_and_logs_in_time_order() {
    let (_directory, store) = stored_three_service_trace();
    let app = app(store);
    let (status, body) = get(&app, "/api/v1/correlate/req-7f3a").await;
    assert_eq!(status, HttpStatus::OK);
    let data = &body["data"];
    assert_eq!(data["id"], "req-7f3a");
    assert_eq!(data["trace_ids"], json!([hex_id(&TRACE)]));
    let kinds: Vec<(&str, &str)> = data["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            let kind = event["type"].as_str().unwrap();
            let what = if kind == "span" {
                event["span"]["service"].as_str().unwrap()
            } else {
                event["log"]["message"].as_str().unwrap()
            };
            (kind, what)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("span", "gateway"),
            ("span", "orders"),
            ("log", "checkout started"),
            ("span", "orders"),
            ("span", "market"),
            ("log", "order failed"),
        ]
    );
    assert_eq!(data["events"][2]["time"], "2023-11-14T22:13:20.015000000Z");
    let (_, body) = get(&app, "/api/v1/correlate/nothing-here").await;
    assert_eq!(body["data"]["trace_ids"], json!([]));
    assert_eq!(body["data"]["events"], json!([]));
}

#[tokio::test]
async fn jaeger_shapes_match_jaegers_json() {
    let (_directory, store) = stored_three_service_trace();
    let app = app(store);
    let (_, body) = get(&app, "/jaeger/api/services").await;
    assert_eq!(
        body,
        json!({"data": ["gateway", "market", "orders"], "total": 3, "limit": 0, "offset": 0, "errors": null})
    );
    let (_, body) = get(&app, "/jaeger/api/services/orders/operations").await;
    assert_eq!(body["data"], json!(["GET /price", "POST /orders"]));
    let (_, body) = get(
        &app,
        "/jaeger/api/operations?service=orders&spanKind=server",
    )
    .await;
    assert_eq!(
        body["data"],
        json!([{"name": "POST /orders", "spanKind": "server"}])
    );

    let (status, body) = get(&app, &format!("/jaeger/api/traces/{}", hex_id(&TRACE))).await;
    assert_eq!(status, HttpStatus::OK);
    assert_eq!(body["total"], 1);
    let trace = &body["data"][0];
    assert_eq!(trace["traceID"], hex_id(&TRACE));
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 4);
    let orders_client = &spans[2];
    assert_eq!(orders_client["spanID"], "0000000000000003");
    assert_eq!(orders_client["operationName"], "GET /price");
    assert_eq!(
        orders_client["references"],
        json!([{"refType": "CHILD_OF", "traceID": hex_id(&TRACE), "spanID": "0000000000000002"}])
    );
    assert_eq!(orders_client["startTime"], BASE_NS / 1_000 + 20_000);
    assert_eq!(orders_client["duration"], 40_000);
    let tags = orders_client["tags"].as_array().unwrap();
    assert!(tags.contains(&json!({"key": "span.kind", "type": "string", "value": "client"})));
    assert!(tags.contains(&json!({"key": "error", "type": "bool", "value": true})));
    assert_eq!(
        orders_client["logs"][0],
        json!({"timestamp": BASE_NS / 1_000 + 60_000, "fields": [
            {"key": "event", "type": "string", "value": "exception"},
            {"key": "exception.message", "type": "string", "value": "deadline exceeded"},
        ]})
    );
    assert_eq!(spans[0]["references"], json!([]));
    let process_id = orders_client["processID"].as_str().unwrap();
    assert_eq!(trace["processes"][process_id]["serviceName"], "orders");
    assert_eq!(
        trace["processes"][process_id]["tags"],
        json!([{"key": "host.name", "type": "string", "value": "orders-1"}])
    );
    assert_eq!(trace["processes"].as_object().unwrap().len(), 3);

    let start_us = BASE_NS / 1_000 - 1_000_000;
    let end_us = BASE_NS / 1_000 + 1_000_000;
    let (status, body) = get(
        &app,
        &format!("/jaeger/api/traces?service=orders&operation=GET%20/price&tags=%7B%22error%22%3A%22true%22%7D&minDuration=30ms&start={start_us}&end={end_us}&limit=20"),
    )
    .await;
    assert_eq!(status, HttpStatus::OK, "{body}");
    assert_eq!(body["data"][0]["traceID"], hex_id(&TRACE));
    let (_, body) = get(
        &app,
        &format!(
            "/jaeger/api/traces?service=orders&minDuration=1.5s&start={start_us}&end={end_us}"
        ),
    )
    .await;
    assert_eq!(body["data"], json!([]));
    let (status, body) = get(&app, "/jaeger/api/traces?operation=x").await;
    assert_eq!(status, HttpStatus::BAD_REQUEST);
    assert_eq!(body["errors"][0]["code"], 400);
    let (status, body) = get(&app, &format!("/jaeger/api/traces/{}", "cd".repeat(16))).await;
    assert_eq!(status, HttpStatus::NOT_FOUND);
    assert_eq!(body["data"], Value::Null);
    assert_eq!(body["errors"][0]["msg"], "trace not found");

    let end_ms = BASE_NS / 1_000_000 + 1_000;
    let (_, body) = get(
        &app,
        &format!("/jaeger/api/dependencies?endTs={end_ms}&lookback=10000"),
    )
    .await;
    assert_eq!(
        body["data"],
        json!([
            {"parent": "gateway", "child": "orders", "callCount": 1},
            {"parent": "orders", "child": "market", "callCount": 1},
        ])
    );
}

#[test]
fn concurrent_writers_share_commits_and_lose_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    let mut generator = crate::synthetic::SpanGenerator::new(3, BASE_NS, 1_000_000);
    let batches: Vec<Vec<Span>> = (0..40).map(|_| generator.batch(100).0).collect();
    let expected: Vec<([u8; 16], [u8; 8])> = batches
        .iter()
        .flatten()
        .map(|span| (span.trace_id, span.span_id))
        .collect();
    std::thread::scope(|scope| {
        for writer_batches in batches.chunks(10) {
            let store = &store;
            scope.spawn(move || {
                for batch in writer_batches {
                    store.write(batch.clone()).unwrap();
                }
            });
        }
    });
    for (trace_id, span_id) in expected {
        let spans = store.trace(&trace_id).unwrap();
        assert!(spans.iter().any(|span| span.span_id == span_id));
    }
    let (commits, batches) = store.group_commit_counts();
    assert_eq!(batches, 40);
    assert!((1..=40).contains(&commits), "{commits} commits");
}
