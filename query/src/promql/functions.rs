//! PromQL functions: range-vector functions (`rate`, `*_over_time`, ...), element-wise math,
//! label manipulation, time functions, `absent`, `histogram_quantile`, sorting.

use chrono::{DateTime, Datelike, Timelike};
use promql_parser::parser::{Call, Expr};
use vigil_model::{Labels, Sample, METRIC_NAME};

use super::eval::{
    duplicate_labelset, merge_equal_series, points_by_step, selector_matchers, unwrap_parens,
    Evaluator, StepRange,
};
use super::histogram::{bucket_fraction, bucket_quantile, Bucket};
use super::value::{Point, RangeVector, Series, Value};
use super::QueryError;

/// Adds `increment` to a Kahan–Neumaier compensated sum; returns the new sum and compensation.
pub(crate) fn kahan_sum_inc(increment: f64, sum: f64, compensation: f64) -> (f64, f64) {
    let total = sum + increment;
    let compensation = if total.is_infinite() {
        0.0
    } else if sum.abs() >= increment.abs() {
        compensation + ((sum - total) + increment)
    } else {
        compensation + ((increment - total) + sum)
    };
    (total, compensation)
}

/// Returns the `q` quantile of `values` as Prometheus computes it (linear interpolation
/// between closest ranks; NaN for no values or NaN `q`; ±Inf outside [0, 1]).
pub(crate) fn quantile_of(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // NaN sorts first, as in Prometheus.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let count = values.len() as f64;
    let rank = q * (count - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(count - 1.0);
    let weight = rank - rank.floor();
    let lower_value = values.get(lower as usize).copied().unwrap_or(f64::NAN);
    let upper_value = values.get(upper as usize).copied().unwrap_or(f64::NAN);
    lower_value * (1.0 - weight) + upper_value * weight
}

fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// Least-squares fit of the samples with time measured from `intercept_ms`, in seconds.
fn linear_regression(samples: &[Sample], intercept_ms: i64) -> (f64, f64) {
    let first = samples.first().map_or(f64::NAN, |s| s.value);
    let constant = samples.iter().all(|s| s.value == first);
    if constant {
        if first.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, first);
    }
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    for sample in samples {
        n += 1.0;
        let x = (sample.timestamp_ms - intercept_ms) as f64 / 1000.0;
        (sum_x, c_x) = kahan_sum_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_sum_inc(sample.value, sum_y, c_y);
        (sum_xy, c_xy) = kahan_sum_inc(x * sample.value, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_sum_inc(x * x, sum_x2, c_x2);
    }
    sum_x += c_x;
    sum_y += c_y;
    sum_xy += c_xy;
    sum_x2 += c_x2;
    let covariance = sum_xy - sum_x * sum_y / n;
    let variance = sum_x2 - sum_x * sum_x / n;
    let slope = covariance / variance;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

/// Prometheus' extrapolated rate, increase and delta over one window.
fn extrapolated_rate(
    samples: &[Sample],
    window_end: i64,
    range_ms: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let first = samples[0];
    let last = samples[samples.len() - 1];
    let mut result = last.value - first.value;
    if is_counter {
        let mut previous = 0.0;
        for sample in samples {
            if sample.value < previous {
                result += previous;
            }
            previous = sample.value;
        }
    }
    Some(extrapolate(
        first,
        last,
        samples.len(),
        result,
        window_end,
        range_ms,
        is_counter,
        is_rate,
    ))
}

/// Prometheus' extrapolation of an increase `result` seen between the `first` and `last` of
/// `count` samples to the edges of the window `(window_end - range_ms, window_end]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn extrapolate(
    first: Sample,
    last: Sample,
    count: usize,
    result: f64,
    window_end: i64,
    range_ms: i64,
    is_counter: bool,
    is_rate: bool,
) -> f64 {
    let spans = Extrapolation::new(
        first.timestamp_ms,
        last.timestamp_ms,
        count,
        window_end,
        range_ms,
    );
    let mut duration_to_start = spans.duration_to_start;
    if is_counter {
        if let Some(duration_to_zero) = spans.duration_to_zero(first.value, result) {
            if duration_to_zero < duration_to_start {
                duration_to_start = duration_to_zero;
            }
        }
    }
    result * spans.factor(duration_to_start, range_ms, is_rate)
}

/// The spans [`extrapolate`] weighs, in seconds: from the window's start to the first sample
/// and from the last sample to the window's end (each cut to half the average interval when
/// it exceeds 1.1 intervals), and between the first and the last sample. They depend only on
/// the timestamps, so consecutive windows over regularly spaced samples share them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Extrapolation {
    pub duration_to_start: f64,
    pub duration_to_end: f64,
    pub sampled_interval: f64,
}

impl Extrapolation {
    pub fn new(first_ms: i64, last_ms: i64, count: usize, window_end: i64, range_ms: i64) -> Self {
        let range_start = window_end - range_ms;
        let mut duration_to_start = (first_ms - range_start) as f64 / 1000.0;
        let mut duration_to_end = (window_end - last_ms) as f64 / 1000.0;
        let sampled_interval = (last_ms - first_ms) as f64 / 1000.0;
        let average_between_samples = sampled_interval / (count - 1) as f64;
        let threshold = average_between_samples * 1.1;
        if duration_to_start >= threshold {
            duration_to_start = average_between_samples / 2.0;
        }
        if duration_to_end >= threshold {
            duration_to_end = average_between_samples / 2.0;
        }
        Extrapolation {
            duration_to_start,
            duration_to_end,
            sampled_interval,
        }
    }

