//! The evaluator: walks the expression tree once over all steps of a query.

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp as ParserMatchOp, Matcher as ParserMatcher};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector};
use vigil_model::{
    is_stale_marker, LabelMatcher, Labels, MatchOp, MetricReader, Sample, SelectHints,
    SeriesSamples, METRIC_NAME,
};

use super::value::{
    Point, QueryResult, RangeResultSeries, RangeSeries, RangeVector, Series, Value, VectorSample,
};
use super::{aggregate, binary, functions, EngineOptions, QueryError};

/// Most steps one subquery may evaluate (each step costs memory even when empty).
const MAX_SUBQUERY_STEPS: i64 = 1_000_000;

/// The steps a node is evaluated at: `start, start + step, ..., end`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepRange {
    pub start: i64,
    pub step: i64,
    pub count: usize,
    /// True for the steps of an instant query (reported as step 0 in select hints).
    pub instant: bool,
}

impl StepRange {
    pub fn time(&self, step_index: usize) -> i64 {
        self.start + step_index as i64 * self.step
    }
}

/// State of one query's evaluation.
pub(crate) struct Evaluator<'a> {
    reader: &'a dyn MetricReader,
    options: &'a EngineOptions,
    /// Start and end of the whole query, for `@ start()` and `@ end()`.
    query_start: i64,
    query_end: i64,
    deadline: Instant,
    samples_read: usize,
    /// Set while a range function whose result depends only on the first and last samples
    /// of buckets (and counter resets) reads its matrix selector.
    first_last_suffice: bool,
}

/// Evaluates an instant query.
pub(crate) fn evaluate_instant(
    reader: &dyn MetricReader,
    options: &EngineOptions,
    expr: &Expr,
    time_ms: i64,
    deadline: Instant,
) -> Result<QueryResult, QueryError> {
    let mut evaluator = Evaluator {
        reader,
        options,
        query_start: time_ms,
        query_end: time_ms,
        deadline,
        samples_read: 0,
        first_last_suffice: false,
    };
    let range = StepRange {
        start: time_ms,
        step: 1,
        count: 1,
        instant: true,
    };
    let value = evaluator.eval(expr, &range)?;
    Ok(match value {
        Value::Scalar(values) => QueryResult::Scalar {
            timestamp_ms: time_ms,
            value: values.first().copied().unwrap_or(f64::NAN),
        },
        Value::String(text) => QueryResult::String {
            timestamp_ms: time_ms,
            value: text,
        },
        Value::Vector(series) => {
            let mut samples = Vec::with_capacity(series.len());
            for one in series {
                if let Some(point) = one.points.first() {
                    samples.push(VectorSample {
                        labels: final_labels(one.labels, one.drop_name),
                        timestamp_ms: time_ms,
                        value: point.value,
                    });
                }
            }
            let mut seen = std::collections::HashSet::new();
            for sample in &samples {
                if !seen.insert(&sample.labels) {
                    return Err(duplicate_labelset());
                }
            }
            QueryResult::Vector(samples)
        }
        Value::Matrix(matrix) => {
            let mut result = Vec::new();
            for one in matrix.series {
                let mut points = Vec::new();
                RangeVector::for_each_window(
                    &one.samples,
                    matrix.range_ms,
                    &matrix.window_ends,
                    |_, window| {
                        points.extend(window.iter().map(|s| (s.timestamp_ms, s.value)));
                    },
                );
                if !points.is_empty() {
                    result.push(RangeResultSeries {
                        labels: final_labels(one.labels, one.drop_name),
                        points,
                    });
                }
            }
            let mut seen = std::collections::HashSet::new();
            for series in &result {
                if !seen.insert(&series.labels) {
                    return Err(duplicate_labelset());
                }
            }
            result.sort_by(|a, b| a.labels.cmp(&b.labels));
            QueryResult::Matrix(result)
        }
    })
}

