//! In-process tests of the store and search together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_model::LogRecord;

use crate::search::{Cursor, LogSearcher, SearchError, SearchRequest, SortOrder};
use crate::store::{LogStore, LogStoreOptions, DAY_NS, HOUR_NS};

const BASE_NS: i64 = 1_714_564_800_000_000_000; // 2024-05-01T12:00:00Z
const REQUEST_ID: &str = "5f0c8e3a-1b2c-4d5e-8f90-a1b2c3d4e5f6";

fn record(offset_ms: i64, level: &str, service: &str, message: &str) -> LogRecord {
    LogRecord {
        timestamp_ns: BASE_NS + offset_ms * 1_000_000,
        level: level.to_string(),
        service: service.to_string(),
        host: "web-1".to_string(),
        message: message.to_string(),
        ..LogRecord::default()
    }
}

fn open(directory: &std::path::Path) -> Arc<LogStore> {
    Arc::new(LogStore::open(directory, LogStoreOptions::default()).unwrap())
}

fn request(query: &str) -> SearchRequest {
    SearchRequest {
        query: query.to_string(),
        start_ns: BASE_NS - HOUR_NS,
        end_ns: BASE_NS + HOUR_NS,
        limit: 100,
        cursor: None,
        order: SortOrder::Descending,
    }
}

fn messages(searcher: &LogSearcher, query: &str) -> Vec<String> {
    searcher
        .search(&request(query))
        .unwrap()
        .hits
        .into_iter()
        .map(|hit| hit.record.message)
        .collect()
}

fn sample_records() -> Vec<LogRecord> {
    let mut with_field = record(3, "error", "gateway", "upstream timed out after 30s");
    with_field.correlation_id = REQUEST_ID.to_string();
    with_field.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736".to_string();
    let mut with_attributes = record(4, "info", "billing", "charged card");
    with_attributes.attributes = BTreeMap::from([
        ("user_id".to_string(), json!(42)),
        ("http.path".to_string(), json!("/api/v1/orders")),
    ]);
    vec![
        record(1, "info", "gateway", "GET /api/v1/orders/991 200"),
        record(
            2,
            "warn",
            "checkout",
            &format!("payment slow for request {REQUEST_ID} (retrying)"),
        ),
        with_field,
        with_attributes,
    ]
}

#[test]
fn lines_are_found_by_level_service_phrase_id_and_attribute() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    store.write_records(sample_records()).unwrap();
    store.commit().unwrap();
    let searcher = LogSearcher::new(store.clone());
    assert_eq!(
        messages(&searcher, "level:error"),
        vec!["upstream timed out after 30s"]
    );
    assert_eq!(
        messages(&searcher, "level:ERROR"),
        vec!["upstream timed out after 30s"]
    );
    assert_eq!(messages(&searcher, "service:gateway").len(), 2);
    assert_eq!(
        messages(&searcher, "level:error AND service:gateway \"timed out\""),
        vec!["upstream timed out after 30s"]
    );
    // The request ID stands inside one message and in another line's field.
    let by_id = messages(&searcher, REQUEST_ID);
    assert_eq!(by_id.len(), 2, "{by_id:?}");
    assert_eq!(
        messages(&searcher, "\"4bf92f3577b34da6a3ce929d0e0e4736\"").len(),
        1
    );
    assert_eq!(
        messages(&searcher, "attributes.user_id:42"),
        vec!["charged card"]
    );
    assert_eq!(
        messages(&searcher, "attributes.http.path:orders"),
        vec!["charged card"]
    );
    assert_eq!(messages(&searcher, "orders").len(), 1);
    assert_eq!(messages(&searcher, "991").len(), 1);
    assert_eq!(messages(&searcher, "*").len(), 4);
    assert!(messages(&searcher, "service:gate").is_empty());
}

#[test]
fn side_by_side_clauses_are_all_required() {
    use crate::search::explicit_conjunctions;
    assert_eq!(
        explicit_conjunctions("level:error AND service:gateway \"timed out\""),
        "level:error AND service:gateway AND \"timed out\""
    );
    assert_eq!(explicit_conjunctions("a OR b"), "a OR b");
    assert_eq!(explicit_conjunctions("a NOT b"), "a AND NOT b");
    assert_eq!(explicit_conjunctions("(a b) -c"), "(a AND b) AND -c");
    assert_eq!(explicit_conjunctions("t:[1 TO 5] x"), "t:[1 TO 5] AND x");
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    store.write_records(sample_records()).unwrap();
    store.commit().unwrap();
    let searcher = LogSearcher::new(store);
    assert_eq!(
        messages(&searcher, "level:warn AND service:checkout \"timed out\""),
        Vec::<String>::new()
    );
    assert_eq!(
        messages(&searcher, "service:gateway AND level:info orders").len(),
        1
    );
    assert_eq!(messages(&searcher, "service:gateway -level:info").len(), 1);
    assert_eq!(messages(&searcher, "level:error OR level:warn").len(), 2);
}

