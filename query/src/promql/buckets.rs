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
use super::functions::Extrapolation;
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
    let alternatives = selector_matchers(&selector.vs)?;
    // A series matching several alternatives (`{__name__=~"a|b" or ...}`) counts once; a
    // single alternative visits every series once and needs no bookkeeping.
    let deduplicate = alternatives.len() > 1;
    for matchers in alternatives {
        let reader = evaluator.reader();
        let visit = |labels: &Labels, buckets: &[Bucket]| {
            if deadline_passed.load(Ordering::Relaxed)
                || (deduplicate && !seen.lock().insert(labels.clone()))
            {
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
    match function {
        BucketedFunction::Rate | BucketedFunction::Increase | BucketedFunction::Delta => {
            let mut increase = Increase::new(function, buckets, range_ms);
            for_each_window(buckets, window_ends, range_ms, |step, low, high| {
                if let Some(value) = increase.over(low, high, window_ends[step]) {
                    points.push(Point {
                        step: step as u32,
                        value,
                    });
                }
            });
        }
        _ => for_each_window(buckets, window_ends, range_ms, |step, low, high| {
            if let Some(value) = evaluate_window(function, &buckets[low..high]) {
                points.push(Point {
                    step: step as u32,
                    value,
                });
            }
        }),
    }
    points
}

/// Calls `visit(step, low, high)` with the buckets `low..high` of each step's window.
fn for_each_window(
    buckets: &[Bucket],
    window_ends: &[i64],
    range_ms: i64,
    mut visit: impl FnMut(usize, usize, usize),
) {
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
        visit(step, low, high);
    }
}

/// `rate`, `increase` and `delta` of one series over consecutive windows of its buckets.
///
/// What every window would recompute is computed once per series: the sample count before
/// each bucket (a window's count is one subtraction), whether any bucket holds a counter reset
/// (most series have none, and then a window's increase is its last value minus its first),
/// and the extrapolation spans, which depend only on timestamps and repeat from window to
/// window when samples come at a regular interval. The floats are those [`super::functions::extrapolate`]
/// computes, operation for operation.
struct Increase<'a> {
    buckets: &'a [Bucket],
    range_ms: i64,
    is_counter: bool,
    is_rate: bool,
    /// `counts_before[i]`: samples in the buckets before `i`.
    counts_before: Vec<u64>,
    has_resets: bool,
    /// The spans of the last window, keyed by what they depend on.
    spans: Option<(SpansKey, Spans)>,
}

/// The offsets of the first and last sample from the window's edges, and the sample count.
type SpansKey = (i64, i64, i64, u64);

#[derive(Clone, Copy)]
struct Spans {
    extrapolation: Extrapolation,
    /// The factor when the counter's zero point does not shorten the extrapolation.
    factor: f64,
    /// A first value above `result * zero_cut` puts the zero point beyond the window's start
    /// (see [`Increase::over`]).
    zero_cut: f64,
}

impl<'a> Increase<'a> {
    fn new(function: BucketedFunction, buckets: &'a [Bucket], range_ms: i64) -> Self {
        let is_counter = function != BucketedFunction::Delta;
        // One pass: the running count, and whether any bucket holds a correction other than
        // +0.0 (adding +0.0 changes nothing but -0.0, which `over` handles) or starts below
        // the previous bucket's last value. Either takes the bucket-by-bucket sum.
        let mut counts_before = Vec::with_capacity(buckets.len() + 1);
        let mut total: u64 = 0;
        counts_before.push(total);
        let mut has_resets = false;
        let mut previous_last = f64::NEG_INFINITY;
        for bucket in buckets {
            total = total.wrapping_add(bucket.count);
            counts_before.push(total);
            has_resets |=
                (bucket.reset_correction.to_bits() != 0) | (bucket.first.value < previous_last);
            previous_last = bucket.last.value;
        }
        let has_resets = is_counter && has_resets;
        Increase {
            buckets,
            range_ms,
            is_counter,
            is_rate: function == BucketedFunction::Rate,
            counts_before,
            has_resets,
            spans: None,
        }
    }