    /// How far back a counter starting at `first_value` would reach zero at the rate of
    /// `result` over the sampled interval, when Prometheus considers it.
    #[inline]
    pub fn duration_to_zero(&self, first_value: f64, result: f64) -> Option<f64> {
        (result > 0.0 && first_value >= 0.0).then(|| self.sampled_interval * (first_value / result))
    }

    /// The factor turning the increase over the sampled interval into the increase (or the
    /// per-second rate) over the window, extrapolated `duration_to_start` back.
    #[inline]
    pub fn factor(&self, duration_to_start: f64, range_ms: i64, is_rate: bool) -> f64 {
        let mut factor = (self.sampled_interval + duration_to_start + self.duration_to_end)
            / self.sampled_interval;
        if is_rate {
            factor /= range_ms as f64 / 1000.0;
        }
        factor
    }
}

fn instant_value(samples: &[Sample], is_rate: bool) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let last = samples[samples.len() - 1];
    let previous = samples[samples.len() - 2];
    let mut value = if is_rate && last.value < previous.value {
        last.value
    } else {
        last.value - previous.value
    };
    let interval = last.timestamp_ms - previous.timestamp_ms;
    if interval == 0 {
        return None;
    }
    if is_rate {
        value /= interval as f64 / 1000.0;
    }
    Some(value)
}

fn sum_over(samples: &[Sample]) -> f64 {
    let (mut sum, mut compensation) = (0.0, 0.0);
    for sample in samples {
        (sum, compensation) = kahan_sum_inc(sample.value, sum, compensation);
    }
    if sum.is_infinite() {
        sum
    } else {
        sum + compensation
    }
}

fn variance_over(samples: &[Sample]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for sample in samples {
        count += 1.0;
        let delta = sample.value - (mean + c_mean);
        (mean, c_mean) = kahan_sum_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_sum_inc(delta * (sample.value - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

fn median(values: &mut [f64]) -> f64 {
    quantile_of(0.5, values)
}

/// A function over a range vector, resolved once per call rather than per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeFunction {
    Rate,
    Increase,
    Delta,
    Irate,
    Idelta,
    Deriv,
    PredictLinear,
    Resets,
    Changes,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    SumOverTime,
    CountOverTime,
    StddevOverTime,
    StdvarOverTime,
    LastOverTime,
    FirstOverTime,
    PresentOverTime,
    QuantileOverTime,
    MadOverTime,
    TsOfLastOverTime,
    TsOfFirstOverTime,
    TsOfMinOverTime,
    TsOfMaxOverTime,
    DoubleExponentialSmoothing,
}

impl RangeFunction {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "rate" => RangeFunction::Rate,
            "increase" => RangeFunction::Increase,
            "delta" => RangeFunction::Delta,
            "irate" => RangeFunction::Irate,
            "idelta" => RangeFunction::Idelta,
            "deriv" => RangeFunction::Deriv,
            "predict_linear" => RangeFunction::PredictLinear,
            "resets" => RangeFunction::Resets,
            "changes" => RangeFunction::Changes,
            "avg_over_time" => RangeFunction::AvgOverTime,
            "min_over_time" => RangeFunction::MinOverTime,
            "max_over_time" => RangeFunction::MaxOverTime,
            "sum_over_time" => RangeFunction::SumOverTime,
            "count_over_time" => RangeFunction::CountOverTime,
            "stddev_over_time" => RangeFunction::StddevOverTime,
            "stdvar_over_time" => RangeFunction::StdvarOverTime,
            "last_over_time" => RangeFunction::LastOverTime,
            "first_over_time" => RangeFunction::FirstOverTime,
            "present_over_time" => RangeFunction::PresentOverTime,
            "quantile_over_time" => RangeFunction::QuantileOverTime,
            "mad_over_time" => RangeFunction::MadOverTime,
            "ts_of_last_over_time" => RangeFunction::TsOfLastOverTime,
            "ts_of_first_over_time" => RangeFunction::TsOfFirstOverTime,
            "ts_of_min_over_time" => RangeFunction::TsOfMinOverTime,
            "ts_of_max_over_time" => RangeFunction::TsOfMaxOverTime,
            "double_exponential_smoothing" => RangeFunction::DoubleExponentialSmoothing,
            "holt_winters" => RangeFunction::DoubleExponentialSmoothing,
            _ => return None,
        })
    }

    /// `last_over_time` and `first_over_time` keep the metric name; the others drop it.
    fn keeps_name(self) -> bool {
        matches!(
            self,
            RangeFunction::LastOverTime | RangeFunction::FirstOverTime
        )
    }
}