#[test]
fn newest_first_and_oldest_first() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    store.write_records(sample_records()).unwrap();
    store.commit().unwrap();
    let searcher = LogSearcher::new(store);
    let newest = searcher.search(&request("")).unwrap();
    assert_eq!(newest.total, 4);
    assert_eq!(newest.hits[0].record.message, "charged card");
    let oldest = searcher
        .search(&SearchRequest {
            order: SortOrder::Ascending,
            ..request("")
        })
        .unwrap();
    assert!(oldest.hits[0].record.message.starts_with("GET"));
    assert!(newest.next_cursor.is_none());
}

#[test]
fn cursor_pages_stay_stable_while_ingest_goes_on() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    // 25 lines, three sharing one timestamp.
    let mut records: Vec<LogRecord> = (0..22)
        .map(|index| record(index * 10, "info", "a", &format!("line {index}")))
        .collect();
    for index in 22..25 {
        records.push(record(100, "info", "a", &format!("line {index}")));
    }
    store.write_records(records).unwrap();
    store.commit().unwrap();
    let searcher = LogSearcher::new(store.clone());
    for order in [SortOrder::Descending, SortOrder::Ascending] {
        let mut seen = Vec::new();
        let mut cursor: Option<Cursor> = None;
        let mut pages = 0;
        loop {
            let page = searcher
                .search(&SearchRequest {
                    limit: 10,
                    cursor,
                    order,
                    ..request("")
                })
                .unwrap();
            assert!(page.total >= 25, "{}", page.total);
            seen.extend(page.hits.iter().map(|hit| hit.record.message.clone()));
            pages += 1;
            // Newer lines arrive between pages: they must not shift the pages.
            if order == SortOrder::Ascending {
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
                continue;
            }
            let newer: Vec<LogRecord> = (0..5)
                .map(|index| record(1_000_000 + pages * 10 + index, "info", "b", "late"))
                .collect();
            store.write_records(newer).unwrap();
            store.commit().unwrap();
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
            assert!(pages < 10);
        }
        let late = seen.iter().filter(|message| *message == "late").count();
        let mut unique: Vec<String> = seen
            .iter()
            .filter(|message| *message != "late")
            .cloned()
            .collect();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 25, "{order:?}: {seen:?}");
        assert_eq!(seen.len() - late, 25, "{order:?}: duplicates in {seen:?}");
        if order == SortOrder::Descending {
            assert_eq!(late, 0, "newer lines leaked into older pages: {seen:?}");
        }
    }
}