/// Evaluates a range query.
pub(crate) fn evaluate_range(
    reader: &dyn MetricReader,
    options: &EngineOptions,
    expr: &Expr,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    deadline: Instant,
) -> Result<QueryResult, QueryError> {
    if step_ms <= 0 {
        return Err(QueryError::BadQuery(
            "zero or negative query resolution step widths are not accepted. Try a positive integer"
                .to_string(),
        ));
    }
    if end_ms < start_ms {
        return Err(QueryError::BadQuery(
            "end timestamp must not be before start time".to_string(),
        ));
    }
    if (end_ms - start_ms) / step_ms > super::MAX_RANGE_STEPS {
        return Err(QueryError::BadQuery(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
                .to_string(),
        ));
    }
    match expr.value_type() {
        ValueType::Scalar | ValueType::Vector => {}
        other => {
            let name = match other {
                ValueType::Matrix => "range vector",
                _ => "string",
            };
            return Err(QueryError::BadQuery(format!(
                "invalid expression type \"{name}\" for range query, must be Scalar or instant Vector"
            )));
        }
    }
    let count = ((end_ms - start_ms) / step_ms + 1) as usize;
    let range = StepRange {
        start: start_ms,
        step: step_ms,
        count,
        instant: false,
    };
    let mut evaluator = Evaluator {
        reader,
        options,
        query_start: start_ms,
        query_end: end_ms,
        deadline,
        samples_read: 0,
        first_last_suffice: false,
    };
    let value = evaluator.eval(expr, &range)?;
    let mut result: Vec<RangeResultSeries> = match value {
        Value::Scalar(values) => vec![RangeResultSeries {
            labels: Labels::empty(),
            points: values
                .iter()
                .enumerate()
                .map(|(index, value)| (range.time(index), *value))
                .collect(),
        }],
        Value::Vector(series) => {
            // Dropping names at the end may make two series equal: merge them, unless they
            // both have a point at the same step.
            let mut builder = SeriesBuilder::default();
            for one in series {
                let labels = final_labels(one.labels, one.drop_name);
                builder.push_series(labels, one.points)?;
            }
            builder
                .finish()
                .into_iter()
                .filter(|series| !series.points.is_empty())
                .map(|series| RangeResultSeries {
                    labels: series.labels,
                    points: series
                        .points
                        .iter()
                        .map(|point| (range.time(point.step as usize), point.value))
                        .collect(),
                })
                .collect()
        }
        other => {
            return Err(QueryError::BadQuery(format!(
                "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                other.type_name()
            )))
        }
    };
    result.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(QueryResult::Matrix(result))
}

/// Labels that describe the metric name and go with it (Prometheus' type-and-unit labels).
pub(crate) const NAME_METADATA_LABELS: [&str; 3] = [METRIC_NAME, "__type__", "__unit__"];

fn final_labels(mut labels: Labels, drop_name: bool) -> Labels {
    if drop_name {
        for name in NAME_METADATA_LABELS {
            labels.remove(name);
        }
    }
    labels
}

pub(crate) fn duplicate_labelset() -> QueryError {
    QueryError::Execution("vector cannot contain metrics with the same labelset".to_string())
}

/// Collects output points series by series, keyed by label set, refusing two points of the
/// same series at the same step.
#[derive(Default)]
pub(crate) struct SeriesBuilder {
    index: HashMap<Labels, usize>,
    series: Vec<Series>,
}

impl SeriesBuilder {
    pub fn push(
        &mut self,
        labels: &Labels,
        drop_name: bool,
        step: u32,
        value: f64,
    ) -> Result<(), QueryError> {
        let position = match self.index.get(labels) {
            Some(position) => *position,
            None => {
                self.series.push(Series {
                    labels: labels.clone(),
                    drop_name,
                    points: Vec::new(),
                });
                self.index.insert(labels.clone(), self.series.len() - 1);
                self.series.len() - 1
            }
        };
        let series = &mut self.series[position];
        series.drop_name |= drop_name;
        if let Some(last) = series.points.last() {
            if last.step == step {
                return Err(duplicate_labelset());
            }
            if last.step > step {
                // Points arrive in step order per series except when several inputs merge;
                // keep the order by inserting.
                let at = series.points.partition_point(|point| point.step < step);
                if series.points.get(at).map(|point| point.step) == Some(step) {
                    return Err(duplicate_labelset());
                }
                series.points.insert(at, Point { step, value });
                return Ok(());
            }
        }
        series.points.push(Point { step, value });
        Ok(())
    }

