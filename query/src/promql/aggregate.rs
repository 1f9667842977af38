//! Aggregation operators (`sum`, `avg`, `topk`, `quantile`, `count_values`, ...) with `by` and
//! `without`.

use std::collections::HashMap;

use parking_lot::Mutex;

use promql_parser::parser::token::{
    TokenId, T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_LIMITK, T_LIMIT_RATIO, T_MAX,
    T_MIN, T_QUANTILE, T_STDDEV, T_STDVAR, T_SUM, T_TOPK,
};
use promql_parser::parser::{AggregateExpr, LabelModifier};
use vigil_model::Labels;

use super::eval::{points_by_step, Evaluator, SeriesBuilder, StepRange, NAME_METADATA_LABELS};
use super::functions::{kahan_sum_inc, quantile_of};
use super::value::{format_value, Point, Series, Value};
use super::QueryError;

/// Returns the grouping labels of a series.
fn group_labels(labels: &Labels, modifier: &Option<LabelModifier>) -> Labels {
    match modifier {
        None => Labels::empty(),
        Some(LabelModifier::Include(by)) => Labels::from_pairs(
            labels
                .iter()
                .filter(|label| by.labels.contains(&label.name))
                .map(|label| (label.name.clone(), label.value.clone())),
        ),
        Some(LabelModifier::Exclude(without)) => Labels::from_pairs(
            labels
                .iter()
                .filter(|label| {
                    !NAME_METADATA_LABELS.contains(&label.name.as_str())
                        && !without.labels.contains(&label.name)
                })
                .map(|label| (label.name.clone(), label.value.clone())),
        ),
    }
}

/// A running mean that switches to incremental computation before the sum overflows, as
/// Prometheus does for `avg` and `avg_over_time`.
#[derive(Clone, Copy, Default)]
pub(crate) struct MeanAccumulator {
    count: f64,
    sum: f64,
    compensation: f64,
    mean: f64,
    incremental: bool,
}

impl MeanAccumulator {
    pub fn add(&mut self, value: f64) {
        self.count += 1.0;
        if self.count == 1.0 {
            self.sum = value;
            self.mean = value;
            return;
        }
        if !self.incremental {
            let (sum, compensation) = kahan_sum_inc(value, self.sum, self.compensation);
            if !sum.is_infinite() {
                self.sum = sum;
                self.compensation = compensation;
                return;
            }
            self.incremental = true;
            self.mean = self.sum / (self.count - 1.0);
            self.compensation /= self.count - 1.0;
        }
        if self.mean.is_infinite() {
            if value.is_infinite() && (self.mean > 0.0) == (value > 0.0) {
                return;
            }
            if !value.is_infinite() && !value.is_nan() {
                return;
            }
        }
        let current = self.mean + self.compensation;
        let (mean, compensation) = kahan_sum_inc(
            value / self.count - current / self.count,
            self.mean,
            self.compensation,
        );
        self.mean = mean;
        self.compensation = compensation;
    }