/// Pages of a search over several segments of many blocks, with timestamps out of write
/// order, against a model: every line sorted by (timestamp, seq).
#[test]
fn block_wise_search_matches_a_full_sort_and_counts_up_to_the_threshold() {
    use crate::search::{TotalRelation, BLOCK_DOCS, DEFAULT_TOTAL_HITS_THRESHOLD};
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    // 4 commits of 3.5 blocks each: lines roughly in time order, with a disorder of up to
    // ~5 minutes, every 7th line "rare", every 1000th line a day late (a backfill).
    let per_commit = i64::from(BLOCK_DOCS) * 7 / 2;
    let mut model: Vec<(i64, u64, String)> = Vec::new();
    let mut seq = 0u64;
    for commit in 0..4 {
        let records: Vec<LogRecord> = (0..per_commit)
            .map(|offset| {
                let index = commit * per_commit + offset;
                let jitter = (index * 7_919) % 300_000;
                let late = if index % 1_000 == 999 {
                    -DAY_NS / 1_000_000 / 2
                } else {
                    0
                };
                let kind = if index % 7 == 0 { "rare" } else { "common" };
                record(
                    index * 100 + jitter + late,
                    "info",
                    "blocks",
                    &format!("{kind} line {index}"),
                )
            })
            .collect();
        for line in &records {
            seq += 1;
            model.push((line.timestamp_ns, seq, line.message.clone()));
        }
        store.write_records(records).unwrap();
        store.commit().unwrap();
    }
    let searcher = LogSearcher::new(store);
    let lines = model.len() as i64;
    let windows = [
        (BASE_NS - DAY_NS, BASE_NS + DAY_NS),
        (
            BASE_NS + lines * 30 * 1_000_000,
            BASE_NS + lines * 40 * 1_000_000,
        ),
        (BASE_NS + 1_234 * 1_000_000, BASE_NS + 600_000 * 1_000_000),
    ];
    for (start_ns, end_ns) in windows {
        for query in ["", "rare"] {
            let mut expected: Vec<&(i64, u64, String)> = model
                .iter()
                .filter(|(timestamp, _, message)| {
                    (start_ns..=end_ns).contains(timestamp)
                        && (query.is_empty() || message.starts_with(query))
                })
                .collect();
            expected.sort_by_key(|(timestamp, seq, _)| (*timestamp, *seq));
            for order in [SortOrder::Ascending, SortOrder::Descending] {
                if order == SortOrder::Descending {
                    expected.reverse();
                }
                let base = SearchRequest {
                    query: query.to_string(),
                    start_ns,
                    end_ns,
                    limit: 1_000,
                    cursor: None,
                    order,
                };
                // Exact counting, paged through with cursors.
                let mut seen: Vec<String> = Vec::new();
                let mut cursor = None;
                loop {
                    let page = searcher
                        .search_counting(
                            &SearchRequest {
                                cursor,
                                ..base.clone()
                            },
                            u64::MAX,
                        )
                        .unwrap();
                    assert_eq!(page.total, expected.len() as u64);
                    assert_eq!(page.total_relation, TotalRelation::Equal);
                    seen.extend(page.hits.iter().map(|hit| hit.record.message.clone()));
                    match page.next_cursor {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                let expected_messages: Vec<String> = expected
                    .iter()
                    .map(|(_, _, message)| message.clone())
                    .collect();
                assert_eq!(seen, expected_messages, "{query:?} {order:?} {start_ns}");
                // Counting stops at the threshold.
                let page = searcher.search(&base).unwrap();
                let first: Vec<String> = page
                    .hits
                    .iter()
                    .map(|hit| hit.record.message.clone())
                    .collect();
                assert_eq!(first, expected_messages[..first.len()]);
                assert_eq!(first.len(), expected.len().min(1_000));
                // Past the threshold `total` is the threshold and a lower bound, unless every
                // match was counted anyway (segments read in one pass): then it is exact.
                for threshold in [DEFAULT_TOTAL_HITS_THRESHOLD, 100] {
                    let page = searcher.search_counting(&base, threshold).unwrap();
                    assert_eq!(page.hits.len(), first.len());
                    match page.total_relation {
                        TotalRelation::Equal => assert_eq!(page.total, expected.len() as u64),
                        TotalRelation::GreaterOrEqual => {
                            assert_eq!(page.total, threshold);
                            assert!(expected.len() as u64 > threshold);
                        }
                    }
                    if expected.len() as u64 <= threshold {
                        assert_eq!(page.total_relation, TotalRelation::Equal);
                    }
                }
            }
        }
    }
    // A unique line found by its message among all the blocks, counted exactly.
    let page = searcher
        .search(&SearchRequest {
            start_ns: BASE_NS - DAY_NS,
            end_ns: BASE_NS + DAY_NS,
            ..request("\"rare line 9996\"")
        })
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.hits[0].record.message, "rare line 9996");
}

/// A partition written before `timestamp` and `seq` became fast-only (both were also indexed)
/// opens with its own schema and takes new lines.
#[test]
fn partitions_of_the_earlier_schema_keep_working() {
    use tantivy::schema::{NumericOptions, FAST, INDEXED};
    let directory = tempfile::tempdir().unwrap();
    let current = crate::schema::LogSchema::new();
    let mut builder = tantivy::schema::Schema::builder();
    for (_, entry) in current.schema.fields() {
        match entry.name() {
            "timestamp" => {
                builder.add_i64_field(
                    "timestamp",
                    NumericOptions::default().set_indexed().set_fast(),
                );
            }
            "seq" => {
                builder.add_u64_field("seq", FAST | INDEXED);
            }
            _ => {
                builder.add_field(entry.clone());
            }
        }
    }
    let old_schema = builder.build();
    assert_ne!(old_schema, current.schema);
    let partition = directory.path().join(crate::store::partition_name(
        BASE_NS - BASE_NS.rem_euclid(DAY_NS),
    ));
    std::fs::create_dir_all(&partition).unwrap();
    let index = tantivy::Index::create_in_dir(&partition, old_schema).unwrap();
    crate::schema::LogSchema::register_tokenizers(&index);
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 15 << 20).unwrap();
    writer
        .add_document(current.document(&record(1, "info", "old", "written before"), 1))
        .unwrap();
    writer.commit().unwrap();
    drop(writer);
    let store = open(directory.path());
    store
        .write_records(vec![record(2, "info", "new", "written after")])
        .unwrap();
    store.commit().unwrap();
    let searcher = LogSearcher::new(store);
    assert_eq!(
        messages(&searcher, ""),
        vec!["written after", "written before"]
    );
    assert_eq!(messages(&searcher, "service:old"), vec!["written before"]);
}

