//! Vigil's PromQL engine: queries parsed by `promql-parser`, evaluated with Prometheus'
//! semantics over any [`MetricReader`].
//!
//! What it answers: "given this PromQL text and a time (or a time range and a step), what does
//! Prometheus return?" Useful for the HTTP query API, alerting rules and recording rules.
//!
//! How it evaluates: every node of the expression is evaluated once over all steps of the query
//! (as Prometheus' range evaluation does), producing series whose points are indexed by step.
//! Selectors read the store once per selector with [`vigil_model::SelectHints`] covering the
//! whole window they need. Metric names are removed late, as Prometheus does with delayed name
//! removal: a series carries a "drop the name" flag until the result is returned.
//!
//! Semantics follow Prometheus 3: staleness markers ending a series, range windows
//! `(t - range, t]`, extrapolated `rate`/`increase`/`delta`, Kahan summation in `sum`, `avg`
//! and the `*_over_time` family. One exception: by default the 5 minute lookback of an instant
//! selector still sees a sample exactly 5 minutes old, as Prometheus 2 does (kept because the
//! conformance files in use were found to expect it more often);
//! [`EngineOptions::lookback_left_open`] gives Prometheus 3's open left edge.

mod aggregate;
mod binary;
mod buckets;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod conformance_server;
mod eval;
mod functions;
mod histogram;
mod info;
pub mod memory;
mod sketch;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
mod value;

use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_model::{MetricReader, ReadError};

pub use memory::MemoryReader;
pub use value::{format_value, QueryResult, RangeResultSeries, VectorSample};

/// Prometheus' default lookback delta: how far back an instant selector looks for a sample.
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Default step of a subquery written without one (`x[5m:]`): Prometheus' default
/// evaluation interval.
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60 * 1000;

/// Limits and defaults of one evaluation.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// How far back an instant vector selector looks for a sample (ms).
    pub lookback_delta_ms: i64,
    /// Whether a sample exactly `lookback_delta_ms` old is out of the lookback window, as in
    /// Prometheus 3.0 and later. Off by default: most of Prometheus' conformance files (and
    /// Prometheus 2) see that sample.
    pub lookback_left_open: bool,
    /// Step of subqueries written without one (ms).
    pub default_subquery_step_ms: i64,
    /// Most samples a query may read from the store, summed over its selectors.
    pub max_samples: usize,
    /// Most points (series × steps) any intermediate or final result may hold.
    pub max_points: usize,
    /// Longest a query may run.
    pub timeout: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta_ms: DEFAULT_LOOKBACK_MS,
            lookback_left_open: false,
            default_subquery_step_ms: DEFAULT_SUBQUERY_STEP_MS,
            max_samples: 50_000_000,
            max_points: 20_000_000,
            timeout: Duration::from_secs(120),
        }
    }
}

/// A query that could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query text does not parse.
    #[error("{0}")]
    Parse(String),
    /// The query parses but cannot be run as asked (for example a range vector in a range
    /// query).
    #[error("{0}")]
    BadQuery(String),
    /// Evaluation failed, as Prometheus fails (duplicate series, many-to-many matching, ...).
    #[error("{0}")]
    Execution(String),
    /// The query would read or produce more than the configured limits allow.
    #[error("query too large: {0}")]
    TooLarge(String),
    /// The query ran past its deadline.
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// The metric store failed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Evaluates PromQL against a [`MetricReader`].
///
/// Evaluation blocks on the reader: call it from a blocking thread.
#[derive(Clone)]
pub struct Engine {
    reader: Arc<dyn MetricReader>,
    options: EngineOptions,
}

impl Engine {
    /// Returns an engine with the default options.
    pub fn new(reader: Arc<dyn MetricReader>) -> Self {
        Engine::with_options(reader, EngineOptions::default())
    }

    /// Returns an engine with the given options.
    pub fn with_options(reader: Arc<dyn MetricReader>, options: EngineOptions) -> Self {
        Engine { reader, options }
    }

    /// Returns the engine's options.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Evaluates `query` at `time_ms`, as `/api/v1/query` does.
    ///
    /// # Errors
    /// [`QueryError`] when the query does not parse, fails, is too large or times out.
    pub fn instant_query(&self, query: &str, time_ms: i64) -> Result<QueryResult, QueryError> {
        let deadline = Instant::now() + self.options.timeout;
        on_evaluation_thread(|| {
            let expr = parse(query)?;
            eval::evaluate_instant(
                self.reader.as_ref(),
                &self.options,
                &expr,
                time_ms,
                deadline,
            )
        })
    }