/// Returns the form of a range function that rollup buckets answer exactly.
fn bucketed_function(function: RangeFunction) -> Option<super::buckets::BucketedFunction> {
    use super::buckets::BucketedFunction;
    Some(match function {
        RangeFunction::Rate => BucketedFunction::Rate,
        RangeFunction::Increase => BucketedFunction::Increase,
        RangeFunction::Delta => BucketedFunction::Delta,
        RangeFunction::Resets => BucketedFunction::Resets,
        RangeFunction::CountOverTime => BucketedFunction::CountOverTime,
        RangeFunction::MinOverTime => BucketedFunction::MinOverTime,
        RangeFunction::MaxOverTime => BucketedFunction::MaxOverTime,
        _ => return None,
    })
}

/// Evaluates a function call.
pub(crate) fn eval_call(
    evaluator: &mut Evaluator<'_>,
    call: &Call,
    range: &StepRange,
) -> Result<Value, QueryError> {
    let name = call.func.name;
    if matches!(name, "histogram_quantile" | "quantile_over_time") {
        if let Some(value) = super::sketch::try_eval(evaluator, call, range)? {
            return Ok(value);
        }
    }
    let args: Vec<&Expr> = call.args.args.iter().map(|arg| arg.as_ref()).collect();
    if let Some(function) = RangeFunction::from_name(name) {
        return eval_range_function(evaluator, function, name, &args, range);
    }
    match name {
        "time" => Ok(Value::Scalar(
            (0..range.count)
                .map(|index| range.time(index) as f64 / 1000.0)
                .collect(),
        )),
        "start" | "end" | "range" | "step" => {
            let (start, end) = evaluator.query_bounds();
            let value = match name {
                "start" => start as f64 / 1000.0,
                "end" => end as f64 / 1000.0,
                "range" => (end - start) as f64 / 1000.0,
                _ if range.instant => 0.0,
                _ => range.step as f64 / 1000.0,
            };
            Ok(Value::Scalar(vec![value; range.count]))
        }
        "min_of" | "max_of" => {
            let first = evaluator.eval_scalar(arg(&args, 0)?, range, name)?;
            let second = evaluator.eval_scalar(arg(&args, 1)?, range, name)?;
            let pick: fn(f64, f64) -> f64 = if name == "min_of" { go_min } else { go_max };
            Ok(Value::Scalar(
                first
                    .iter()
                    .zip(second.iter())
                    .map(|(a, b)| pick(*a, *b))
                    .collect(),
            ))
        }
        "pi" => Ok(Value::Scalar(vec![std::f64::consts::PI; range.count])),
        "vector" => {
            let values = evaluator.eval_scalar(arg(&args, 0)?, range, "vector()")?;
            Ok(Value::Vector(vec![Series {
                labels: Labels::empty(),
                drop_name: false,
                points: values
                    .into_iter()
                    .enumerate()
                    .map(|(step, value)| Point {
                        step: step as u32,
                        value,
                    })
                    .collect(),
            }]))
        }
        "scalar" => {
            let series = evaluator.eval_vector(arg(&args, 0)?, range, "scalar()")?;
            let by_step = points_by_step(&series, range.count);
            Ok(Value::Scalar(
                by_step
                    .iter()
                    .map(|points| match points.as_slice() {
                        [(_, value)] => *value,
                        _ => f64::NAN,
                    })
                    .collect(),
            ))
        }
        "timestamp" => {
            let inner = unwrap_parens(arg(&args, 0)?);
            let mut series = match inner {
                Expr::VectorSelector(selector) => {
                    evaluator.eval_vector_selector(selector, range, true)?
                }
                other => {
                    let mut series = evaluator.eval_vector(other, range, "timestamp()")?;
                    for one in &mut series {
                        for point in &mut one.points {
                            point.value = range.time(point.step as usize) as f64 / 1000.0;
                        }
                    }
                    series
                }
            };
            for one in &mut series {
                one.drop_name = true;
            }
            Ok(Value::Vector(series))
        }
        "abs" | "ceil" | "floor" | "exp" | "ln" | "log2" | "log10" | "sqrt" | "sgn" | "acos"
        | "acosh" | "asin" | "asinh" | "atan" | "atanh" | "cos" | "cosh" | "sin" | "sinh"
        | "tan" | "tanh" | "deg" | "rad" => {
            let operation: fn(f64) -> f64 = match name {
                "abs" => f64::abs,
                "ceil" => f64::ceil,
                "floor" => f64::floor,
                "exp" => f64::exp,
                "ln" => f64::ln,
                "log2" => f64::log2,
                "log10" => f64::log10,
                "sqrt" => f64::sqrt,
                "sgn" => |v: f64| {
                    if v > 0.0 {
                        1.0
                    } else if v < 0.0 {
                        -1.0
                    } else {
                        v
                    }
                },
                "acos" => f64::acos,
                "acosh" => f64::acosh,
                "asin" => f64::asin,
                "asinh" => f64::asinh,
                "atan" => f64::atan,
                "atanh" => f64::atanh,
                "cos" => f64::cos,
                "cosh" => f64::cosh,
                "sin" => f64::sin,
                "sinh" => f64::sinh,
                "tan" => f64::tan,
                "tanh" => f64::tanh,
                "deg" => |v: f64| v * 180.0 / std::f64::consts::PI,
                _ => |v: f64| v * std::f64::consts::PI / 180.0,
            };
            let series = evaluator.eval_vector(arg(&args, 0)?, range, name)?;
            Ok(Value::Vector(map_values(series, |_, value| {
                Some(operation(value))
            })))
        }
        "round" => {
            let series = evaluator.eval_vector(arg(&args, 0)?, range, name)?;
            let to_nearest = match args.get(1) {
                Some(expr) => evaluator.eval_scalar(expr, range, "round()")?,
                None => vec![1.0; range.count],
            };
            Ok(Value::Vector(map_values(series, |step, value| {
                let inverse = 1.0 / to_nearest.get(step).copied().unwrap_or(1.0);
                Some((value * inverse + 0.5).floor() / inverse)
            })))
        }
        "clamp" => {
            let series = evaluator.eval_vector(arg(&args, 0)?, range, name)?;
            let low = evaluator.eval_scalar(arg(&args, 1)?, range, name)?;
            let high = evaluator.eval_scalar(arg(&args, 2)?, range, name)?;
            Ok(Value::Vector(map_values(series, |step, value| {
                let (low, high) = (low[step], high[step]);
                if high < low {
                    return None;
                }
                Some(go_max(low, go_min(high, value)))
            })))
        }
        "clamp_min" | "clamp_max" => {
            let series = evaluator.eval_vector(arg(&args, 0)?, range, name)?;
            let bound = evaluator.eval_scalar(arg(&args, 1)?, range, name)?;
            let is_min = name == "clamp_min";
            Ok(Value::Vector(map_values(series, |step, value| {
                Some(if is_min {
                    go_max(bound[step], value)
                } else {
                    go_min(bound[step], value)
                })
            })))
        }
        "minute" | "hour" | "day_of_week" | "day_of_month" | "day_of_year" | "days_in_month"
        | "month" | "year" => {
            let series = match args.first() {
                Some(expr) => evaluator.eval_vector(expr, range, name)?,
                None => vec![Series {
                    labels: Labels::empty(),
                    drop_name: false,
                    points: (0..range.count)
                        .map(|step| Point {
                            step: step as u32,
                            value: range.time(step) as f64 / 1000.0,
                        })
                        .collect(),
                }],
            };
            Ok(Value::Vector(map_values(series, |_, value| {
                time_component(name, value)
            })))
        }
        "absent" => {
            let inner = arg(&args, 0)?;
            let series = evaluator.eval_vector(inner, range, name)?;
            let labels = absent_labels(unwrap_parens(inner))?;
            let by_step = points_by_step(&series, range.count);
            let points: Vec<Point> = by_step
                .iter()
                .enumerate()
                .filter(|(_, points)| points.is_empty())
                .map(|(step, _)| Point {
                    step: step as u32,
                    value: 1.0,
                })
                .collect();
            Ok(Value::Vector(if points.is_empty() {
                Vec::new()
            } else {
                vec![Series {
                    labels,
                    drop_name: false,
                    points,
                }]
            }))
        }
        "absent_over_time" => {
            let inner = arg(&args, 0)?;
            let matrix = evaluator.eval_range_vector(inner, range)?;
            let labels = absent_labels(unwrap_parens(inner))?;
            let mut present = vec![false; range.count];
            for series in &matrix.series {
                RangeVector::for_each_window(
                    &series.samples,
                    matrix.range_ms,
                    &matrix.window_ends,
                    |step, window| {
                        if !window.is_empty() {
                            present[step] = true;
                        }
                    },
                );
            }
            let points: Vec<Point> = present
                .iter()
                .enumerate()
                .filter(|(_, present)| !**present)
                .map(|(step, _)| Point {
                    step: step as u32,
                    value: 1.0,
                })
                .collect();
            Ok(Value::Vector(if points.is_empty() {
                Vec::new()
            } else {
                vec![Series {
                    labels,
                    drop_name: false,
                    points,
                }]
            }))
        }
        "label_replace" => {
            let series = evaluator.eval_vector(arg(&args, 0)?, range, name)?;
            let destination = string_arg(evaluator, &args, 1, range)?;
            let replacement = string_arg(evaluator, &args, 2, range)?;
            let source = string_arg(evaluator, &args, 3, range)?;
            let pattern = string_arg(evaluator, &args, 4, range)?;
            let regex = regex::Regex::new(&format!("^(?s:{pattern})$")).map_err(|_| {
                QueryError::Execution(format!(
                    "invalid regular expression in label_replace(): {pattern}"
                ))
            })?;
            if !is_valid_label_name(&destination) {
                return Err(QueryError::Execution(format!(
                    "invalid destination label name in label_replace(): {destination}"
                )));
            }
            let mut output = Vec::with_capacity(series.len());
            for mut one in series {
                let value = one.labels.get(&source).unwrap_or("").to_string();
                if let Some(captures) = regex.captures(&value) {
                    let mut replaced = String::new();
                    captures.expand(&replacement, &mut replaced);
                    one.labels.set(destination.clone(), replaced);
                    if destination == METRIC_NAME {
                        one.drop_name = false;
                    }
                }
                output.push(one);
            }
            Ok(Value::Vector(merge_equal_series(output)?))
        }
        "label_join" => {
            let series = evaluator.eval_vector(arg(&args, 0)?, range, name)?;
            let destination = string_arg(evaluator, &args, 1, range)?;
            let separator = string_arg(evaluator, &args, 2, range)?;
            let mut sources = Vec::new();
            for index in 3..args.len() {
                sources.push(string_arg(evaluator, &args, index, range)?);
            }
            if !is_valid_label_name(&destination) {
                return Err(QueryError::Execution(format!(
                    "invalid destination label name in label_join(): {destination}"
                )));
            }
            let mut output = Vec::with_capacity(series.len());
            for mut one in series {
                let joined = sources
                    .iter()
                    .map(|source| one.labels.get(source).unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(&separator);
                one.labels.set(destination.clone(), joined);
                if destination == METRIC_NAME {
                    one.drop_name = false;
                }
                output.push(one);
            }
            Ok(Value::Vector(merge_equal_series(output)?))
        }
        "sort" | "sort_desc" => {
            let mut series = evaluator.eval_vector(arg(&args, 0)?, range, name)?;
            if range.count == 1 {
                let descending = name == "sort_desc";
                series.sort_by(|a, b| {
                    let x = a.points.first().map_or(f64::NAN, |p| p.value);
                    let y = b.points.first().map_or(f64::NAN, |p| p.value);
                    match (x.is_nan(), y.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ if descending => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
                        _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
                    }
                });
            }
            Ok(Value::Vector(series))
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let mut series = evaluator.eval_vector(arg(&args, 0)?, range, name)?;
            let mut names = Vec::new();
            for index in 1..args.len() {
                names.push(string_arg(evaluator, &args, index, range)?);
            }
            let descending = name == "sort_by_label_desc";
            series.sort_by(|a, b| {
                let mut ordering = std::cmp::Ordering::Equal;
                for label in &names {
                    ordering = natural_compare(
                        a.labels.get(label).unwrap_or(""),
                        b.labels.get(label).unwrap_or(""),
                    );
                    if ordering.is_ne() {
                        break;
                    }
                }
                if ordering.is_eq() {
                    ordering = a.labels.cmp(&b.labels);
                }
                if descending {
                    ordering.reverse()
                } else {
                    ordering
                }
            });
            Ok(Value::Vector(series))
        }
        "histogram_quantile" => {
            let q = evaluator.eval_scalar(arg(&args, 0)?, range, name)?;
            let series = evaluator.eval_vector(arg(&args, 1)?, range, name)?;
            classic_histogram(series, range, |step, buckets| {
                bucket_quantile(q.get(step).copied().unwrap_or(f64::NAN), buckets)
            })
        }
        "info" => super::info::eval_info(evaluator, &args, range),
        "histogram_quantiles" => {
            let series = evaluator.eval_vector(arg(&args, 0)?, range, name)?;
            let label = string_arg(evaluator, &args, 1, range)?;
            if !is_valid_label_name(&label) {
                return Err(QueryError::Execution(format!(
                    "invalid quantile label name in histogram_quantiles(): {label}"
                )));
            }
            if series.iter().any(|one| one.labels.get(&label).is_some()) {
                return Err(duplicate_labelset());
            }
            let mut output = Vec::new();
            for index in 2..args.len() {
                let q = evaluator.eval_scalar(arg(&args, index)?, range, name)?;
                let Value::Vector(quantiles) =
                    classic_histogram(series.clone(), range, |step, buckets| {
                        bucket_quantile(q.get(step).copied().unwrap_or(f64::NAN), buckets)
                    })?
                else {
                    continue;
                };
                // One label value per step is not possible; like Prometheus, the label
                // carries the quantile of the first step.
                let label_value = quantile_label(q.first().copied().unwrap_or(f64::NAN));
                for mut one in quantiles {
                    one.labels.set(label.clone(), label_value.clone());
                    output.push(one);
                }
            }
            Ok(Value::Vector(merge_equal_series(output)?))
        }
        "histogram_fraction" => {
            let lower = evaluator.eval_scalar(arg(&args, 0)?, range, name)?;
            let upper = evaluator.eval_scalar(arg(&args, 1)?, range, name)?;
            let series = evaluator.eval_vector(arg(&args, 2)?, range, name)?;
            classic_histogram(series, range, |step, buckets| {
                bucket_fraction(
                    lower.get(step).copied().unwrap_or(f64::NAN),
                    upper.get(step).copied().unwrap_or(f64::NAN),
                    buckets,
                )
            })
        }
        "histogram_count" | "histogram_sum" | "histogram_avg" | "histogram_stddev"
        | "histogram_stdvar" => {
            // Vigil stores float samples only: there are no native histograms to read.
            evaluator.eval_vector(arg(&args, 0)?, range, name)?;
            Ok(Value::Vector(Vec::new()))
        }
        other => Err(QueryError::BadQuery(format!(
            "function {other}() is not supported"
        ))),
    }
}

/// Formats a quantile as `histogram_quantiles` labels it: always with a decimal point
/// (`0.0`, `0.25`, `1.0`, `NaN`).
fn quantile_label(q: f64) -> String {
    let text = super::value::format_value(q);
    if q.is_finite() && !text.contains('.') {
        format!("{text}.0")
    } else {
        text
    }
}

fn arg<'e>(args: &[&'e Expr], index: usize) -> Result<&'e Expr, QueryError> {
    args.get(index).copied().ok_or_else(|| {
        QueryError::BadQuery(format!("missing argument {} of function call", index + 1))
    })
}