#[test]
fn unwritten_commits_are_replayed_from_the_wal_without_duplicates() {
    let directory = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(directory.path(), LogStoreOptions::default()).unwrap();
        store
            .write_records(vec![record(1, "info", "a", "committed")])
            .unwrap();
        store.commit().unwrap();
        store
            .write_records(vec![record(2, "info", "a", "only in the wal")])
            .unwrap();
        // Dropped without a commit: the index writer's buffer is lost, as in a kill -9.
    }
    let store = open(directory.path());
    let searcher = LogSearcher::new(store.clone());
    let mut found = messages(&searcher, "");
    found.sort();
    assert_eq!(found, vec!["committed", "only in the wal"]);
    store
        .write_records(vec![record(3, "info", "a", "after restart")])
        .unwrap();
    store.commit().unwrap();
    drop(searcher);
    drop(store);
    let store = open(directory.path());
    let searcher = LogSearcher::new(store);
    assert_eq!(messages(&searcher, "").len(), 3);
}

/// A line its partition already committed (its writer was closed to make room) and synced is
/// skipped by the replay and not counted again in `vigil_log_records_total`.
#[test]
fn a_replay_counts_only_the_lines_it_indexes_again() {
    let directory = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(directory.path(), LogStoreOptions::default()).unwrap();
        // One line per day for 5 days: the fifth writer closes (and commits) the first.
        let records: Vec<LogRecord> = (0..5)
            .map(|day| record(day * DAY_NS / 1_000_000, "info", "a", "spread"))
            .collect();
        store.write_records(records).unwrap();
        // The closed writer's commit is synced; no commit of the others, so the WAL keeps all.
        store.checkpoint().unwrap();
        // Dropped without a commit, as in a kill -9.
    }
    let store = open(directory.path());
    assert_eq!(
        store.record_counts(),
        BTreeMap::from([(("a".to_string(), "info".to_string()), 4)])
    );
    let searcher = LogSearcher::new(store);
    let page = searcher
        .search(&SearchRequest {
            end_ns: BASE_NS + 6 * DAY_NS,
            ..request("")
        })
        .unwrap();
    assert_eq!(page.total, 5);
}

/// Commits are not synced (docs/LOGS.md): a power loss can take the files of a commit made
/// after the last checkpoint, here a `meta.json` torn on the disk. The partition reopens at
/// its last checkpoint and the WAL, deleted only past a checkpoint, brings back the rest.
#[test]
fn a_commit_lost_before_its_checkpoint_is_recovered_from_the_wal() {
    let directory = tempfile::tempdir().unwrap();
    let partition = directory.path().join(crate::store::partition_name(
        BASE_NS.div_euclid(DAY_NS) * DAY_NS,
    ));
    {
        let store = LogStore::open(directory.path(), LogStoreOptions::default()).unwrap();
        store
            .write_records(vec![record(1, "info", "a", "checkpointed")])
            .unwrap();
        store.commit().unwrap();
        store.checkpoint().unwrap();
        let wal_files = |path: &std::path::Path| {
            std::fs::read_dir(path)
                .unwrap()
                .filter(|entry| {
                    let name = entry.as_ref().unwrap().file_name();
                    name.to_string_lossy().starts_with("wal-")
                })
                .count()
        };
        // The checkpoint deleted the WAL file of the first line; the current one is left.
        assert_eq!(wal_files(directory.path()), 1);
        store
            .write_records(vec![record(2, "info", "a", "committed, not checkpointed")])
            .unwrap();
        store.commit().unwrap();
        assert_eq!(messages(&LogSearcher::new(Arc::new(store)), "").len(), 2);
    }
    std::fs::write(partition.join("meta.json"), b"{\"segments\":[{\"segm").unwrap();
    let store = open(directory.path());
    let searcher = LogSearcher::new(store.clone());
    let mut found = messages(&searcher, "");
    found.sort();
    assert_eq!(found, vec!["checkpointed", "committed, not checkpointed"]);
    assert_eq!(
        store.record_counts(),
        BTreeMap::from([(("a".to_string(), "info".to_string()), 1)])
    );
}

#[test]
fn ingest_during_commits_loses_and_doubles_nothing_across_a_crash() {
    let directory = tempfile::tempdir().unwrap();
    {
        let store = Arc::new(LogStore::open(directory.path(), LogStoreOptions::default()).unwrap());
        let writer_store = store.clone();
        let writer = std::thread::spawn(move || {
            for batch in 0..200 {
                let records = (0..10)
                    .map(|line| record(batch * 10 + line, "info", "race", "concurrent line"))
                    .collect();
                writer_store.write_records(records).unwrap();
            }
        });
        while !writer.is_finished() {
            store.commit().unwrap();
        }
        writer.join().unwrap();
        store
            .write_records(vec![record(5_000, "info", "race", "last, uncommitted")])
            .unwrap();
        // Dropped without a final commit, as in a kill -9.
    }
    let store = open(directory.path());
    let searcher = LogSearcher::new(store);
    let page = searcher.search(&request("service:race")).unwrap();
    assert_eq!(page.total, 2_001);
}

