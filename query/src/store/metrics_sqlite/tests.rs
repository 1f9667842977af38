use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use vigil_model::{SketchSample, METRIC_NAME};

fn sample(timestamp_ms: i64, value: f64) -> Sample {
    Sample {
        timestamp_ms,
        value,
    }
}

fn batch_of(labels: &Labels, samples: Vec<Sample>) -> MetricBatch {
    MetricBatch {
        series: vec![SeriesSamples {
            labels: labels.clone(),
            samples,
        }],
        ..MetricBatch::default()
    }
}

fn whole_range() -> SelectHints {
    SelectHints {
        start_ms: i64::MIN / 2,
        end_ms: i64::MAX / 2,
        step_ms: 0,
        range_ms: 0,
        first_last_suffice: false,
    }
}

fn values(store: &MetricStore, metric_name: &str) -> Vec<(i64, f64)> {
    let selected = store
        .select(
            &[LabelMatcher::equal(METRIC_NAME, metric_name)],
            &whole_range(),
        )
        .unwrap();
    selected
        .into_iter()
        .flat_map(|series| series.samples)
        .map(|sample| (sample.timestamp_ms, sample.value))
        .collect()
}

#[test]
fn written_samples_are_read_back_before_and_after_a_head_flush() {
    let directory = tempfile::tempdir().unwrap();
    let store = MetricStore::open(directory.path(), MetricStoreOptions::default()).unwrap();
    let labels = Labels::with_name("requests_total", [("job", "api")]);
    store
        .write(batch_of(
            &labels,
            vec![sample(1_000, 1.0), sample(2_000, 2.0)],
        ))
        .unwrap();
    assert_eq!(
        values(&store, "requests_total"),
        vec![(1_000, 1.0), (2_000, 2.0)]
    );
    assert_eq!(store.flush_head().unwrap(), 2);
    store
        .write(batch_of(&labels, vec![sample(3_000, 3.0)]))
        .unwrap();
    assert_eq!(
        values(&store, "requests_total"),
        vec![(1_000, 1.0), (2_000, 2.0), (3_000, 3.0)]
    );
}

#[test]
fn acknowledged_samples_survive_reopening_without_a_flush() {
    let directory = tempfile::tempdir().unwrap();
    let labels = Labels::with_name("temperature", [("room", "a")]);
    {
        let store = MetricStore::open(directory.path(), MetricStoreOptions::default()).unwrap();
        store
            .write(batch_of(&labels, vec![sample(10, 20.5), sample(20, 21.5)]))
            .unwrap();
        // Dropped without flush_head: only the WAL rows hold the samples.
    }
    let store = MetricStore::open(directory.path(), MetricStoreOptions::default()).unwrap();
    assert_eq!(values(&store, "temperature"), vec![(10, 20.5), (20, 21.5)]);
}

#[test]
fn a_later_write_of_the_same_timestamp_wins() {
    let directory = tempfile::tempdir().unwrap();
    let store = MetricStore::open(directory.path(), MetricStoreOptions::default()).unwrap();
    let labels = Labels::with_name("gauge", Vec::<(String, String)>::new());
    store
        .write(batch_of(&labels, vec![sample(5, 1.0)]))
        .unwrap();
    store.flush_head().unwrap();
    store
        .write(batch_of(&labels, vec![sample(5, 9.0)]))
        .unwrap();
    assert_eq!(values(&store, "gauge"), vec![(5, 9.0)]);
}

#[test]
fn retention_is_measured_back_from_the_newest_sample() {
    let directory = tempfile::tempdir().unwrap();
    let options = MetricStoreOptions {
        raw_retention: Duration::from_secs(60),
        rollups: vec![RollupLevel {
            resolution: Duration::from_secs(60),
            retention: Duration::from_secs(600),
        }],
        ..MetricStoreOptions::default()
    };
    let store = MetricStore::open(directory.path(), options).unwrap();
    let old = Labels::with_name("old", Vec::<(String, String)>::new());
    let new = Labels::with_name("new", Vec::<(String, String)>::new());
    store
        .write(batch_of(
            &old,
            (0..10).map(|i| sample(i * 10_000, i as f64)).collect(),
        ))
        .unwrap();
    store.flush_head().unwrap();
    store
        .write(batch_of(&new, vec![sample(3_600_000, 1.0)]))
        .unwrap();
    store.flush_head().unwrap();
    assert!(store.enforce_retention().unwrap() > 0);
    assert!(values(&store, "old").is_empty());
    assert_eq!(values(&store, "new"), vec![(3_600_000, 1.0)]);
    assert_eq!(store.stats().series, 1);
}