fn string_arg(
    evaluator: &mut Evaluator<'_>,
    args: &[&Expr],
    index: usize,
    range: &StepRange,
) -> Result<String, QueryError> {
    match evaluator.eval(arg(args, index)?, range)? {
        Value::String(text) => Ok(text),
        other => Err(QueryError::BadQuery(format!(
            "expected string argument, got {}",
            other.type_name()
        ))),
    }
}

/// Returns true for a label name Prometheus 3 accepts (any non-empty valid UTF-8 text).
fn is_valid_label_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('\u{fffd}')
}

/// Applies `operation` to every point; the metric name is dropped.
fn map_values(
    series: Vec<Series>,
    mut operation: impl FnMut(usize, f64) -> Option<f64>,
) -> Vec<Series> {
    let mut output = Vec::with_capacity(series.len());
    for mut one in series {
        one.points = one
            .points
            .iter()
            .filter_map(|point| {
                operation(point.step as usize, point.value).map(|value| Point {
                    step: point.step,
                    value,
                })
            })
            .collect();
        one.drop_name = true;
        if !one.points.is_empty() {
            output.push(one);
        }
    }
    output
}

fn time_component(name: &str, seconds: f64) -> Option<f64> {
    if !seconds.is_finite() {
        return Some(f64::NAN);
    }
    let time = DateTime::from_timestamp(seconds.floor() as i64, 0)?;
    Some(match name {
        "minute" => f64::from(time.minute()),
        "hour" => f64::from(time.hour()),
        "day_of_week" => f64::from(time.weekday().num_days_from_sunday()),
        "day_of_month" => f64::from(time.day()),
        "day_of_year" => f64::from(time.ordinal()),
        "month" => f64::from(time.month()),
        "year" => f64::from(time.year()),
        _ => {
            let (year, month) = (time.year(), time.month());
            let (next_year, next_month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            let first = chrono::NaiveDate::from_ymd_opt(year, month, 1)?;
            let next = chrono::NaiveDate::from_ymd_opt(next_year, next_month, 1)?;
            (next - first).num_days() as f64
        }
    })
}

/// Labels of the series `absent()` reports: the equality matchers of a plain selector.
fn absent_labels(expr: &Expr) -> Result<Labels, QueryError> {
    let selector = match expr {
        Expr::VectorSelector(selector) => selector,
        Expr::MatrixSelector(matrix) => &matrix.vs,
        _ => return Ok(Labels::empty()),
    };
    let alternatives = selector_matchers(selector)?;
    let Some(matchers) = alternatives.first() else {
        return Ok(Labels::empty());
    };
    let mut labels = Labels::empty();
    let mut seen = std::collections::HashSet::new();
    for matcher in matchers {
        if matcher.name == METRIC_NAME {
            continue;
        }
        if matches!(matcher.op, vigil_model::MatchOp::Equal) && !seen.contains(&matcher.name) {
            labels.set(matcher.name.clone(), matcher.value.clone());
            seen.insert(matcher.name.clone());
        } else {
            labels.remove(&matcher.name);
        }
    }
    Ok(labels)
}

/// Groups classic histogram bucket series (by all labels but `le`) and computes one value per
/// group and step from its buckets.
fn classic_histogram(
    series: Vec<Series>,
    range: &StepRange,
    compute: impl Fn(usize, &mut Vec<Bucket>) -> f64,
) -> Result<Value, QueryError> {
    let mut groups: Vec<(Labels, bool)> = Vec::new();
    let mut group_index: std::collections::HashMap<Labels, usize> =
        std::collections::HashMap::new();
    let mut members: Vec<(usize, f64)> = Vec::new();
    for (series_index, one) in series.iter().enumerate() {
        let Some(upper_bound) = one.labels.get("le").and_then(parse_go_float) else {
            continue;
        };
        let mut labels = one.labels.clone();
        labels.remove("le");
        let group = *group_index.entry(labels.clone()).or_insert_with(|| {
            groups.push((labels, true));
            groups.len() - 1
        });
        members.push((series_index, upper_bound));
        let _ = group;
    }
    let membership: std::collections::HashMap<usize, (usize, f64)> = members
        .iter()
        .map(|&(series_index, upper_bound)| {
            let mut labels = series[series_index].labels.clone();
            labels.remove("le");
            (
                series_index,
                (group_index.get(&labels).copied().unwrap_or(0), upper_bound),
            )
        })
        .collect();
    let by_step = points_by_step(&series, range.count);
    let mut outputs: Vec<Vec<Point>> = vec![Vec::new(); groups.len()];
    let mut buckets: Vec<Vec<Bucket>> = vec![Vec::new(); groups.len()];
    for (step, points) in by_step.iter().enumerate() {
        for group in buckets.iter_mut() {
            group.clear();
        }
        for &(series_index, value) in points {
            if let Some(&(group, upper_bound)) = membership.get(&series_index) {
                buckets[group].push(Bucket {
                    upper_bound,
                    count: value,
                });
            }
        }
        for (group, group_buckets) in buckets.iter_mut().enumerate() {
            if group_buckets.is_empty() {
                continue;
            }
            outputs[group].push(Point {
                step: step as u32,
                value: compute(step, group_buckets),
            });
        }
    }
    Ok(Value::Vector(
        groups
            .into_iter()
            .zip(outputs)
            .filter(|(_, points)| !points.is_empty())
            .map(|((labels, drop_name), points)| Series {
                labels,
                drop_name,
                points,
            })
            .collect(),
    ))
}

/// Parses a float as Go's `strconv.ParseFloat` does for bucket bounds (`+Inf`, `Inf`, ...).
pub(crate) fn parse_go_float(text: &str) -> Option<f64> {
    match text.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Compares strings with embedded numbers in numeric order.
fn natural_compare(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a_chars, mut b_chars) = (a.chars().peekable(), b.chars().peekable());
    loop {
        match (a_chars.peek().copied(), b_chars.peek().copied()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let mut a_number = String::new();
                while let Some(c) = a_chars.peek().copied().filter(char::is_ascii_digit) {
                    a_number.push(c);
                    a_chars.next();
                }
                let mut b_number = String::new();
                while let Some(c) = b_chars.peek().copied().filter(char::is_ascii_digit) {
                    b_number.push(c);
                    b_chars.next();
                }
                let a_trimmed = a_number.trim_start_matches('0');
                let b_trimmed = b_number.trim_start_matches('0');
                let ordering = a_trimmed
                    .len()
                    .cmp(&b_trimmed.len())
                    .then_with(|| a_trimmed.cmp(b_trimmed));
                if ordering.is_ne() {
                    return ordering;
                }
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                a_chars.next();
                b_chars.next();
            }
        }
    }
}