#[test]
fn retention_drops_whole_old_partitions() {
    let directory = tempfile::tempdir().unwrap();
    let options = LogStoreOptions {
        retention: Duration::from_secs(2 * 86_400),
        ..LogStoreOptions::default()
    };
    let store = Arc::new(LogStore::open(directory.path(), options).unwrap());
    let day = DAY_NS / 1_000_000;
    store
        .write_records(vec![
            record(-5 * day, "info", "a", "five days old"),
            record(-day, "info", "a", "one day old"),
            record(0, "info", "a", "today"),
        ])
        .unwrap();
    store.commit().unwrap();
    assert_eq!(store.disk_usage().0, 3);
    let deleted = store.enforce_retention(BASE_NS).unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(store.disk_usage().0, 2);
    let searcher = LogSearcher::new(store.clone());
    let all = searcher
        .search(&SearchRequest {
            start_ns: BASE_NS - 10 * DAY_NS,
            ..request("")
        })
        .unwrap();
    assert_eq!(all.total, 2);
    // Ingest into a kept partition still works.
    store
        .write_records(vec![record(5, "info", "a", "new")])
        .unwrap();
    store.commit().unwrap();
    assert_eq!(messages(&searcher, "new").len(), 1);
}

fn partition_bytes(directory: &std::path::Path) -> BTreeMap<String, u64> {
    let mut sizes = BTreeMap::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("p-") {
            continue;
        }
        let bytes = std::fs::read_dir(entry.path())
            .unwrap()
            .map(|file| file.unwrap().metadata().unwrap().len())
            .sum();
        sizes.insert(name, bytes);
    }
    sizes
}

#[test]
fn retention_by_size_drops_the_oldest_partitions_and_keeps_ingest_going() {
    let directory = tempfile::tempdir().unwrap();
    let day = DAY_NS / 1_000_000;
    {
        let store = LogStore::open(directory.path(), LogStoreOptions::default()).unwrap();
        for days_ago in (0..5).rev() {
            let records = (0..200)
                .map(|index| {
                    record(
                        -days_ago * day + index,
                        "info",
                        "a",
                        &format!("day {days_ago} line {index}"),
                    )
                })
                .collect();
            store.write_records(records).unwrap();
            store.commit().unwrap();
        }
        store.checkpoint().unwrap();
    }
    let sizes = partition_bytes(directory.path());
    assert_eq!(sizes.len(), 5);
    let newest_two: u64 = sizes.values().rev().take(2).sum();
    // Room for the two newest partitions and a little, not for three.
    let options = LogStoreOptions {
        retention: Duration::from_secs(365 * 86_400),
        retention_size_bytes: newest_two + 1,
        ..LogStoreOptions::default()
    };
    let store = Arc::new(LogStore::open(directory.path(), options).unwrap());
    // Ingest goes on while retention runs.
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for batch in 0..20 {
                store
                    .write_records(vec![record(1_000 + batch, "info", "b", "during retention")])
                    .unwrap();
            }
        })
    };
    let deleted = store.enforce_retention(BASE_NS).unwrap();
    writer.join().unwrap();
    store.commit().unwrap();
    assert_eq!(deleted, 3);
    let kept: Vec<String> = partition_bytes(directory.path()).into_keys().collect();
    let expected: Vec<String> = sizes.keys().rev().take(2).rev().cloned().collect();
    assert_eq!(kept, expected);
    let searcher = LogSearcher::new(store.clone());
    let everything = SearchRequest {
        start_ns: BASE_NS - 10 * DAY_NS,
        ..request("")
    };
    assert_eq!(searcher.search(&everything).unwrap().total, 400 + 20);
    assert_eq!(messages(&searcher, "\"during retention\"").len(), 20);
    // A store holding only the partition being written keeps it, whatever its size.
    let options = LogStoreOptions {
        retention_size_bytes: 1,
        ..LogStoreOptions::default()
    };
    drop(searcher);
    drop(store);
    let store = LogStore::open(directory.path(), options).unwrap();
    assert_eq!(store.enforce_retention(BASE_NS).unwrap(), 1);
    assert_eq!(store.disk_usage().0, 1);
    assert_eq!(store.enforce_retention(BASE_NS).unwrap(), 0);
}

#[test]
fn a_backfill_over_many_days_keeps_few_writers_and_loses_nothing() {
    let directory = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(directory.path(), LogStoreOptions::default()).unwrap();
        let day = DAY_NS / 1_000_000;
        for day_index in 0..10 {
            store
                .write_records(vec![record(
                    -day_index * day,
                    "info",
                    "backfill",
                    "old line",
                )])
                .unwrap();
        }
        // No commit: closed writers were committed, the rest is in the WAL.
    }
    let store = open(directory.path());
    let searcher = LogSearcher::new(store);
    let page = searcher
        .search(&SearchRequest {
            start_ns: BASE_NS - 20 * DAY_NS,
            ..request("service:backfill")
        })
        .unwrap();
    assert_eq!(page.total, 10);
}