#[test]
fn old_windows_are_answered_from_rollups_with_first_and_last_of_each_bucket() {
    let directory = tempfile::tempdir().unwrap();
    let options = MetricStoreOptions {
        raw_retention: Duration::from_secs(600),
        rollups: vec![RollupLevel {
            resolution: Duration::from_secs(60),
            retention: Duration::from_secs(86_400),
        }],
        ..MetricStoreOptions::default()
    };
    let store = MetricStore::open(directory.path(), options).unwrap();
    let counter = Labels::with_name("hits_total", Vec::<(String, String)>::new());
    // One sample every 10 s for 2 hours: the first 110 minutes are beyond raw retention.
    let samples: Vec<Sample> = (0..720).map(|i| sample(i * 10_000, i as f64)).collect();
    store.write(batch_of(&counter, samples)).unwrap();
    store.flush_head().unwrap();
    store.enforce_retention().unwrap();
    let old_window = SelectHints {
        start_ms: 0,
        end_ms: 600_000,
        step_ms: 60_000,
        range_ms: 0,
        first_last_suffice: false,
    };
    let selected = store
        .select(
            &[LabelMatcher::equal(METRIC_NAME, "hits_total")],
            &old_window,
        )
        .unwrap();
    let timestamps: Vec<i64> = selected[0].samples.iter().map(|s| s.timestamp_ms).collect();
    // Buckets (-60s,0], (0,60s], (60s,120s], …: first and last sample of each.
    assert_eq!(&timestamps[..5], &[0, 10_000, 60_000, 70_000, 120_000]);
    assert_eq!(*timestamps.last().unwrap(), 600_000);
}

#[test]
fn series_over_the_per_metric_limit_are_rejected_and_the_rest_written() {
    let directory = tempfile::tempdir().unwrap();
    let options = MetricStoreOptions {
        max_series_per_metric: 2,
        ..MetricStoreOptions::default()
    };
    let store = MetricStore::open(directory.path(), options).unwrap();
    let batch = MetricBatch {
        series: (0..3)
            .map(|i| SeriesSamples {
                labels: Labels::with_name("exploding", [("id", i.to_string())]),
                samples: vec![sample(1, 1.0)],
            })
            .collect(),
        ..MetricBatch::default()
    };
    let result = store.write(batch);
    assert!(matches!(
        result,
        Err(SinkError::LimitExceeded { rejected: 1, .. })
    ));
    assert_eq!(values(&store, "exploding").len(), 2);
}

#[test]
fn a_series_new_to_the_store_named_twice_in_one_batch_is_created_once() {
    let directory = tempfile::tempdir().unwrap();
    let store = MetricStore::open(directory.path(), MetricStoreOptions::default()).unwrap();
    let labels = Labels::with_name("twice", [("id", "a")]);
    let batch = MetricBatch {
        series: vec![
            SeriesSamples {
                labels: labels.clone(),
                samples: vec![sample(1_000, 1.0)],
            },
            SeriesSamples {
                labels: Labels::with_name("twice", [("id", "b")]),
                samples: vec![sample(1_000, 5.0)],
            },
            SeriesSamples {
                labels,
                samples: vec![sample(2_000, 2.0)],
            },
        ],
        ..MetricBatch::default()
    };
    store.write(batch).unwrap();
    let selected = store
        .select(&[LabelMatcher::equal(METRIC_NAME, "twice")], &whole_range())
        .unwrap();
    assert_eq!(selected.len(), 2, "{selected:?}");
    let mut values = values(&store, "twice");
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(values, vec![(1_000, 1.0), (1_000, 5.0), (2_000, 2.0)]);
}