    pub fn value(&self) -> f64 {
        if self.incremental {
            self.mean + self.compensation
        } else {
            (self.sum + self.compensation) / self.count
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Accumulator {
    count: f64,
    value: f64,
    compensation: f64,
    mean: f64,
    average: MeanAccumulator,
}

/// Evaluates an aggregation.
pub(crate) fn eval_aggregate(
    evaluator: &mut Evaluator<'_>,
    expr: &AggregateExpr,
    range: &StepRange,
) -> Result<Value, QueryError> {
    let op = expr.op.id();
    let mut scalar_param: Option<Vec<f64>> = None;
    let mut string_param: Option<String> = None;
    if let Some(param) = &expr.param {
        match evaluator.eval(param, range)? {
            Value::Scalar(values) => scalar_param = Some(values),
            Value::String(text) => string_param = Some(text),
            other => {
                return Err(QueryError::BadQuery(format!(
                    "expected scalar or string aggregation parameter, got {}",
                    other.type_name()
                )))
            }
        }
    }
    let input = evaluator.eval_vector(&expr.expr, range, "aggregation")?;
    let output = match op {
        T_SUM | T_AVG | T_COUNT | T_MIN | T_MAX | T_GROUP | T_STDDEV | T_STDVAR => {
            simple_aggregation(op, input, &expr.modifier, range)?
        }
        T_TOPK | T_BOTTOMK | T_LIMITK | T_LIMIT_RATIO => {
            let params = scalar_param.unwrap_or_else(|| vec![f64::NAN; range.count]);
            select_aggregation(op, input, &expr.modifier, &params, range)?
        }
        T_QUANTILE => {
            let params = scalar_param.unwrap_or_else(|| vec![f64::NAN; range.count]);
            quantile_aggregation(input, &expr.modifier, &params, range)?
        }
        T_COUNT_VALUES => {
            let label = string_param.unwrap_or_default();
            count_values(input, &expr.modifier, &label, range)?
        }
        other => {
            return Err(QueryError::BadQuery(format!(
                "aggregation {} is not supported",
                promql_parser::parser::token::TokenType::new(other)
            )))
        }
    };
    Ok(Value::Vector(output))
}

/// Groups series: returns the labels of each group and each series' group index.
fn assign_groups(
    input: &[Series],
    modifier: &Option<LabelModifier>,
) -> (Vec<(Labels, bool)>, Vec<usize>) {
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<(Labels, bool)> = Vec::new();
    let mut membership = Vec::with_capacity(input.len());
    for series in input {
        let labels = group_labels(&series.labels, modifier);
        let keeps_name = labels.metric_name().is_some();
        let position = *index.entry(labels.clone()).or_insert_with(|| {
            groups.push((labels, false));
            groups.len() - 1
        });
        if keeps_name && series.drop_name {
            groups[position].1 = true;
        }
        membership.push(position);
    }
    (groups, membership)
}

/// The largest `groups × steps` table of accumulators [`simple_aggregation`] allocates (72 MiB);
/// past it the aggregation goes step by step with one accumulator per group.
const DENSE_ACCUMULATORS: usize = 1 << 20;

impl Accumulator {
    /// Adds one input value; returns true when it is the first of the slot.
    #[inline]
    fn add(&mut self, op: TokenId, value: f64) -> bool {
        self.count += 1.0;
        let first = self.count == 1.0;
        match op {
            T_SUM => {
                let (sum, compensation) = kahan_sum_inc(value, self.value, self.compensation);
                self.value = sum;
                self.compensation = compensation;
            }
            T_AVG => self.average.add(value),
            T_MIN if first || self.value > value || self.value.is_nan() => self.value = value,
            T_MAX if first || self.value < value || self.value.is_nan() => self.value = value,
            T_STDDEV | T_STDVAR => {
                if first {
                    self.mean = value;
                    self.value = 0.0;
                } else {
                    let delta = value - self.mean;
                    self.mean += delta / self.count;
                    self.value += delta * (value - self.mean);
                }
            }
            _ => {}
        }
        first
    }

    fn result(&self, op: TokenId) -> f64 {
        match op {
            T_SUM => self.value + self.compensation,
            T_AVG => self.average.value(),
            T_COUNT => self.count,
            T_GROUP => 1.0,
            T_MIN | T_MAX => self.value,
            T_STDVAR => self.value / self.count,
            T_STDDEV => (self.value / self.count).sqrt(),
            _ => f64::NAN,
        }
    }
}

fn simple_aggregation(
    op: TokenId,
    input: Vec<Series>,
    modifier: &Option<LabelModifier>,
    range: &StepRange,
) -> Result<Vec<Series>, QueryError> {
    let (groups, membership) = assign_groups(&input, modifier);
    let outputs = match groups.len().checked_mul(range.count) {
        Some(slots) if slots <= DENSE_ACCUMULATORS => {
            aggregate_series_major(op, &input, &membership, groups.len(), range.count)
        }
        _ => aggregate_step_major(op, &input, &membership, groups.len(), range.count),
    };
    Ok(groups
        .into_iter()
        .zip(outputs)
        .filter(|(_, points)| !points.is_empty())
        .map(|((labels, drop_name), points)| Series {
            labels,
            drop_name,
            points,
        })
        .collect())
}

/// Reads each series once, front to back, into a `groups × steps` table of accumulators. Each
/// accumulator takes its values in input order, as [`aggregate_step_major`] adds them, so both
/// give the same floats.
fn aggregate_series_major(
    op: TokenId,
    input: &[Series],
    membership: &[usize],
    group_count: usize,
    steps: usize,
) -> Vec<Vec<Point>> {
    if op == T_SUM {
        return sum_series_major(input, membership, group_count, steps);
    }
    let mut table = vec![Accumulator::default(); group_count * steps];
    for (series, &group) in input.iter().zip(membership) {
        let row = &mut table[group * steps..(group + 1) * steps];
        for point in &series.points {
            if let Some(slot) = row.get_mut(point.step as usize) {
                slot.add(op, point.value);
            }
        }
    }
    rows_to_points(&table, steps, group_count, |slot| {
        (slot.count > 0.0).then(|| slot.result(op))
    })
}

/// Turns a `groups × steps` table into each group's points, skipping the slots `value` finds
/// empty.
fn rows_to_points<Slot>(
    table: &[Slot],
    steps: usize,
    group_count: usize,
    value: impl Fn(&Slot) -> Option<f64>,
) -> Vec<Vec<Point>> {
    table
        .chunks(steps.max(1))
        .take(group_count)
        .map(|row| {
            row.iter()
                .enumerate()
                .filter_map(|(step, slot)| {
                    Some(Point {
                        step: step as u32,
                        value: value(slot)?,
                    })
                })
                .collect()
        })
        .collect()
}

/// Inputs of at least this many points are summed by several threads, each owning some of
/// the groups.
const PARALLEL_SUM_POINTS: usize = 200_000;

#[derive(Clone, Copy, Default)]
struct SumSlot {
    sum: f64,
    compensation: f64,
    present: bool,
}

/// [`aggregate_series_major`] for `sum`, the commonest aggregation, with a third of the
/// memory per slot: the same Kahan–Neumaier sums in the same order, so the same floats. A
/// large input is split by groups among up to one thread per core; each thread reads every
/// series but adds only those of its groups, so each sum still takes its values in input order.
fn sum_series_major(
    input: &[Series],
    membership: &[usize],
    group_count: usize,
    steps: usize,
) -> Vec<Vec<Point>> {
    let mut table = vec![SumSlot::default(); group_count * steps];
    // Adds the series of groups `first_group..` into `part`, their rows of the table.
    let add_groups = |first_group: usize, part: &mut [SumSlot]| {
        for (series, &group) in input.iter().zip(membership) {
            let Some(row) = group
                .checked_sub(first_group)
                .and_then(|local| part.get_mut(local * steps..(local + 1) * steps))
            else {
                continue;
            };
            for point in &series.points {
                if let Some(slot) = row.get_mut(point.step as usize) {
                    (slot.sum, slot.compensation) =
                        kahan_sum_inc(point.value, slot.sum, slot.compensation);
                    slot.present = true;
                }
            }
        }
    };
    let points: usize = input.iter().map(|series| series.points.len()).sum();
    let threads = if points >= PARALLEL_SUM_POINTS && steps > 0 {
        std::thread::available_parallelism()
            .map_or(1, |cores| cores.get())
            .min(group_count)
            .min(4)
    } else {
        1
    };
    if threads <= 1 {
        add_groups(0, &mut table);
    } else {
        let groups_per_part = group_count.div_ceil(threads);
        // The parts wait in a queue that every thread, this one included, takes from until
        // it is empty: a thread that cannot be started leaves its part to the others.
        let parts: Mutex<Vec<(usize, &mut [SumSlot])>> = Mutex::new(
            table
                .chunks_mut(groups_per_part * steps)
                .enumerate()
                .map(|(index, part)| (index * groups_per_part, part))
                .collect(),
        );
        let work = || loop {
            let Some((first_group, part)) = parts.lock().pop() else {
                return;
            };
            add_groups(first_group, part);
        };
        std::thread::scope(|scope| {
            for _ in 1..threads {
                let started = std::thread::Builder::new()
                    .name("vigil-sum".to_owned())
                    .spawn_scoped(scope, work);
                if let Err(error) = started {
                    tracing::debug!(%error, "summing on fewer threads");
                    break;
                }
            }
            work();
        });
    }
    rows_to_points(&table, steps, group_count, |slot| {
        slot.present.then_some(slot.sum + slot.compensation)
    })
}

/// Step by step with one accumulator per group, so memory stays proportional to the number of
/// groups when `groups × steps` is too large for a table.
fn aggregate_step_major(
    op: TokenId,
    input: &[Series],
    membership: &[usize],
    group_count: usize,
    steps: usize,
) -> Vec<Vec<Point>> {
    let mut accumulators = vec![Accumulator::default(); group_count];
    let mut touched: Vec<usize> = Vec::with_capacity(group_count);
    let mut cursors = vec![0usize; input.len()];
    let mut outputs: Vec<Vec<Point>> = vec![Vec::new(); group_count];
    for step in 0..steps {
        let step = step as u32;
        for (series_index, series) in input.iter().enumerate() {
            let cursor = &mut cursors[series_index];
            let Some(point) = series.points.get(*cursor) else {
                continue;
            };
            if point.step != step {
                continue;
            }
            *cursor += 1;
            let group = membership[series_index];
            if accumulators[group].add(op, point.value) {
                touched.push(group);
            }
        }
        for &group in &touched {
            let slot = std::mem::take(&mut accumulators[group]);
            outputs[group].push(Point {
                step,
                value: slot.result(op),
            });
        }
        touched.clear();
    }
    outputs
}

/// `topk`, `bottomk`, `limitk` and `limit_ratio`: keep some input series per group and step.
fn select_aggregation(
    op: TokenId,
    input: Vec<Series>,
    modifier: &Option<LabelModifier>,
    params: &[f64],
    range: &StepRange,
) -> Result<Vec<Series>, QueryError> {
    let (groups, membership) = assign_groups(&input, modifier);
    let by_step = points_by_step(&input, range.count);
    let mut kept: Vec<Vec<(u32, f64)>> = vec![Vec::new(); input.len()];
    let mut per_group: Vec<Vec<(usize, f64)>> = vec![Vec::new(); groups.len()];
    for (step, points) in by_step.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let param = params.get(step).copied().unwrap_or(f64::NAN);
        if param.is_nan() {
            return Err(QueryError::Execution("Parameter value is NaN".to_string()));
        }
        if op == T_LIMIT_RATIO {
            if !(-1.0..=1.0).contains(&param) {
                return Err(QueryError::Execution(format!(
                    "limit_ratio parameter must be between -1 and 1, got {param}"
                )));
            }
        } else if param >= 9.223_372_036_854_776e18 || param <= -9.223_372_036_854_776e18 {
            return Err(QueryError::Execution(format!(
                "Scalar value {param} overflows int64"
            )));
        }
        for group in per_group.iter_mut() {
            group.clear();
        }
        for &(series_index, value) in points {
            per_group[membership[series_index]].push((series_index, value));
        }
        for members in per_group.iter_mut() {
            if members.is_empty() {
                continue;
            }
            match op {
                T_TOPK | T_BOTTOMK => {
                    if param < 1.0 {
                        continue;
                    }
                    let k = (param as usize).min(members.len());
                    let top = op == T_TOPK;
                    // NaN sorts last for both; stable so ties keep input order.
                    members.sort_by(|a, b| {
                        let (x, y) = (a.1, b.1);
                        match (x.is_nan(), y.is_nan()) {
                            (true, true) => std::cmp::Ordering::Equal,
                            (true, false) => std::cmp::Ordering::Greater,
                            (false, true) => std::cmp::Ordering::Less,
                            _ if top => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
                            _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
                        }
                    });
                    for &(series_index, value) in members.iter().take(k) {
                        kept[series_index].push((step as u32, value));
                    }
                }
                T_LIMITK => {
                    if param < 1.0 {
                        continue;
                    }
                    let k = (param as usize).min(members.len());
                    members.sort_by(|a, b| input[a.0].labels.cmp(&input[b.0].labels));
                    for &(series_index, value) in members.iter().take(k) {
                        kept[series_index].push((step as u32, value));
                    }
                }
                _ => {
                    for &(series_index, value) in members.iter() {
                        let position = ratio_position(&input[series_index].labels);
                        let keep = if param >= 0.0 {
                            position < param
                        } else {
                            position >= 1.0 + param
                        };
                        if keep {
                            kept[series_index].push((step as u32, value));
                        }
                    }
                }
            }
        }
    }
    let mut output = Vec::new();
    for (series, points) in input.into_iter().zip(kept) {
        if points.is_empty() {
            continue;
        }
        output.push(Series {
            labels: series.labels,
            drop_name: series.drop_name,
            points: points
                .into_iter()
                .map(|(step, value)| Point { step, value })
                .collect(),
        });
    }
    if range.count == 1 && matches!(op, T_TOPK | T_BOTTOMK) {
        // An instant query returns topk/bottomk in rank order.
        let top = op == T_TOPK;
        output.sort_by(|a, b| {
            let x = a.points.first().map_or(f64::NAN, |p| p.value);
            let y = b.points.first().map_or(f64::NAN, |p| p.value);
            match (x.is_nan(), y.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ if top => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
                _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
            }
        });
    }
    Ok(output)
}

/// A stable position in [0, 1) for a label set, used by `limit_ratio`.
fn ratio_position(labels: &Labels) -> f64 {
    labels.fingerprint() as f64 / (u64::MAX as f64 + 1.0)
}

fn quantile_aggregation(
    input: Vec<Series>,
    modifier: &Option<LabelModifier>,
    params: &[f64],
    range: &StepRange,
) -> Result<Vec<Series>, QueryError> {
    let (groups, membership) = assign_groups(&input, modifier);
    let by_step = points_by_step(&input, range.count);
    let mut outputs: Vec<Vec<Point>> = vec![Vec::new(); groups.len()];
    let mut per_group: Vec<Vec<f64>> = vec![Vec::new(); groups.len()];
    for (step, points) in by_step.iter().enumerate() {
        for group in per_group.iter_mut() {
            group.clear();
        }
        for &(series_index, value) in points {
            per_group[membership[series_index]].push(value);
        }
        let q = params.get(step).copied().unwrap_or(f64::NAN);
        for (group, values) in per_group.iter_mut().enumerate() {
            if values.is_empty() {
                continue;
            }
            outputs[group].push(Point {
                step: step as u32,
                value: quantile_of(q, values),
            });
        }
    }
    Ok(groups
        .into_iter()
        .zip(outputs)
        .map(|((labels, drop_name), points)| Series {
            labels,
            drop_name,
            points,
        })
        .collect())
}

fn count_values(
    input: Vec<Series>,
    modifier: &Option<LabelModifier>,
    label: &str,
    range: &StepRange,
) -> Result<Vec<Series>, QueryError> {
    if !is_valid_label_name(label) {
        return Err(QueryError::Execution(format!(
            "invalid label name {label:?}"
        )));
    }
    let group_of: Vec<Labels> = input
        .iter()
        .map(|series| group_labels(&series.labels, modifier))
        .collect();
    let by_step = points_by_step(&input, range.count);
    let mut builder = SeriesBuilder::default();
    for (step, points) in by_step.iter().enumerate() {
        let mut counts: Vec<(Labels, f64)> = Vec::new();
        let mut index: HashMap<Labels, usize> = HashMap::new();
        for &(series_index, value) in points {
            let mut labels = group_of[series_index].clone();
            labels.set(label.to_string(), format_value(value));
            match index.get(&labels) {
                Some(position) => counts[*position].1 += 1.0,
                None => {
                    index.insert(labels.clone(), counts.len());
                    counts.push((labels, 1.0));
                }
            }
        }
        for (labels, count) in counts {
            builder.push(&labels, false, step as u32, count)?;
        }
    }
    Ok(builder.finish())
}

/// Returns true for a label name Prometheus accepts (UTF-8 names allowed, not empty).
pub(crate) fn is_valid_label_name(name: &str) -> bool {
    !name.is_empty()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn mean_survives_overflowing_sums() {
        let mut mean = MeanAccumulator::default();
        mean.add(f64::MAX);
        mean.add(f64::MAX);
        assert_eq!(mean.value(), f64::MAX);
    }

    #[test]
    fn without_drops_the_metric_name() {
        let labels = Labels::with_name("up", [("job", "api"), ("instance", "a")]);
        let modifier = Some(LabelModifier::exclude(vec!["instance"]));
        assert_eq!(
            group_labels(&labels, &modifier),
            Labels::from_pairs([("job", "api")])
        );
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    /// Series whose values make Kahan summation and the running mean order-sensitive.
    fn awkward_input(series: usize, steps: u32) -> (Vec<Series>, Vec<usize>) {
        let input = (0..series)
            .map(|index| Series {
                labels: Labels::empty(),
                drop_name: false,
                points: (0..steps)
                    .filter(|step| !(step + index as u32).is_multiple_of(3))
                    .map(|step| Point {
                        step,
                        value: match (index + step as usize) % 4 {
                            0 => 1e16,
                            1 => 1.0,
                            2 => -1e16,
                            _ => 0.1 * index as f64,
                        },
                    })
                    .collect(),
            })
            .collect();
        let membership = (0..series).map(|index| index % 3).collect();
        (input, membership)
    }

    #[test]
    fn a_sum_split_among_threads_gives_the_floats_of_one_thread() {
        // 600 series of 1,000 steps: past PARALLEL_SUM_POINTS, in 3 groups.
        let (input, membership) = awkward_input(600, 1_000);
        let points: usize = input.iter().map(|series| series.points.len()).sum();
        assert!(points >= PARALLEL_SUM_POINTS);
        let split = sum_series_major(&input, &membership, 3, 1_000);
        let stepwise = aggregate_step_major(T_SUM, &input, &membership, 3, 1_000);
        let bits = |outputs: &Vec<Vec<Point>>| -> Vec<Vec<(u32, u64)>> {
            outputs
                .iter()
                .map(|points| points.iter().map(|p| (p.step, p.value.to_bits())).collect())
                .collect()
        };
        assert_eq!(bits(&split), bits(&stepwise));
        // Each group lacks every third step in every series of it.
        assert!(split.iter().all(|points| points.len() > 600));
    }

    #[test]
    fn series_major_and_step_major_give_the_same_floats() {
        let (input, membership) = awkward_input(10, 40);
        for op in [
            T_SUM, T_AVG, T_COUNT, T_MIN, T_MAX, T_GROUP, T_STDDEV, T_STDVAR,
        ] {
            let dense = aggregate_series_major(op, &input, &membership, 3, 40);
            let stepwise = aggregate_step_major(op, &input, &membership, 3, 40);
            let bits = |outputs: &Vec<Vec<Point>>| -> Vec<Vec<(u32, u64)>> {
                outputs
                    .iter()
                    .map(|points| points.iter().map(|p| (p.step, p.value.to_bits())).collect())
                    .collect()
            };
            assert_eq!(bits(&dense), bits(&stepwise), "op {op}");
            assert!(dense.iter().all(|points| !points.is_empty()));
        }
    }
}