#[test]
fn invalid_queries_say_where() {
    let directory = tempfile::tempdir().unwrap();
    let searcher = LogSearcher::new(open(directory.path()));
    let error = searcher
        .search(&request("level:error AND (service:x"))
        .unwrap_err();
    assert!(matches!(error, SearchError::InvalidQuery(_)), "{error}");
    assert!(error.to_string().contains("character"), "{error}");
    let error = searcher.search(&request("nosuchfield:x")).unwrap_err();
    assert!(error.to_string().contains("nosuchfield"), "{error}");
}

#[test]
fn histogram_and_fields() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    store.write_records(sample_records()).unwrap();
    store
        .write_records(vec![record(90_000, "error", "gateway", "later")])
        .unwrap();
    store.commit().unwrap();
    let searcher = LogSearcher::new(store);
    let buckets = searcher
        .histogram("", BASE_NS - HOUR_NS, BASE_NS + HOUR_NS, 60_000_000_000)
        .unwrap();
    assert_eq!(buckets[&BASE_NS]["info"], 2);
    assert_eq!(buckets[&BASE_NS]["error"], 1);
    assert_eq!(buckets[&(BASE_NS + 60_000_000_000)]["error"], 1);
    let summary = searcher
        .fields("", BASE_NS - HOUR_NS, BASE_NS + HOUR_NS, 100)
        .unwrap();
    assert_eq!(summary.keywords["service"]["gateway"], 3);
    assert_eq!(summary.keywords["level"]["error"], 2);
    assert_eq!(summary.keywords["host"]["web-1"], 5);
    assert_eq!(summary.attribute_keys["user_id"], 1);
}

#[test]
fn tail_returns_lines_written_after_a_sequence_number_in_write_order() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    store.write_records(sample_records()).unwrap();
    store.commit().unwrap();
    let start = store.last_seq();
    assert_eq!(start, 4);
    // Written out of timestamp order: the tail follows write order.
    store
        .write_records(vec![
            record(50, "error", "gateway", "newer one"),
            record(-50, "error", "gateway", "older timestamp, written later"),
            record(60, "info", "gateway", "not an error"),
        ])
        .unwrap();
    store.commit().unwrap();
    let searcher = LogSearcher::new(store);
    let hits = searcher.tail("level:error", start, 10).unwrap();
    let tailed: Vec<&str> = hits.iter().map(|hit| hit.record.message.as_str()).collect();
    assert_eq!(tailed, vec!["newer one", "older timestamp, written later"]);
    assert!(searcher
        .tail("level:error", hits[1].seq, 10)
        .unwrap()
        .is_empty());
}

#[test]
fn lines_are_counted_per_service_and_level() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    store.write_records(sample_records()).unwrap();
    let counts = store.record_counts();
    assert_eq!(counts[&("gateway".to_string(), "error".to_string())], 1);
    assert_eq!(counts[&("gateway".to_string(), "info".to_string())], 1);
}

/// The measurement behind the durability choice (docs/LOGS.md): 200 requests of 50 lines,
/// acknowledged either after a tantivy commit each, or after a WAL append + fdatasync with
/// one commit at the end. Run with `cargo test -p vigil-logs -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_commit_per_request_against_the_wal() {
    let requests = 200;
    let lines_per_request = 50;
    let batch = |request_index: i64| -> Vec<LogRecord> {
        (0..lines_per_request)
            .map(|line| {
                record(
                    request_index * 100 + line,
                    "info",
                    "gateway",
                    &format!("GET /api/v1/orders/{request_index}-{line} answered 200 in 12ms request_id={REQUEST_ID}"),
                )
            })
            .collect()
    };
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    let started = Instant::now();
    for request_index in 0..requests {
        store.write_records(batch(request_index)).unwrap();
        store.commit().unwrap();
    }
    let commit_each = started.elapsed();
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    let started = Instant::now();
    for request_index in 0..requests {
        store.write_records(batch(request_index)).unwrap();
    }
    store.commit().unwrap();
    let wal = started.elapsed();
    let lines = (requests * lines_per_request) as f64;
    // Bigger requests (1,000 lines, as shippers batch them), WAL only.
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path());
    let big_batch = |request_index: i64| -> Vec<LogRecord> {
        (0..1_000)
            .map(|line| {
                record(
                    request_index * 1_000 + line,
                    "info",
                    "gateway",
                    &format!("GET /api/v1/orders/{request_index}-{line} answered 200 in 12ms request_id={REQUEST_ID}"),
                )
            })
            .collect()
    };
    let started = Instant::now();
    for request_index in 0..20 {
        store.write_records(big_batch(request_index)).unwrap();
        if request_index % 5 == 4 {
            store.commit().unwrap();
        }
    }
    store.commit().unwrap();
    let big = started.elapsed();
    println!(
        "1,000-line requests through the WAL with a commit every 5 requests: {:.0} lines/s",
        20_000.0 / big.as_secs_f64()
    );
    println!(
        "commit per request: {:?} ({:.0} lines/s, {:.2} ms per request); WAL + fdatasync: {:?} ({:.0} lines/s, {:.2} ms per request)",
        commit_each,
        lines / commit_each.as_secs_f64(),
        commit_each.as_secs_f64() * 1e3 / requests as f64,
        wal,
        lines / wal.as_secs_f64(),
        wal.as_secs_f64() * 1e3 / requests as f64,
    );
}