    /// Adds the points of a series (in step order, at most one per step, as [`Series`]
    /// holds them): one lookup of its labels rather than one per point, and no copy of the
    /// points when no earlier series had its labels.
    pub fn push_series(&mut self, labels: Labels, points: Vec<Point>) -> Result<(), QueryError> {
        if points.is_empty() {
            return Ok(());
        }
        let in_order = points.windows(2).all(|pair| pair[0].step < pair[1].step);
        if in_order && !self.index.contains_key(&labels) {
            self.index.insert(labels.clone(), self.series.len());
            self.series.push(Series {
                labels,
                drop_name: false,
                points,
            });
            return Ok(());
        }
        for point in points {
            self.push(&labels, false, point.step, point.value)?;
        }
        Ok(())
    }

    pub fn finish(self) -> Vec<Series> {
        self.series
    }
}

/// Merges series whose label sets became equal; fails when two have a point at one step.
pub(crate) fn merge_equal_series(series: Vec<Series>) -> Result<Vec<Series>, QueryError> {
    let mut seen = std::collections::HashSet::with_capacity(series.len());
    if series.iter().all(|one| seen.insert(&one.labels)) {
        return Ok(series);
    }
    let mut builder = SeriesBuilder::default();
    for one in series {
        if one.points.is_empty() {
            continue;
        }
        for point in one.points {
            builder.push(&one.labels, one.drop_name, point.step, point.value)?;
        }
    }
    Ok(builder.finish())
}

/// Returns, per step, the `(series index, value)` pairs present at that step.
pub(crate) fn points_by_step(series: &[Series], count: usize) -> Vec<Vec<(usize, f64)>> {
    let mut by_step: Vec<Vec<(usize, f64)>> = vec![Vec::new(); count];
    for (index, one) in series.iter().enumerate() {
        for point in &one.points {
            if let Some(slot) = by_step.get_mut(point.step as usize) {
                slot.push((index, point.value));
            }
        }
    }
    by_step
}

fn system_time_ms(time: &SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_millis() as i64,
        Err(before) => -(before.duration().as_millis() as i64),
    }
}

fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        Some(Offset::Pos(duration)) => duration.as_millis() as i64,
        Some(Offset::Neg(duration)) => -(duration.as_millis() as i64),
        None => 0,
    }
}

/// Converts a parser matcher to a Vigil matcher. Regexes use Prometheus' anchoring, in which
/// `.` also matches a newline.
fn convert_matcher(matcher: &ParserMatcher) -> Result<LabelMatcher, QueryError> {
    let negated = match &matcher.op {
        ParserMatchOp::Equal => return Ok(LabelMatcher::equal(&matcher.name, &matcher.value)),
        ParserMatchOp::NotEqual => {
            return Ok(LabelMatcher {
                name: matcher.name.clone(),
                op: MatchOp::NotEqual,
                value: matcher.value.clone(),
            })
        }
        ParserMatchOp::Re(_) => false,
        ParserMatchOp::NotRe(_) => true,
    };
    match LabelMatcher::regex(&matcher.name, &matcher.value, negated) {
        Ok(converted) => Ok(converted),
        Err(_) => {
            // The parser rewrites some Go-only regex syntax; fall back to its compiled form.
            let regex = match &matcher.op {
                ParserMatchOp::Re(regex) | ParserMatchOp::NotRe(regex) => regex.clone(),
                _ => {
                    return Err(QueryError::BadQuery(format!(
                        "invalid regular expression {:?}",
                        matcher.value
                    )))
                }
            };
            Ok(LabelMatcher {
                name: matcher.name.clone(),
                op: if negated {
                    MatchOp::NotRegex(regex)
                } else {
                    MatchOp::Regex(regex)
                },
                value: matcher.value.clone(),
            })
        }
    }
}