#[test]
fn hour_aligned_window_reads_one_merged_sketch_per_series_within_one_percent() {
    let directory = tempfile::tempdir().unwrap();
    let store = MetricStore::open(directory.path(), MetricStoreOptions::default()).unwrap();
    let mut exact: Vec<f64> = Vec::new();
    // Three instances flush a sketch every 10 s for one hour.
    for flush in 1..=360i64 {
        let mut sketches = Vec::new();
        for instance in 0..3 {
            let mut sketch = Sketch::new();
            for observation in 0..20 {
                let value =
                    0.001 * ((flush * 7 + instance * 13 + observation * 31) % 997 + 1) as f64;
                sketch.add(value);
                exact.push(value);
            }
            sketches.push(SketchSample {
                labels: Labels::with_name("latency_seconds", [("instance", instance.to_string())]),
                timestamp_ms: flush * 10_000,
                sketch,
            });
        }
        store
            .write(MetricBatch {
                sketches,
                ..MetricBatch::default()
            })
            .unwrap();
    }
    let hour = SelectHints {
        start_ms: 0,
        end_ms: 3_600_000,
        step_ms: 3_600_000,
        range_ms: 3_600_000,
        first_last_suffice: false,
    };
    let selected = store
        .select_sketches(
            &[LabelMatcher::equal(METRIC_NAME, "latency_seconds")],
            &hour,
        )
        .unwrap();
    assert_eq!(selected.len(), 3);
    let mut merged = Sketch::new();
    for series in &selected {
        assert_eq!(series.sketches.len(), 1, "one 1h rollup bucket per series");
        merged.merge(&series.sketches[0].1);
    }
    exact.sort_by(f64::total_cmp);
    let expected = exact[((exact.len() - 1) as f64 * 0.99).round() as usize];
    let estimate = merged.quantile(0.99).unwrap();
    assert!(
        (estimate - expected).abs() / expected < 0.01,
        "{estimate} vs {expected}"
    );
}

mod rollup_answers_match_raw {
    use super::*;
    use crate::promql::{Engine, MemoryReader, QueryResult};
    use crate::store::buckets::encode_interleaved;

    const HOUR_MS: i64 = 3_600_000;

    /// Counters with resets, one sample every 10 s (jittered) for 3 hours, in the SQLite store
    /// (raw samples plus rollups) and in the in-memory reader (raw samples only).
    fn both_readers() -> (tempfile::TempDir, Arc<MetricStore>, Arc<MemoryReader>) {
        let directory = tempfile::tempdir().unwrap();
        let store =
            Arc::new(MetricStore::open(directory.path(), MetricStoreOptions::default()).unwrap());
        let memory = Arc::new(MemoryReader::new());
        for series_index in 0..6i64 {
            let service = format!("service-{}", series_index % 2);
            let labels = Labels::with_name(
                "requests_total",
                [
                    ("service", service.as_str()),
                    ("instance", &series_index.to_string()),
                ],
            );
            let mut value = 0.0;
            let samples: Vec<Sample> = (0..1080i64)
                .map(|index| {
                    value += ((index * 7 + series_index * 3) % 11) as f64;
                    if (index + series_index * 37) % 250 == 0 {
                        value = 1.0; // a restart resets the counter
                    }
                    sample(
                        index * 10_000 + (index * 13 + series_index) % 5 * 1_000,
                        value,
                    )
                })
                .collect();
            memory.add_samples(labels.clone(), samples.clone());
            for part in samples.chunks(200) {
                store.write(batch_of(&labels, part.to_vec())).unwrap();
                store.flush_head().unwrap();
            }
        }
        (directory, store, memory)
    }

    fn matrix(result: QueryResult) -> Vec<(Labels, Vec<(i64, f64)>)> {
        let QueryResult::Matrix(series) = result else {
            panic!("not a matrix: {result:?}");
        };
        series
            .into_iter()
            .map(|one| (one.labels, one.points))
            .collect()
    }