/// Sizes of the segments each merge candidate would merge, for a set of segment sizes.
fn merge_candidates(segment_sizes: &[u32]) -> Vec<Vec<u32>> {
    use tantivy::merge_policy::MergePolicy;
    let index = tantivy::Index::create_in_ram(crate::schema::LogSchema::new().schema);
    let metas: Vec<tantivy::index::SegmentMeta> = segment_sizes
        .iter()
        .map(|size| index.new_segment_meta(tantivy::index::SegmentId::generate_random(), *size))
        .collect();
    crate::store::merge_policy()
        .compute_merge_candidates(&metas)
        .into_iter()
        .map(|candidate| {
            candidate
                .0
                .iter()
                .filter_map(|id| metas.iter().find(|meta| meta.id() == *id))
                .map(|meta| meta.max_doc())
                .collect()
        })
        .collect()
}

#[test]
fn small_commit_segments_wait_for_a_full_merge_of_thirty_two() {
    // Two segments per 250 ms commit at 100,000 lines/s: about 12,500 lines each.
    assert!(merge_candidates(&[12_500; 31]).is_empty());
    let candidates = merge_candidates(&[12_500; 32]);
    assert_eq!(candidates, vec![vec![12_500; 32]]);
}

#[test]
fn segments_past_two_hundred_thousand_lines_are_not_merged_again() {
    let mut sizes = vec![400_000; 40];
    sizes.extend([150_000; 32]);
    let candidates = merge_candidates(&sizes);
    assert_eq!(candidates, vec![vec![150_000; 32]]);
}

fn store_with_backlog_limit(
    directory: &std::path::Path,
    max_uncommitted_lines: usize,
    max_backlog_wait: Duration,
) -> Arc<LogStore> {
    let options = LogStoreOptions {
        max_uncommitted_lines,
        max_backlog_wait,
        ..LogStoreOptions::default()
    };
    Arc::new(LogStore::open(directory, options).unwrap())
}

fn lines(count: usize) -> Vec<LogRecord> {
    (0..count)
        .map(|index| record(index as i64, "info", "gateway", "line"))
        .collect()
}

#[test]
fn a_write_past_the_backlog_limit_waits_for_a_commit() {
    let directory = tempfile::tempdir().unwrap();
    let store = store_with_backlog_limit(directory.path(), 10, Duration::from_secs(60));
    store.write_records(lines(10)).unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || store.write_records(lines(1)))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!writer.is_finished(), "the 11th line was not held back");
    store.commit().unwrap();
    writer.join().unwrap().unwrap();
    store.commit().unwrap();
    let searcher = LogSearcher::new(store.clone());
    let mut whole_range = request("line");
    whole_range.limit = 100;
    assert_eq!(searcher.search(&whole_range).unwrap().total, 11);
}

#[test]
fn a_write_kept_waiting_by_the_backlog_is_refused_as_overloaded() {
    let directory = tempfile::tempdir().unwrap();
    let store = store_with_backlog_limit(directory.path(), 10, Duration::from_millis(100));
    store.write_records(lines(10)).unwrap();
    let refused = store.write_records(lines(1));
    assert!(matches!(refused, Err(crate::LogStoreError::Overloaded)));
    assert!(matches!(
        vigil_model::LogSink::write(&*store, lines(1)),
        Err(vigil_model::LogSinkError::Overloaded)
    ));
    // A batch larger than the limit goes alone once the backlog is empty.
    store.commit().unwrap();
    store.write_records(lines(25)).unwrap();
}

/// Copies the partition an earlier Vigil wrote (term dictionaries as FSTs) into `directory`.
fn copy_fst_fixture(directory: &std::path::Path) -> std::path::PathBuf {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fst-partition/p-2026-01-05T00");
    let partition = directory.join("p-2026-01-05T00");
    std::fs::create_dir_all(&partition).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), partition.join(entry.file_name())).unwrap();
    }
    partition
}

fn january_hits(searcher: &LogSearcher, query: &str) -> Vec<String> {
    let january = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap();
    let page = searcher
        .search(&SearchRequest {
            query: query.to_string(),
            start_ns: january,
            end_ns: january + 31 * DAY_NS,
            limit: 100,
            cursor: None,
            order: SortOrder::Ascending,
        })
        .unwrap();
    page.hits
        .into_iter()
        .map(|hit| hit.record.message)
        .collect()
}