/// Returns the alternative matcher sets of a selector (one unless it uses `or`).
pub(crate) fn selector_matchers(
    selector: &VectorSelector,
) -> Result<Vec<Vec<LabelMatcher>>, QueryError> {
    let mut base = Vec::new();
    if let Some(name) = &selector.name {
        base.push(LabelMatcher::equal(METRIC_NAME, name));
    }
    for matcher in &selector.matchers.matchers {
        base.push(convert_matcher(matcher)?);
    }
    if selector.matchers.or_matchers.is_empty() {
        return Ok(vec![base]);
    }
    let mut alternatives = Vec::new();
    for group in &selector.matchers.or_matchers {
        let mut set = base.clone();
        for matcher in group {
            set.push(convert_matcher(matcher)?);
        }
        alternatives.push(set);
    }
    Ok(alternatives)
}

impl<'a> Evaluator<'a> {
    /// Marks whether the next matrix selector read serves a function that needs only the first
    /// and last samples of buckets (see [`SelectHints::first_last_suffice`]).
    pub fn set_first_last_suffice(&mut self, suffice: bool) {
        self.first_last_suffice = suffice;
    }

    /// Returns the store the query reads.
    pub fn reader(&self) -> &'a dyn MetricReader {
        self.reader
    }

    /// Returns the start and end of the whole query (ms).
    pub fn query_bounds(&self) -> (i64, i64) {
        (self.query_start, self.query_end)
    }

    pub fn lookback_ms(&self) -> i64 {
        self.options.lookback_delta_ms
    }

    /// Returns when the query runs out of time.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn check_deadline(&self, stage: &'static str) -> Result<(), QueryError> {
        if Instant::now() > self.deadline {
            return Err(QueryError::Timeout(stage));
        }
        Ok(())
    }

    fn check_points(&self, series: &[Series]) -> Result<(), QueryError> {
        let points: usize = series.iter().map(|one| one.points.len()).sum();
        if points > self.options.max_points {
            return Err(QueryError::TooLarge(format!(
                "an intermediate result holds {points} points, more than the limit of {}",
                self.options.max_points
            )));
        }
        Ok(())
    }

    /// Evaluates a node at every step of `range`.
    pub fn eval(&mut self, expr: &Expr, range: &StepRange) -> Result<Value, QueryError> {
        self.check_deadline("evaluation")?;
        let value = match expr {
            Expr::NumberLiteral(number) => Value::Scalar(vec![number.val; range.count]),
            Expr::StringLiteral(text) => Value::String(text.val.clone()),
            Expr::Paren(inner) => self.eval(&inner.expr, range)?,
            Expr::Unary(unary) => match self.eval(&unary.expr, range)? {
                Value::Scalar(values) => Value::Scalar(values.iter().map(|v| -v).collect()),
                Value::Vector(mut series) => {
                    for one in &mut series {
                        one.drop_name = true;
                        for point in &mut one.points {
                            point.value = -point.value;
                        }
                    }
                    Value::Vector(series)
                }
                other => {
                    return Err(QueryError::BadQuery(format!(
                    "unary expression only allowed on expressions of type scalar or vector, got {}",
                    other.type_name()
                )))
                }
            },
            Expr::VectorSelector(selector) => {
                Value::Vector(self.eval_vector_selector(selector, range, false)?)
            }
            Expr::MatrixSelector(selector) => {
                let window_ends = self.window_ends(&selector.vs.at, &selector.vs.offset, range);
                Value::Matrix(self.select_range(
                    &selector.vs,
                    selector.range.as_millis() as i64,
                    window_ends,
                    range,
                )?)
            }
            Expr::Subquery(subquery) => Value::Matrix(self.eval_subquery(subquery, range)?),
            Expr::Aggregate(aggregation) => aggregate::eval_aggregate(self, aggregation, range)?,
            Expr::Binary(binary_expr) => binary::eval_binary(self, binary_expr, range)?,
            Expr::Call(call) => functions::eval_call(self, call, range)?,
            Expr::Extension(_) => {
                return Err(QueryError::BadQuery(
                    "extension expressions are not supported".to_string(),
                ))
            }
        };
        if let Value::Vector(series) = &value {
            self.check_points(series)?;
        }
        Ok(value)
    }

    /// Evaluates a node that must be a scalar or an instant vector, naming `what` in errors.
    pub fn eval_vector(
        &mut self,
        expr: &Expr,
        range: &StepRange,
        what: &str,
    ) -> Result<Vec<Series>, QueryError> {
        match self.eval(expr, range)? {
            Value::Vector(series) => Ok(series),
            other => Err(QueryError::BadQuery(format!(
                "expected instant vector for {what}, got {}",
                other.type_name()
            ))),
        }
    }

    /// Evaluates a node that must be a scalar.
    pub fn eval_scalar(
        &mut self,
        expr: &Expr,
        range: &StepRange,
        what: &str,
    ) -> Result<Vec<f64>, QueryError> {
        match self.eval(expr, range)? {
            Value::Scalar(values) => Ok(values),
            other => Err(QueryError::BadQuery(format!(
                "expected scalar for {what}, got {}",
                other.type_name()
            ))),
        }
    }

    /// Returns the time each step of `range` reads at, after `@` and `offset`.
    pub fn window_ends(
        &self,
        at: &Option<AtModifier>,
        offset: &Option<Offset>,
        range: &StepRange,
    ) -> Vec<i64> {
        let offset = offset_ms(offset);
        let fixed = match at {
            Some(AtModifier::At(time)) => Some(system_time_ms(time)),
            Some(AtModifier::Start) => Some(self.query_start),
            Some(AtModifier::End) => Some(self.query_end),
            None => None,
        };
        (0..range.count)
            .map(|index| fixed.unwrap_or_else(|| range.time(index)) - offset)
            .collect()
    }

    /// Reads the series of a selector with samples in `[start_ms, end_ms]`.
    fn select(
        &mut self,
        selector: &VectorSelector,
        hints: SelectHints,
    ) -> Result<Vec<SeriesSamples>, QueryError> {
        let alternatives = selector_matchers(selector)?;
        let mut result: Vec<SeriesSamples> = Vec::new();
        let mut seen: std::collections::HashSet<Labels> = std::collections::HashSet::new();
        for matchers in &alternatives {
            for mut series in self.reader.select(matchers, &hints)? {
                if alternatives.len() > 1 && !seen.insert(series.labels.clone()) {
                    continue;
                }
                // Guard against readers that return a little more than asked.
                series
                    .samples
                    .retain(|s| s.timestamp_ms >= hints.start_ms && s.timestamp_ms <= hints.end_ms);
                self.samples_read += series.samples.len();
                if self.samples_read > self.options.max_samples {
                    return Err(QueryError::TooLarge(format!(
                        "the query would read more than {} samples",
                        self.options.max_samples
                    )));
                }
                result.push(series);
            }
        }
        Ok(result)
    }

    /// Evaluates an instant vector selector: at each step the newest sample within the
    /// lookback window, unless it is a staleness marker. With `timestamps`, the value is the
    /// sample's timestamp in seconds (for `timestamp()`).
    pub fn eval_vector_selector(
        &mut self,
        selector: &VectorSelector,
        range: &StepRange,
        timestamps: bool,
    ) -> Result<Vec<Series>, QueryError> {
        let window_ends = self.window_ends(&selector.at, &selector.offset, range);
        let lookback = self.lookback_ms();
        let left_open = self.options.lookback_left_open;
        let (Some(first), Some(last)) = (window_ends.iter().min(), window_ends.iter().max()) else {
            return Ok(Vec::new());
        };
        let hints = SelectHints {
            start_ms: first - lookback,
            end_ms: *last,
            step_ms: if range.instant { 0 } else { range.step },
            range_ms: 0,
            first_last_suffice: true,
        };
        let raw = self.select(selector, hints)?;
        let mut output = Vec::with_capacity(raw.len());
        for series in raw {
            let mut points = Vec::new();
            let mut next = 0;
            for (step, &end) in window_ends.iter().enumerate() {
                while next < series.samples.len() && series.samples[next].timestamp_ms <= end {
                    next += 1;
                }
                if next == 0 {
                    continue;
                }
                let newest = series.samples[next - 1];
                let too_old = if left_open {
                    newest.timestamp_ms <= end - lookback
                } else {
                    newest.timestamp_ms < end - lookback
                };
                if too_old || is_stale_marker(newest.value) {
                    continue;
                }
                let value = if timestamps {
                    newest.timestamp_ms as f64 / 1000.0
                } else {
                    newest.value
                };
                points.push(Point {
                    step: step as u32,
                    value,
                });
            }
            if !points.is_empty() {
                output.push(Series {
                    labels: series.labels,
                    drop_name: false,
                    points,
                });
            }
        }
        Ok(output)
    }

    /// Evaluates an instant selector given as matchers; each point's value is the timestamp
    /// (seconds) of the sample it came from (for `info()`, which prefers the newest).
    pub fn eval_matchers_with_timestamps(
        &mut self,
        matchers: Vec<LabelMatcher>,
        range: &StepRange,
    ) -> Result<Vec<Series>, QueryError> {
        let window_ends: Vec<i64> = (0..range.count).map(|index| range.time(index)).collect();
        let lookback = self.lookback_ms();
        let (Some(first), Some(last)) = (window_ends.first(), window_ends.last()) else {
            return Ok(Vec::new());
        };
        let hints = SelectHints {
            start_ms: first - lookback,
            end_ms: *last,
            step_ms: if range.instant { 0 } else { range.step },
            range_ms: 0,
            first_last_suffice: true,
        };
        let raw = self.reader.select(&matchers, &hints)?;
        let mut output = Vec::with_capacity(raw.len());
        for series in raw {
            self.samples_read += series.samples.len();
            if self.samples_read > self.options.max_samples {
                return Err(QueryError::TooLarge(format!(
                    "the query would read more than {} samples",
                    self.options.max_samples
                )));
            }
            let mut points = Vec::new();
            let mut next = 0;
            for (step, &end) in window_ends.iter().enumerate() {
                while next < series.samples.len() && series.samples[next].timestamp_ms <= end {
                    next += 1;
                }
                let Some(newest) = next.checked_sub(1).map(|index| series.samples[index]) else {
                    continue;
                };
                if newest.timestamp_ms < end - lookback || is_stale_marker(newest.value) {
                    continue;
                }
                points.push(Point {
                    step: step as u32,
                    value: newest.timestamp_ms as f64 / 1000.0,
                });
            }
            if !points.is_empty() {
                output.push(Series {
                    labels: series.labels,
                    drop_name: false,
                    points,
                });
            }
        }
        Ok(output)
    }

    /// Reads the samples a matrix selector needs for all its windows.
    fn select_range(
        &mut self,
        selector: &VectorSelector,
        range_ms: i64,
        window_ends: Vec<i64>,
        range: &StepRange,
    ) -> Result<RangeVector, QueryError> {
        let (Some(first), Some(last)) = (
            window_ends.iter().min().copied(),
            window_ends.iter().max().copied(),
        ) else {
            return Ok(RangeVector {
                series: Vec::new(),
                range_ms,
                window_ends,
            });
        };
        let hints = SelectHints {
            start_ms: first - range_ms + 1,
            end_ms: last,
            step_ms: if range.instant { 0 } else { range.step },
            range_ms,
            first_last_suffice: self.first_last_suffice,
        };
        let raw = self.select(selector, hints)?;
        let series = raw
            .into_iter()
            .map(|series| RangeSeries {
                labels: series.labels,
                drop_name: false,
                samples: series
                    .samples
                    .into_iter()
                    .filter(|sample| !is_stale_marker(sample.value))
                    .collect(),
            })
            .collect();
        Ok(RangeVector {
            series,
            range_ms,
            window_ends,
        })
    }

    /// Evaluates a subquery: the inner expression at absolute multiples of the subquery's step
    /// covering every window, then windows over those points.
    fn eval_subquery(
        &mut self,
        subquery: &SubqueryExpr,
        range: &StepRange,
    ) -> Result<RangeVector, QueryError> {
        let window_ends = self.window_ends(&subquery.at, &subquery.offset, range);
        let range_ms = subquery.range.as_millis() as i64;
        let step_ms = match subquery.step {
            Some(step) if !step.is_zero() => step.as_millis() as i64,
            _ => self.options.default_subquery_step_ms,
        };
        let (Some(first), Some(last)) = (
            window_ends.iter().min().copied(),
            window_ends.iter().max().copied(),
        ) else {
            return Ok(RangeVector {
                series: Vec::new(),
                range_ms,
                window_ends,
            });
        };
        let earliest = first - range_ms;
        let mut inner_start = step_ms * (earliest / step_ms);
        if inner_start <= earliest {
            inner_start += step_ms;
        }
        if inner_start > last {
            return Ok(RangeVector {
                series: Vec::new(),
                range_ms,
                window_ends,
            });
        }
        let count = (last - inner_start) / step_ms + 1;
        if count > MAX_SUBQUERY_STEPS {
            return Err(QueryError::TooLarge(format!(
                "the subquery would evaluate {count} steps"
            )));
        }
        let inner_range = StepRange {
            start: inner_start,
            step: step_ms,
            count: count as usize,
            instant: false,
        };
        let inner = self.eval_vector(&subquery.expr, &inner_range, "subquery")?;
        let series = inner
            .into_iter()
            .map(|one| RangeSeries {
                labels: one.labels,
                drop_name: one.drop_name,
                samples: one
                    .points
                    .iter()
                    .map(|point| Sample {
                        timestamp_ms: inner_range.time(point.step as usize),
                        value: point.value,
                    })
                    .collect(),
            })
            .collect();
        Ok(RangeVector {
            series,
            range_ms,
            window_ends,
        })
    }

    /// Evaluates a node that must be a range vector (matrix selector or subquery).
    pub fn eval_range_vector(
        &mut self,
        expr: &Expr,
        range: &StepRange,
    ) -> Result<RangeVector, QueryError> {
        match self.eval(expr, range)? {
            Value::Matrix(matrix) => Ok(matrix),
            other => Err(QueryError::BadQuery(format!(
                "expected range vector, got {}",
                other.type_name()
            ))),
        }
    }
}