    #[track_caller]
    fn assert_same_answer(query: &str, step_ms: i64) {
        let (_directory, store, memory) = both_readers();
        assert_readers_agree(query, step_ms, store, memory);
    }

    #[track_caller]
    fn assert_readers_agree(
        query: &str,
        step_ms: i64,
        store: Arc<MetricStore>,
        memory: Arc<MemoryReader>,
    ) {
        let from_store = Engine::new(store)
            .range_query(query, HOUR_MS / 2, 3 * HOUR_MS - 600_000, step_ms)
            .unwrap();
        let from_raw = Engine::new(memory)
            .range_query(query, HOUR_MS / 2, 3 * HOUR_MS - 600_000, step_ms)
            .unwrap();
        let (store_series, raw_series) = (matrix(from_store), matrix(from_raw));
        assert_close(query, &store_series, &raw_series);
    }

    /// The first byte of every rollup chunk: 0 for the columnar layout, the bucket count for
    /// the interleaved one.
    fn rollup_chunk_tags(store: &MetricStore) -> Vec<u8> {
        let writer = store.writer.lock();
        let mut statement = writer
            .prepare("SELECT data FROM chunks WHERE level > 0 ORDER BY series_id, level, start_ms")
            .unwrap();
        let tags = statement
            .query_map([], |row| row.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|blob| blob.unwrap()[0])
            .collect();
        tags
    }