/// A partition written by an earlier Vigil, whose term dictionaries are FSTs (this build reads
/// SSTables), is rebuilt when the store opens: its four lines (tests/fixtures/fst-partition/
/// lines.ndjson) are found by the same queries, and it takes new lines after them.
#[test]
fn partitions_with_fst_term_dictionaries_are_rebuilt_and_found() {
    let directory = tempfile::tempdir().unwrap();
    let partition = copy_fst_fixture(directory.path());
    {
        let index = tantivy::Index::open_in_dir(&partition).unwrap();
        let reader = index.reader().unwrap();
        let schema = crate::schema::LogSchema::new();
        assert!(crate::upgrade::has_foreign_term_dictionaries(&reader, &schema).unwrap());
    }
    let store = open(directory.path());
    let searcher = LogSearcher::new(Arc::clone(&store));
    let declined = "payment declined for order 5f0c8e3a-1b2c-4d5e-8f90-123456789abc";
    assert_eq!(january_hits(&searcher, "").len(), 4);
    assert_eq!(january_hits(&searcher, "level:error"), vec![declined]);
    assert_eq!(
        january_hits(&searcher, "level:warn"),
        vec!["slow upstream call to inventory"]
    );
    assert_eq!(january_hits(&searcher, "service:checkout").len(), 2);
    assert_eq!(
        january_hits(&searcher, "\"cache miss\""),
        vec!["cache miss for key cart:42, loading from database"]
    );
    assert_eq!(
        january_hits(&searcher, "5f0c8e3a-1b2c-4d5e-8f90-123456789abc"),
        vec![declined]
    );
    assert_eq!(
        january_hits(
            &searcher,
            "correlation_id:\"0a1b2c3d-0000-4000-8000-000000000002\""
        ),
        vec!["GET /api/v1/items/981 200 12ms"]
    );
    assert_eq!(
        january_hits(&searcher, "attributes.http.status:502"),
        vec![declined]
    );
    assert_eq!(
        january_hits(&searcher, "trace_id:4bf92f3577b34da6a3ce929d0e0e4736"),
        vec!["slow upstream call to inventory"]
    );

    // New lines follow the old ones in write order.
    let mut later = record(0, "info", "cart", "written after the rebuild");
    later.timestamp_ns = chrono::DateTime::parse_from_rfc3339("2026-01-05T12:00:00Z")
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap();
    store.write_records(vec![later]).unwrap();
    store.commit().unwrap();
    let all = january_hits(&searcher, "");
    assert_eq!(all.len(), 5);
    assert_eq!(all.last().unwrap(), "written after the rebuild");
    drop(searcher);
    drop(store);

    // Nothing is left beside the partition, and it is not rebuilt again.
    let names: Vec<String> = std::fs::read_dir(directory.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("p-"))
        .collect();
    assert_eq!(names, vec!["p-2026-01-05T00"]);
    let index = tantivy::Index::open_in_dir(&partition).unwrap();
    let reader = index.reader().unwrap();
    let schema = crate::schema::LogSchema::new();
    assert!(!crate::upgrade::has_foreign_term_dictionaries(&reader, &schema).unwrap());
    drop(reader);
    let store = open(directory.path());
    assert_eq!(january_hits(&LogSearcher::new(store), "").len(), 5);
}

/// A rebuild a crash interrupted is undone (before the swap) or finished (after it).
#[test]
fn an_interrupted_rebuild_is_undone_or_finished() {
    let directory = tempfile::tempdir().unwrap();
    let root = directory.path();
    let name = "p-2026-01-05T00";
    let count = |root: &std::path::Path| {
        let store = open(root);
        january_hits(&LogSearcher::new(store), "").len()
    };

    // Crash while the rebuild was written: it is deleted, and the partition rebuilt again.
    let partition = copy_fst_fixture(root);
    std::fs::create_dir_all(root.join(format!("{name}.rewrite"))).unwrap();
    std::fs::write(root.join(format!("{name}.rewrite/meta.json")), b"{").unwrap();
    assert_eq!(count(root), 4);
    assert!(!root.join(format!("{name}.rewrite")).exists());

    // Crash between the two renames: the old partition is put back and rebuilt.
    std::fs::remove_dir_all(&partition).unwrap();
    copy_fst_fixture(root);
    std::fs::rename(&partition, root.join(format!("{name}.old"))).unwrap();
    assert_eq!(count(root), 4);
    assert!(!root.join(format!("{name}.old")).exists());

    // Crash after the swap: the rebuilt partition stays, the old one is deleted.
    let old = root.join(format!("{name}.old"));
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("meta.json"), b"{").unwrap();
    assert_eq!(count(root), 4);
    assert!(!old.exists());
}