/// Strips parentheses around an expression.
pub(crate) fn unwrap_parens(mut expr: &Expr) -> &Expr {
    while let Expr::Paren(inner) = expr {
        expr = &inner.expr;
    }
    expr
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn series(labels: Labels, points: &[(u32, f64)]) -> Series {
        Series {
            labels,
            drop_name: false,
            points: points
                .iter()
                .map(|&(step, value)| Point { step, value })
                .collect(),
        }
    }

    #[test]
    fn builder_refuses_two_points_of_one_series_at_one_step() {
        let mut builder = SeriesBuilder::default();
        let labels = Labels::from_pairs([("a", "1")]);
        builder.push(&labels, false, 0, 1.0).unwrap();
        builder.push(&labels, false, 2, 1.0).unwrap();
        builder.push(&labels, false, 1, 1.0).unwrap();
        assert!(builder.push(&labels, false, 2, 5.0).is_err());
        let steps: Vec<u32> = builder.finish()[0].points.iter().map(|p| p.step).collect();
        assert_eq!(steps, [0, 1, 2]);
    }

    #[test]
    fn equal_series_merge_when_their_steps_do_not_overlap() {
        let labels = Labels::from_pairs([("a", "1")]);
        let merged = merge_equal_series(vec![
            series(labels.clone(), &[(0, 1.0)]),
            series(labels.clone(), &[(1, 2.0)]),
        ])
        .unwrap();
        assert_eq!(merged.len(), 1);
        assert!(merge_equal_series(vec![
            series(labels.clone(), &[(0, 1.0)]),
            series(labels, &[(0, 2.0)]),
        ])
        .is_err());
    }

    #[test]
    fn points_are_grouped_by_step() {
        let by_step = points_by_step(
            &[
                series(Labels::empty(), &[(0, 1.0), (2, 3.0)]),
                series(Labels::empty(), &[(2, 4.0)]),
            ],
            3,
        );
        assert_eq!(by_step[0], [(0, 1.0)]);
        assert!(by_step[1].is_empty());
        assert_eq!(by_step[2], [(0, 3.0), (1, 4.0)]);
    }

    #[test]
    fn regex_matchers_let_dot_match_newlines() {
        let matcher = ParserMatcher::new(
            ParserMatchOp::Re(regex::Regex::new("^(?:a.b)$").unwrap()),
            "x",
            "a.b",
        );
        let converted = convert_matcher(&matcher).unwrap();
        assert!(converted.matches_value("a\nb"));
    }
}
