//! Range functions answered from rollup buckets instead of samples. When every window of a
//! range function is a whole number of buckets of a rollup level (the range, the step and the
//! window ends are multiples of its resolution), `rate`, `increase`, `delta`, `resets`,
//! `count_over_time`, `min_over_time` and `max_over_time` need only each bucket's count,
//! first and last sample, min, max, resets and reset correction. A 24-hour query at a
//! 1-minute step then reads 1,440 buckets per series instead of 8,640 samples at StatsD's 10 s,
//! and gives the same result: the functions weigh exactly the same samples (tests compare both
//! paths over the same data).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use promql_parser::parser::Expr;
use vigil_model::{Bucket, Labels, SelectHints};

use super::eval::{selector_matchers, Evaluator, StepRange};
use super::functions::extrapolate;
use super::value::{Point, Series, Value};
use super::QueryError;

/// A range function with a bucketed form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BucketedFunction {
    Rate,
    Increase,
    Delta,
    Resets,
    CountOverTime,
    MinOverTime,
    MaxOverTime,
}

impl BucketedFunction {
    fn keeps_name(self) -> bool {
        false
    }
}

/// Evaluates `function(m[w])` from buckets when the store has a level that tiles every window;
/// returns `Ok(None)` to let the sample path evaluate it.
///
/// # Errors
/// [`QueryError`] when the store fails or the query runs past its deadline.
#[inline(never)]
pub(crate) fn try_eval(
    evaluator: &mut Evaluator<'_>,
    function: BucketedFunction,
    args: &[&Expr],
    range: &StepRange,
) -> Result<Option<Value>, QueryError> {
    let [Expr::MatrixSelector(selector)] = args else {
        return Ok(None);
    };
    let window_ends = evaluator.window_ends(&selector.vs.at, &selector.vs.offset, range);
    let (Some(&first_end), Some(&last_end)) = (window_ends.first(), window_ends.last()) else {
        return Ok(None);
    };
    let range_ms = selector.range.as_millis() as i64;
    let uniform_step = window_ends
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .collect::<HashSet<i64>>();
    let step_ms = match uniform_step.len() {
        0 => 0,
        1 => uniform_step.into_iter().next().unwrap_or(0),
        _ => return Ok(None),
    };
    let hints = SelectHints {
        start_ms: first_end - range_ms + 1,
        end_ms: last_end,
        step_ms,
        range_ms,
        first_last_suffice: false,
    };
    // Series may be visited from several threads at once.
    let output: Mutex<Vec<Series>> = Mutex::new(Vec::new());
    let seen: Mutex<HashSet<Labels>> = Mutex::new(HashSet::new());
    let deadline = evaluator.deadline();
    let deadline_passed = AtomicBool::new(false);
    let mut resolution_ms = None;
    for matchers in selector_matchers(&selector.vs)? {
        let reader = evaluator.reader();
        let visit = |labels: &Labels, buckets: &[Bucket]| {
            if deadline_passed.load(Ordering::Relaxed) || !seen.lock().insert(labels.clone()) {
                return;
            }
            if Instant::now() > deadline {
                deadline_passed.store(true, Ordering::Relaxed);
                return;
            }
            // Only buckets with samples; a bucket of nothing but a staleness marker holds none.
            // Most series have no such bucket, and then need no copy.
            let present: Vec<Bucket>;
            let buckets = if buckets.iter().all(|bucket| bucket.count > 0) {
                buckets
            } else {
                present = buckets
                    .iter()
                    .filter(|bucket| bucket.count > 0)
                    .copied()
                    .collect();
                &present
            };
            let points = evaluate_series(function, buckets, &window_ends, range_ms);
            if !points.is_empty() {
                output.lock().push(Series {
                    labels: labels.clone(),
                    drop_name: !function.keeps_name(),
                    points,
                });
            }
        };
        let Some(resolution) = reader.visit_buckets(&matchers, &hints, &visit)? else {
            return Ok(None);
        };
        resolution_ms = Some(resolution);
    }
    if deadline_passed.load(Ordering::Relaxed) {
        evaluator.check_deadline("buckets")?;
    }
    let Some(resolution_ms) = resolution_ms else {
        return Ok(None);
    };
    debug_assert!(window_ends
        .iter()
        .all(|end| end.rem_euclid(resolution_ms) == 0));
    // The same order whatever order the series were visited in.
    let mut output = output.into_inner();
    output.sort_unstable_by(|left, right| left.labels.cmp(&right.labels));
    Ok(Some(Value::Vector(output)))
}

/// Evaluates `function` over one series' buckets at every window end.
fn evaluate_series(
    function: BucketedFunction,
    buckets: &[Bucket],
    window_ends: &[i64],
    range_ms: i64,
) -> Vec<Point> {
    let mut points = Vec::with_capacity(window_ends.len());
    let (mut low, mut high) = (0usize, 0usize);
    for (step, &end) in window_ends.iter().enumerate() {
        if step > 0 && end < window_ends[step - 1] {
            // Ends never decrease (an @ modifier repeats one); start over if they ever do.
            low = 0;
            high = 0;
        }
        let start = end - range_ms;
        while low < buckets.len() && buckets[low].end_ms <= start {
            low += 1;
        }
        high = high.max(low);
        while high < buckets.len() && buckets[high].end_ms <= end {
            high += 1;
        }
        if let Some(value) = evaluate_window(function, &buckets[low..high], end, range_ms) {
            points.push(Point {
                step: step as u32,
                value,
            });
        }
    }
    points
}

fn evaluate_window(
    function: BucketedFunction,
    window: &[Bucket],
    window_end: i64,
    range_ms: i64,
) -> Option<f64> {
    let (first_bucket, last_bucket) = (window.first()?, window.last()?);
    let count: u64 = window.iter().map(|bucket| bucket.count).sum();
    match function {
        BucketedFunction::CountOverTime => Some(count as f64),
        BucketedFunction::MinOverTime => Some(
            window
                .iter()
                .skip(1)
                .fold(first_bucket.min, |min, bucket| min.min(bucket.min)),
        ),
        BucketedFunction::MaxOverTime => Some(
            window
                .iter()
                .skip(1)
                .fold(first_bucket.max, |max, bucket| max.max(bucket.max)),
        ),
        BucketedFunction::Resets => {
            let mut resets = first_bucket.resets;
            for pair in window.windows(2) {
                resets += pair[1].resets + u64::from(pair[1].first.value < pair[0].last.value);
            }
            Some(resets as f64)
        }
        BucketedFunction::Rate | BucketedFunction::Increase | BucketedFunction::Delta => {
            if count < 2 {
                return None;
            }
            let is_counter = function != BucketedFunction::Delta;
            let mut result = last_bucket.last.value - first_bucket.first.value;
            if is_counter {
                // Prometheus adds the value before every decrease; a first sample below zero
                // counts as a decrease from zero and adds nothing.
                result += first_bucket.reset_correction;
                for pair in window.windows(2) {
                    result += pair[1].reset_correction;
                    if pair[1].first.value < pair[0].last.value {
                        result += pair[0].last.value;
                    }
                }
            }
            Some(extrapolate(
                first_bucket.first,
                last_bucket.last,
                count as usize,
                result,
                window_end,
                range_ms,
                is_counter,
                function == BucketedFunction::Rate,
            ))
        }
    }
}
