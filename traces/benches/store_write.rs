//! Span store write path: batches of 512 realistic spans (one service's export, as
//! [`vigil_traces::synthetic`] builds them) written by `SpanStore::write_spans`, next to two
//! baselines measured in the same run:
//! - `encode_only`: grouping by trace and encoding the chunks, the CPU part of a write;
//! - `store_write_4_writers`: four threads writing at once through the group commit
//!   (throughput counts the 4 × 512 spans of one iteration);
//! - `naive_table`: one SQLite row per span with JSON attributes and three secondary indexes
//!   (trace ID, service + start, duration), WAL, synchronous=NORMAL, SQLite's default small
//!   page cache, one transaction per batch.
//!
//! Run: `cargo bench -p vigil-traces --bench store_write`

#![allow(clippy::expect_used)] // a benchmark whose setup fails should stop at once

use std::cell::RefCell;
use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rusqlite::{params, Connection};
use vigil_model::Span;
use vigil_traces::codec::encode_chunk;
use vigil_traces::synthetic::SpanGenerator;
use vigil_traces::{SpanStore, SpanStoreOptions};

const BATCH: usize = 512;
const START_NS: i64 = 1_700_000_000_000_000_000;

fn encode_only(spans: &[Span]) -> usize {
    let mut groups: HashMap<[u8; 16], Vec<&Span>> = HashMap::new();
    for span in spans {
        groups.entry(span.trace_id).or_default().push(span);
    }
    let mut bytes = 0;
    for (trace_id, group) in groups {
        bytes += encode_chunk(trace_id, &group)
            .map(|chunk| chunk.len())
            .unwrap_or(0);
    }
    bytes
}

fn naive_connection(path: &std::path::Path) -> Connection {
    let connection = Connection::open(path).expect("open naive table");
    connection
        .execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE spans (trace_id BLOB, span_id BLOB, parent_span_id BLOB, service TEXT,
               name TEXT, kind TEXT, start_ns INTEGER, duration_ns INTEGER, status TEXT,
               attributes TEXT, resource TEXT, events TEXT);
             CREATE INDEX spans_trace ON spans(trace_id);
             CREATE INDEX spans_service_start ON spans(service, start_ns);
             CREATE INDEX spans_duration ON spans(duration_ns);",
        )
        .expect("naive schema");
    connection
}

fn naive_write(connection: &Connection, spans: &[Span]) {
    let transaction = connection.unchecked_transaction().expect("begin");
    {
        let mut insert = transaction
            .prepare_cached(
                "INSERT INTO spans VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .expect("prepare");
        for span in spans {
            insert
                .execute(params![
                    &span.trace_id[..],
                    &span.span_id[..],
                    span.parent_span_id.as_ref().map(|parent| &parent[..]),
                    span.service,
                    span.name,
                    span.kind.as_str(),
                    span.start_unix_nano,
                    span.duration_ns,
                    span.status.as_str(),
                    serde_json::to_string(&span.attributes).unwrap_or_default(),
                    serde_json::to_string(span.resource.as_ref()).unwrap_or_default(),
                    serde_json::to_string(&span.events).unwrap_or_default(),
                ])
                .expect("insert");
        }
    }
    transaction.commit().expect("commit");
}

fn store_write(criterion: &mut Criterion) {
    let generator = RefCell::new(SpanGenerator::new(7, START_NS, 1_000_000));
    let next_batch = || generator.borrow_mut().batch(BATCH).0;
    let mut group = criterion.benchmark_group("span_store_write_512");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(30);

    group.bench_function("encode_only", |bencher| {
        bencher.iter_batched(
            next_batch,
            |batch| encode_only(&batch),
            BatchSize::SmallInput,
        )
    });

    let directory = tempfile::tempdir().expect("tempdir");
    let store = SpanStore::open(
        &directory.path().join("traces"),
        SpanStoreOptions::default(),
    )
    .expect("open store");
    group.bench_function("store_write", |bencher| {
        bencher.iter_batched(
            next_batch,
            |batch| store.write_spans(&batch).expect("write"),
            BatchSize::SmallInput,
        )
    });

    // Four exporters at once, as OTLP ingest calls the sink: batches that arrive while a
    // commit runs are committed together in the next one.
    let grouped = SpanStore::open(
        &directory.path().join("grouped"),
        SpanStoreOptions::default(),
    )
    .expect("open store");
    group.throughput(Throughput::Elements(4 * BATCH as u64));
    group.bench_function("store_write_4_writers", |bencher| {
        bencher.iter_custom(|iterations| {
            let batches: Vec<Vec<Vec<Span>>> = (0..4)
                .map(|_| (0..iterations).map(|_| next_batch()).collect())
                .collect();
            let started = std::time::Instant::now();
            std::thread::scope(|scope| {
                for writer_batches in batches {
                    let grouped = &grouped;
                    scope.spawn(move || {
                        for batch in writer_batches {
                            grouped.write_grouped(batch).expect("write");
                        }
                    });
                }
            });
            started.elapsed()
        })
    });
    group.throughput(Throughput::Elements(BATCH as u64));

    let naive = naive_connection(&directory.path().join("naive.db"));
    group.bench_function("naive_table", |bencher| {
        bencher.iter_batched(
            next_batch,
            |batch| naive_write(&naive, &batch),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let (partitions, bytes) = store.disk_usage();
    eprintln!("span store after the bench: {partitions} partition(s), {bytes} bytes");
}

criterion_group!(benches, store_write);
criterion_main!(benches);