    #[test]
    fn rollup_chunks_of_the_earlier_interleaved_layout_are_read_and_rewritten_columnar() {
        let (_directory, store, memory) = both_readers();
        assert!(rollup_chunk_tags(&store).iter().all(|tag| *tag == 0));
        // Turn every rollup chunk into what a store of an earlier version holds.
        {
            let writer = store.writer.lock();
            let chunks: Vec<(i64, i64, i64, i64, Vec<u8>)> = writer
                .prepare("SELECT series_id, level, start_ms, seq, data FROM chunks WHERE level > 0")
                .unwrap()
                .query_map([], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            for (series_id, level, start_ms, seq, blob) in chunks {
                let mut buckets = Vec::new();
                decode_buckets(&blob, &mut buckets).unwrap();
                writer
                    .execute(
                        "UPDATE chunks SET data = ?5 WHERE series_id = ?1 AND level = ?2
                         AND start_ms = ?3 AND seq = ?4",
                        params![
                            series_id,
                            level,
                            start_ms,
                            seq,
                            encode_interleaved(&buckets)
                        ],
                    )
                    .unwrap();
            }
        }
        assert!(rollup_chunk_tags(&store).iter().all(|tag| *tag != 0));
        for (query, step_ms) in [
            ("sum by (service) (rate(requests_total[5m]))", 60_000),
            ("resets(requests_total[30m])", 60_000),
            ("max_over_time(requests_total[1h])", HOUR_MS),
            ("requests_total", 60_000),
        ] {
            assert_readers_agree(query, step_ms, store.clone(), memory.clone());
        }
        // A flush rewrites the blocks it touches in the columnar layout; the others stay
        // interleaved, and answers hold across both.
        let labels = Labels::with_name(
            "requests_total",
            [("service", "service-0"), ("instance", "0")],
        );
        let late = vec![sample(3 * HOUR_MS + 10_000, 1e6)];
        memory.add_samples(labels.clone(), late.clone());
        store.write(batch_of(&labels, late)).unwrap();
        store.flush_head().unwrap();
        let tags = rollup_chunk_tags(&store);
        assert_eq!(tags.iter().filter(|tag| **tag == 0).count(), 2, "{tags:?}");
        assert_readers_agree(
            "sum by (service) (rate(requests_total[5m]))",
            60_000,
            store,
            memory,
        );
    }

    fn assert_close(
        query: &str,
        store_series: &[(Labels, Vec<(i64, f64)>)],
        raw_series: &[(Labels, Vec<(i64, f64)>)],
    ) {
        assert_eq!(store_series.len(), raw_series.len(), "{query}");
        assert!(!raw_series.is_empty());
        for ((store_labels, store_points), (raw_labels, raw_points)) in
            store_series.iter().zip(raw_series)
        {
            assert_eq!(store_labels, raw_labels);
            assert_eq!(
                store_points.len(),
                raw_points.len(),
                "{query} {store_labels}"
            );
            for (left, right) in store_points.iter().zip(raw_points) {
                assert_eq!(left.0, right.0);
                assert!(
                    (left.1 - right.1).abs() <= 1e-9 * right.1.abs().max(1.0),
                    "{query} {store_labels} at {}: {} vs {}",
                    left.0,
                    left.1,
                    right.1
                );
            }
        }
    }

    #[test]
    fn instant_selector_from_the_minute_and_hour_rollups_equals_raw() {
        assert_same_answer("requests_total", 60_000);
        assert_same_answer("sum by (service) (requests_total)", HOUR_MS);
        assert_same_answer("last_over_time(requests_total[1h])", HOUR_MS);
    }

    #[test]
    fn rate_increase_and_delta_from_buckets_equal_raw() {
        assert_same_answer("sum by (service) (rate(requests_total[5m]))", 60_000);
        assert_same_answer("increase(requests_total[10m])", 120_000);
        assert_same_answer("delta(requests_total[1h])", HOUR_MS);
        assert_same_answer("rate(requests_total[2h] offset 1h)", HOUR_MS);
    }

    #[test]
    fn resets_count_min_max_from_buckets_equal_raw() {
        assert_same_answer("resets(requests_total[30m])", 60_000);
        assert_same_answer("count_over_time(requests_total[1h])", HOUR_MS);
        assert_same_answer("min_over_time(requests_total[5m])", 300_000);
        assert_same_answer("max_over_time(requests_total[1h])", HOUR_MS);
    }

    #[test]
    fn unaligned_and_sample_hungry_functions_read_samples_and_match() {
        assert_same_answer("rate(requests_total[5m])", 15_000);
        assert_same_answer("irate(requests_total[5m])", 60_000);
        assert_same_answer("sum_over_time(requests_total[5m])", 60_000);
        assert_same_answer("quantile_over_time(0.5, requests_total[5m])", 60_000);
    }

    #[test]
    fn many_series_read_by_several_threads_equal_raw() {
        // Enough series for four reader threads; every series is visited once and the
        // answer (sorted by labels) is the one the raw samples give.
        let directory = tempfile::tempdir().unwrap();
        let options = MetricStoreOptions {
            bucket_read_threads: 4,
            ..MetricStoreOptions::default()
        };
        let store = Arc::new(MetricStore::open(directory.path(), options).unwrap());
        let memory = Arc::new(MemoryReader::new());
        let mut batch = MetricBatch::default();
        for series_index in 0..300i64 {
            let labels = Labels::with_name(
                "requests_total",
                [
                    ("service", format!("service-{}", series_index % 20).as_str()),
                    ("instance", &series_index.to_string()),
                ],
            );
            let samples: Vec<Sample> = (0..360i64)
                .map(|index| sample(index * 10_000, (index * (series_index + 1)) as f64))
                .collect();
            memory.add_samples(labels.clone(), samples.clone());
            batch.series.push(SeriesSamples { labels, samples });
        }
        store.write(batch).unwrap();
        store.flush_head().unwrap();
        for query in [
            "rate(requests_total[5m])",
            "sum by (service) (increase(requests_total[10m]))",
        ] {
            let from_store = Engine::new(store.clone())
                .range_query(query, 600_000, HOUR_MS - 60_000, 60_000)
                .unwrap();
            let from_raw = Engine::new(memory.clone())
                .range_query(query, 600_000, HOUR_MS - 60_000, 60_000)
                .unwrap();
            let (store_series, raw_series) = (matrix(from_store), matrix(from_raw));
            assert!(store_series.len() >= 20, "{query}");
            assert_close(query, &store_series, &raw_series);
        }
    }

    #[test]
    fn aligned_range_functions_are_answered_from_buckets_with_recent_samples_included() {
        let (_directory, store, _) = both_readers();
        // Unflushed samples live in the head; buckets must include them.
        let labels = Labels::with_name(
            "requests_total",
            [("service", "service-0"), ("instance", "0")],
        );
        store
            .write(batch_of(&labels, vec![sample(3 * HOUR_MS + 30_000, 1e6)]))
            .unwrap();
        let hints = SelectHints {
            start_ms: 3 * HOUR_MS - 300_000 + 1,
            end_ms: 3 * HOUR_MS + 60_000,
            step_ms: 60_000,
            range_ms: 300_000,
            first_last_suffice: false,
        };
        let visited: Mutex<Vec<(Labels, Vec<vigil_model::Bucket>)>> = Mutex::new(Vec::new());
        let resolution = store
            .visit_buckets(
                &[LabelMatcher::equal("instance", "0")],
                &hints,
                &|labels, buckets| visited.lock().push((labels.clone(), buckets.to_vec())),
            )
            .unwrap()
            .expect("a level tiles the windows");
        let visited = visited.into_inner();
        assert_eq!(resolution, 60_000);
        assert_eq!(visited.len(), 1);
        let newest = visited[0].1.last().unwrap();
        assert_eq!(newest.end_ms, 3 * HOUR_MS + 60_000);
        assert_eq!(newest.last.value, 1e6);
        let unaligned = SelectHints {
            step_ms: 15_000,
            ..hints
        };
        let visits = AtomicUsize::new(0);
        assert!(store
            .visit_buckets(
                &[LabelMatcher::equal("instance", "0")],
                &unaligned,
                &|_, _| {
                    visits.fetch_add(1, Ordering::Relaxed);
                }
            )
            .unwrap()
            .is_none());
        assert_eq!(visits.into_inner(), 0);
    }

    #[test]
    fn hints_pick_the_coarsest_aligned_level() {
        let (_directory, store, _) = both_readers();
        let hints = |start_ms: i64, end_ms: i64, step_ms: i64| SelectHints {
            start_ms,
            end_ms,
            step_ms,
            range_ms: 0,
            first_last_suffice: true,
        };
        assert_eq!(
            store.first_level_for(&hints(HOUR_MS + 1, 2 * HOUR_MS, HOUR_MS)),
            2
        );
        assert_eq!(store.first_level_for(&hints(60_001, HOUR_MS, 60_000)), 1);
        assert_eq!(store.first_level_for(&hints(60_001, HOUR_MS, 15_000)), 0);
        assert_eq!(store.first_level_for(&hints(1, 90_000, 0)), 0);
        let exact_needed = SelectHints {
            first_last_suffice: false,
            ..hints(HOUR_MS + 1, 2 * HOUR_MS, HOUR_MS)
        };
        assert_eq!(store.first_level_for(&exact_needed), 0);
    }
}

#[test]
fn repeated_flushes_keep_one_chunk_per_block() {
    let directory = tempfile::tempdir().unwrap();
    let store = MetricStore::open(directory.path(), MetricStoreOptions::default()).unwrap();
    let labels = Labels::with_name("steady", Vec::<(String, String)>::new());
    // 3 hours at 10 s, flushed every minute: raw blocks are 2 h, so two raw chunks; minute
    // buckets come 120 to a chunk (two chunks for 181 buckets), hour buckets in one.
    for minute in 0..180i64 {
        let samples = (0..6).map(|i| sample(minute * 60_000 + i * 10_000, (minute * 6 + i) as f64));
        store.write(batch_of(&labels, samples.collect())).unwrap();
        store.flush_head().unwrap();
    }
    let chunk_count = |level: i64| -> i64 {
        store
            .writer
            .lock()
            .query_row(
                "SELECT COUNT(*) FROM chunks WHERE level = ?1",
                params![level],
                |row| row.get(0),
            )
            .unwrap()
    };
    assert_eq!(chunk_count(0), 2);
    assert_eq!(chunk_count(1), 2);
    assert_eq!(chunk_count(2), 1);
    let all = values(&store, "steady");
    assert_eq!(all.len(), 1080);
    assert!(all.windows(2).all(|pair| pair[0].0 < pair[1].0));
}