    /// Evaluates an already parsed expression at `time_ms` (rule evaluation parses once and
    /// evaluates many times).
    ///
    /// # Errors
    /// [`QueryError`] when evaluation fails, is too large or times out.
    pub fn instant_query_expr(
        &self,
        expr: &promql_parser::parser::Expr,
        time_ms: i64,
    ) -> Result<QueryResult, QueryError> {
        let deadline = Instant::now() + self.options.timeout;
        on_evaluation_thread(|| {
            eval::evaluate_instant(self.reader.as_ref(), &self.options, expr, time_ms, deadline)
        })
    }

    /// Evaluates `query` at every step from `start_ms` to `end_ms`, as `/api/v1/query_range`
    /// does.
    ///
    /// # Errors
    /// [`QueryError`] when the query does not parse, is not a scalar or instant vector, fails,
    /// is too large or times out.
    pub fn range_query(
        &self,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryResult, QueryError> {
        let deadline = Instant::now() + self.options.timeout;
        on_evaluation_thread(|| {
            let expr = parse(query)?;
            eval::evaluate_range(
                self.reader.as_ref(),
                &self.options,
                &expr,
                start_ms,
                end_ms,
                step_ms,
                deadline,
            )
        })
    }
}

/// Most steps a range query may have (Prometheus' 11,000 points per series).
pub const MAX_RANGE_STEPS: i64 = 11_000;

/// Returns the matcher sets of a series selector (one set, or one per `or` alternative),
/// with the metric name as a `__name__` matcher.
///
/// # Errors
/// [`QueryError::BadQuery`] when a regular expression does not compile.
pub fn selector_matcher_sets(
    selector: &promql_parser::parser::VectorSelector,
) -> Result<Vec<Vec<vigil_model::LabelMatcher>>, QueryError> {
    eval::selector_matchers(selector)
}

/// Stack of the thread a query is parsed and evaluated on. Both recurse once per level of
/// the expression; the reservation is virtual memory, touched only as deep as a query goes.
const EVALUATION_STACK_BYTES: usize = 64 << 20;

/// Runs `work` on a thread with a stack sized for [`MAX_EXPRESSION_DEPTH`], turning a panic
/// into an error instead of taking the caller down.
fn on_evaluation_thread<T: Send>(
    work: impl FnOnce() -> Result<T, QueryError> + Send,
) -> Result<T, QueryError> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("vigil-promql".to_string())
            .stack_size(EVALUATION_STACK_BYTES)
            .spawn_scoped(scope, work)
            .map_err(|error| {
                QueryError::Execution(format!("cannot start a query thread: {error}"))
            })?;
        handle.join().unwrap_or_else(|_| {
            Err(QueryError::Execution(
                "query evaluation failed unexpectedly".to_string(),
            ))
        })
    })
}

/// Deepest expression a query may hold: operators in a chain and brackets inside each other.
/// Parsing and evaluation recurse once per level; this bound keeps them within a 2 MiB thread
/// stack, so a hostile query fails with an error instead of aborting the process.
pub const MAX_EXPRESSION_DEPTH: usize = 300;

/// Parses PromQL text with `promql-parser`.
///
/// # Errors
/// [`QueryError::Parse`] with the parser's message, or when the query nests deeper than
/// [`MAX_EXPRESSION_DEPTH`].
pub fn parse(query: &str) -> Result<promql_parser::parser::Expr, QueryError> {
    check_depth(query)?;
    promql_parser::parser::parse(query).map_err(QueryError::Parse)
}

/// Refuses text whose operator count or bracket nesting (outside string literals) passes
/// [`MAX_EXPRESSION_DEPTH`]: an upper bound of the depth of its syntax tree.
fn check_depth(query: &str) -> Result<(), QueryError> {
    let mut operators = 0usize;
    let mut nesting = 0usize;
    let mut deepest = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut previous_alphanumeric = false;
    let mut word = String::new();
    for character in query.chars() {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if character == '\\' && open != '`' {
                escaped = true;
            } else if character == open {
                quote = None;
            }
            continue;
        }
        if character.is_alphanumeric() || character == '_' {
            word.push(character);
            previous_alphanumeric = true;
            continue;
        }
        if previous_alphanumeric {
            if matches!(word.as_str(), "and" | "or" | "unless" | "atan2") {
                operators += 1;
            }
            word.clear();
            previous_alphanumeric = false;
        }
        match character {
            '"' | '\'' | '`' => quote = Some(character),
            '(' | '[' | '{' => {
                nesting += 1;
                deepest = deepest.max(nesting);
            }
            ')' | ']' | '}' => nesting = nesting.saturating_sub(1),
            '+' | '-' | '*' | '/' | '%' | '^' | '=' | '<' | '>' | '!' => operators += 1,
            _ => {}
        }
    }
    if operators > MAX_EXPRESSION_DEPTH * 2 || deepest > MAX_EXPRESSION_DEPTH {
        return Err(QueryError::Parse(format!(
            "query is too deeply nested: at most {MAX_EXPRESSION_DEPTH} levels are allowed"
        )));
    }
    Ok(())
}