    /// The value over the window of buckets `low..high` ending at `window_end`.
    #[inline]
    fn over(&mut self, low: usize, high: usize, window_end: i64) -> Option<f64> {
        if low >= high {
            return None;
        }
        let count = self.counts_before[high].wrapping_sub(self.counts_before[low]);
        if count < 2 {
            return None;
        }
        let (first, last) = (self.buckets[low].first, self.buckets[high - 1].last);
        let mut result = last.value - first.value;
        if self.has_resets {
            // Prometheus adds the value before every decrease; a first sample below zero
            // counts as a decrease from zero and adds nothing.
            let window = &self.buckets[low..high];
            result += window[0].reset_correction;
            for pair in window.windows(2) {
                result += pair[1].reset_correction;
                if pair[1].first.value < pair[0].last.value {
                    result += pair[0].last.value;
                }
            }
        } else if self.is_counter {
            // The first bucket's correction, +0.0: turns a -0.0 difference into +0.0.
            result += 0.0;
        }
        let key: SpansKey = (
            first.timestamp_ms - (window_end - self.range_ms),
            window_end - last.timestamp_ms,
            last.timestamp_ms - first.timestamp_ms,
            count,
        );
        let spans = match self.spans {
            Some((cached, spans)) if cached == key => spans,
            _ => {
                let extrapolation = Extrapolation::new(
                    first.timestamp_ms,
                    last.timestamp_ms,
                    count as usize,
                    window_end,
                    self.range_ms,
                );
                let spans = Spans {
                    extrapolation,
                    factor: extrapolation.factor(
                        extrapolation.duration_to_start,
                        self.range_ms,
                        self.is_rate,
                    ),
                    zero_cut: extrapolation.duration_to_start / extrapolation.sampled_interval
                        * (1.0 + 1e-9),
                };
                self.spans = Some((key, spans));
                spans
            }
        };
        if self.is_counter {
            // The zero point `sampled_interval * (first / result)` lies beyond the start, and
            // leaves the factor as it is, whenever `first > result * zero_cut`: the margin of
            // 1e-9 exceeds the rounding of the divisions on both sides. Only windows closer to
            // it (a counter that started inside the window) pay for the division.
            let cut = result * spans.zero_cut;
            let clearly_beyond = first.value > cut && cut.is_normal();
            if !clearly_beyond {
                if let Some(duration_to_zero) =
                    spans.extrapolation.duration_to_zero(first.value, result)
                {
                    if duration_to_zero < spans.extrapolation.duration_to_start {
                        let factor = spans.extrapolation.factor(
                            duration_to_zero,
                            self.range_ms,
                            self.is_rate,
                        );
                        return Some(result * factor);
                    }
                }
            }
        }
        Some(result * spans.factor)
    }
}

fn evaluate_window(function: BucketedFunction, window: &[Bucket]) -> Option<f64> {
    let first_bucket = window.first()?;
    match function {
        BucketedFunction::CountOverTime => {
            Some(window.iter().map(|bucket| bucket.count).sum::<u64>() as f64)
        }
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
        // Computed by [`Increase`].
        BucketedFunction::Rate | BucketedFunction::Increase | BucketedFunction::Delta => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::functions::extrapolate;
    use crate::store::buckets::buckets_from_samples;
    use proptest::prelude::*;
    use vigil_model::Sample;

    /// `rate`, `increase` or `delta` over one window as Prometheus writes it, without what
    /// [`Increase`] carries from window to window.
    fn window_value(
        function: BucketedFunction,
        window: &[Bucket],
        window_end: i64,
        range_ms: i64,
    ) -> Option<f64> {
        let (first_bucket, last_bucket) = (window.first()?, window.last()?);
        let count: u64 = window.iter().map(|bucket| bucket.count).sum();
        if count < 2 {
            return None;
        }
        let is_counter = function != BucketedFunction::Delta;
        let mut result = last_bucket.last.value - first_bucket.first.value;
        if is_counter {
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

    fn value_bits(points: &[Point]) -> Vec<(u32, u64)> {
        points
            .iter()
            .map(|point| {
                let bits = if point.value.is_nan() {
                    f64::NAN.to_bits()
                } else {
                    point.value.to_bits()
                };
                (point.step, bits)
            })
            .collect()
    }

    proptest! {
        /// The shared spans, the prefix counts and the skipped divisions change no bit of any
        /// value: counters starting near zero (the zero point inside the window), resets,
        /// gaps, irregular intervals and -0.0 included.
        #[test]
        fn rate_increase_and_delta_equal_the_window_by_window_computation(
            steps in proptest::collection::vec(
                (1i64..40_000, prop_oneof![
                    4 => 0.0f64..50.0,
                    1 => Just(-1e3),
                    1 => Just(0.0),
                    1 => 0.0f64..1e-300,
                ]),
                1..400,
            ),
            start in prop_oneof![Just(0.0f64), Just(-0.0f64), 0.0f64..1e6, -5.0f64..0.0],
            range_minutes in 1i64..12,
            step_minutes in 1i64..4,
        ) {
            let mut timestamp_ms = 0;
            let mut value = start;
            let samples: Vec<Sample> = steps
                .iter()
                .map(|&(interval_ms, increment)| {
                    timestamp_ms += interval_ms;
                    // A negative increment stands for a restart from zero.
                    value = if increment < 0.0 { 0.0 } else { value + increment };
                    Sample { timestamp_ms, value }
                })
                .collect();
            let buckets = buckets_from_samples(&samples, 60_000);
            let range_ms = range_minutes * 60_000;
            let window_ends: Vec<i64> = (0..=timestamp_ms / 60_000 + range_minutes)
                .step_by(step_minutes as usize)
                .map(|minute| minute * 60_000)
                .collect();
            for function in [
                BucketedFunction::Rate,
                BucketedFunction::Increase,
                BucketedFunction::Delta,
            ] {
                let mut expected = Vec::new();
                for_each_window(&buckets, &window_ends, range_ms, |step, low, high| {
                    if let Some(value) =
                        window_value(function, &buckets[low..high], window_ends[step], range_ms)
                    {
                        expected.push(Point { step: step as u32, value });
                    }
                });
                let actual = evaluate_series(function, &buckets, &window_ends, range_ms);
                prop_assert_eq!(value_bits(&actual), value_bits(&expected), "{:?}", function);
            }
        }
    }
}