/// Evaluates a function whose first (or, for `quantile_over_time`, second) argument is a
/// range vector.
fn eval_range_function(
    evaluator: &mut Evaluator<'_>,
    function: RangeFunction,
    name: &str,
    args: &[&Expr],
    range: &StepRange,
) -> Result<Value, QueryError> {
    let keeps_name = function.keeps_name();
    if let Some(bucketed) = bucketed_function(function) {
        if let Some(value) = super::buckets::try_eval(evaluator, bucketed, args, range)? {
            return Ok(value);
        }
    }
    let matrix_index = usize::from(function == RangeFunction::QuantileOverTime);
    let mut scalars: Vec<Vec<f64>> = Vec::new();
    for (index, expr) in args.iter().enumerate() {
        if index != matrix_index {
            scalars.push(evaluator.eval_scalar(expr, range, name)?);
        }
    }
    evaluator.set_first_last_suffice(matches!(
        function,
        RangeFunction::LastOverTime | RangeFunction::PresentOverTime
    ));
    let matrix = evaluator.eval_range_vector(arg(args, matrix_index)?, range);
    evaluator.set_first_last_suffice(false);
    let matrix = matrix?;
    if function == RangeFunction::DoubleExponentialSmoothing {
        for (index, what) in [(0, "smoothing"), (1, "trend")] {
            if let Some(values) = scalars.get(index) {
                if let Some(bad) = values.iter().find(|v| !(**v > 0.0 && **v < 1.0)) {
                    return Err(QueryError::Execution(format!(
                        "invalid {what} factor. Expected: 0 < sf < 1, got: {bad}"
                    )));
                }
            }
        }
    }
    let scalar_at = |which: usize, step: usize| -> f64 {
        scalars
            .get(which)
            .and_then(|values| values.get(step))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let mut output = Vec::with_capacity(matrix.series.len());
    for (series_index, series) in matrix.series.iter().enumerate() {
        if series_index % 1024 == 0 {
            evaluator.check_deadline("range function")?;
        }
        let mut points = Vec::new();
        RangeVector::for_each_window(
            &series.samples,
            matrix.range_ms,
            &matrix.window_ends,
            |step, window| {
                if window.is_empty() {
                    return;
                }
                let window_end = matrix.window_ends[step];
                let value = match function {
                    RangeFunction::Rate => {
                        extrapolated_rate(window, window_end, matrix.range_ms, true, true)
                    }
                    RangeFunction::Increase => {
                        extrapolated_rate(window, window_end, matrix.range_ms, true, false)
                    }
                    RangeFunction::Delta => {
                        extrapolated_rate(window, window_end, matrix.range_ms, false, false)
                    }
                    RangeFunction::Irate => instant_value(window, true),
                    RangeFunction::Idelta => instant_value(window, false),
                    RangeFunction::Deriv => (window.len() >= 2)
                        .then(|| linear_regression(window, window[0].timestamp_ms).0),
                    RangeFunction::PredictLinear => (window.len() >= 2).then(|| {
                        let (slope, intercept) = linear_regression(window, range.time(step));
                        slope * scalar_at(0, step) + intercept
                    }),
                    RangeFunction::Resets => Some(
                        window
                            .windows(2)
                            .filter(|pair| pair[1].value < pair[0].value)
                            .count() as f64,
                    ),
                    RangeFunction::Changes => Some(
                        window
                            .windows(2)
                            .filter(|pair| {
                                pair[1].value != pair[0].value
                                    && !(pair[1].value.is_nan() && pair[0].value.is_nan())
                            })
                            .count() as f64,
                    ),
                    RangeFunction::AvgOverTime => {
                        let mut mean = super::aggregate::MeanAccumulator::default();
                        for sample in window {
                            mean.add(sample.value);
                        }
                        Some(mean.value())
                    }
                    RangeFunction::MinOverTime => {
                        Some(window.iter().fold(window[0].value, |min, s| {
                            if s.value < min || min.is_nan() {
                                s.value
                            } else {
                                min
                            }
                        }))
                    }
                    RangeFunction::MaxOverTime => {
                        Some(window.iter().fold(window[0].value, |max, s| {
                            if s.value > max || max.is_nan() {
                                s.value
                            } else {
                                max
                            }
                        }))
                    }
                    RangeFunction::SumOverTime => Some(sum_over(window)),
                    RangeFunction::CountOverTime => Some(window.len() as f64),
                    RangeFunction::StddevOverTime => Some(variance_over(window).sqrt()),
                    RangeFunction::StdvarOverTime => Some(variance_over(window)),
                    RangeFunction::LastOverTime => window.last().map(|s| s.value),
                    RangeFunction::FirstOverTime => window.first().map(|s| s.value),
                    RangeFunction::PresentOverTime => Some(1.0),
                    RangeFunction::QuantileOverTime => {
                        let mut values: Vec<f64> = window.iter().map(|s| s.value).collect();
                        Some(quantile_of(scalar_at(0, step), &mut values))
                    }
                    RangeFunction::MadOverTime => {
                        let mut values: Vec<f64> = window.iter().map(|s| s.value).collect();
                        let center = median(&mut values);
                        let mut deviations: Vec<f64> =
                            values.iter().map(|v| (v - center).abs()).collect();
                        Some(median(&mut deviations))
                    }
                    RangeFunction::TsOfLastOverTime => {
                        window.last().map(|s| s.timestamp_ms as f64 / 1000.0)
                    }
                    RangeFunction::TsOfFirstOverTime => {
                        window.first().map(|s| s.timestamp_ms as f64 / 1000.0)
                    }
                    RangeFunction::TsOfMinOverTime | RangeFunction::TsOfMaxOverTime => {
                        let want_max = function == RangeFunction::TsOfMaxOverTime;
                        let mut best = window[0];
                        for sample in window {
                            let better = if want_max {
                                sample.value >= best.value || best.value.is_nan()
                            } else {
                                sample.value <= best.value || best.value.is_nan()
                            };
                            if better && !sample.value.is_nan() {
                                best = *sample;
                            }
                        }
                        Some(best.timestamp_ms as f64 / 1000.0)
                    }
                    RangeFunction::DoubleExponentialSmoothing => {
                        double_exponential_smoothing(window, scalar_at(0, step), scalar_at(1, step))
                    }
                };
                if let Some(value) = value {
                    points.push(Point {
                        step: step as u32,
                        value,
                    });
                }
            },
        );
        if points.is_empty() {
            continue;
        }
        output.push(Series {
            labels: series.labels.clone(),
            drop_name: if keeps_name { series.drop_name } else { true },
            points,
        });
    }
    Ok(Value::Vector(output))
}

fn double_exponential_smoothing(samples: &[Sample], smoothing: f64, trend: f64) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let mut previous_smoothed = 0.0;
    let mut smoothed = samples[0].value;
    let mut slope = samples[1].value - samples[0].value;
    for (index, sample) in samples.iter().enumerate().skip(1) {
        let scaled = smoothing * sample.value;
        if index > 1 {
            slope = trend * (smoothed - previous_smoothed) + (1.0 - trend) * slope;
        }
        let carried = (1.0 - smoothing) * (smoothed + slope);
        previous_smoothed = smoothed;
        smoothed = scaled + carried;
    }
    Some(smoothed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn samples(points: &[(i64, f64)]) -> Vec<Sample> {
        points
            .iter()
            .map(|&(timestamp_ms, value)| Sample {
                timestamp_ms,
                value,
            })
            .collect()
    }

    #[test]
    fn rate_extrapolates_to_window_edges() {
        // 0, 10, ..., 50 at 10 s spacing over a 60 s window ending at 60 s.
        let window = samples(&[
            (10_000, 10.0),
            (20_000, 20.0),
            (30_000, 30.0),
            (60_000, 60.0),
        ]);
        let rate = extrapolated_rate(&window, 60_000, 60_000, true, true).unwrap();
        assert!((rate - 1.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn counter_resets_are_added_back() {
        let window = samples(&[(0, 5.0), (10_000, 10.0), (20_000, 2.0)]);
        let increase = extrapolated_rate(&window, 20_000, 20_000, true, false).unwrap();
        assert!((increase - 7.0).abs() < 1e-9, "{increase}");
    }

    #[test]
    fn quantile_interpolates_between_ranks() {
        assert_eq!(quantile_of(0.5, &mut [1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(quantile_of(2.0, &mut [1.0]), f64::INFINITY);
        assert!(quantile_of(0.5, &mut []).is_nan());
    }

    #[test]
    fn natural_order_puts_numbers_in_numeric_order() {
        assert!(natural_compare("a2", "a10").is_lt());
        assert!(natural_compare("b", "a10").is_gt());
    }

    #[test]
    fn days_in_february_of_a_leap_year() {
        // 2024-02-10T00:00:00Z
        assert_eq!(time_component("days_in_month", 1_707_523_200.0), Some(29.0));
        assert_eq!(time_component("day_of_week", 0.0), Some(4.0));
    }
}
