//! Pure StatsD line-protocol parser: bytes of a datagram → lines → samples, or a typed
//! [`ParseError`] per bad sample. No sockets, no globals, no allocation on the hot path.
//!
//! A line is `name:value|type[|@rate][|#tags]`, where `type` is one of `c`, `g`, `ms`, `h`,
//! `d`, `s`. As statsd_exporter does, a line without DogStatsD tags may carry several samples
//! (`name:1|c:2|c`), and tags may also be written in the name in the InfluxDB
//! (`name,k=v:1|c`), Librato (`name#k=v:1|c`) or SignalFx (`name[k=v]:1|c`) style.
//!
//! The parse happens in two steps so the aggregator can key series by raw bytes:
//! [`for_each_sample`] splits a line into [`RawSample`]s without looking inside the name or
//! tags, and [`parse_name_and_tags`] (run once per distinct series) decodes the tags.

use std::borrow::Cow;

/// Why a StatsD line (or one sample of it) was refused. [`ParseError::reason`] gives the stable
/// label value used in `vigil_ingest_rejected_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line has no `:` between name and value, or no `|` before the type.
    #[error("line is not `name:value|type`")]
    Malformed,
    /// The metric name is empty.
    #[error("metric name is empty")]
    EmptyName,
    /// The value is not a finite number (or, for a set, is empty).
    #[error("value is not a finite number")]
    BadValue,
    /// A counter increment is negative.
    #[error("counter increment is negative")]
    NegativeCounter,
    /// The type is not one of `c`, `g`, `ms`, `h`, `d`, `s`.
    #[error("type is not one of `c`, `g`, `ms`, `h`, `d`, `s`")]
    BadType,
    /// The `@rate` is not a number in [0, 1].
    #[error("sample rate is not a number between 0 and 1")]
    BadSampleRate,
    /// The tags cannot be read: mixed tag styles, an unbalanced SignalFx bracket, several
    /// DogStatsD tag sections.
    #[error("tags cannot be read")]
    BadTags,
    /// A `|`-separated component after the type is empty or unknown.
    #[error("unknown or empty component after the type")]
    BadComponent,
    /// The line is not valid UTF-8.
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
    /// A DogStatsD event (`_e{…}`) or service check (`_sc|…`), which Vigil does not take.
    #[error("DogStatsD events and service checks are not supported")]
    Unsupported,
}

impl ParseError {
    /// Returns the stable reason label of this error.
    pub fn reason(self) -> &'static str {
        match self {
            ParseError::Malformed => "malformed_line",
            ParseError::EmptyName => "empty_name",
            ParseError::BadValue => "bad_value",
            ParseError::NegativeCounter => "negative_counter",
            ParseError::BadType => "bad_type",
            ParseError::BadSampleRate => "bad_sample_rate",
            ParseError::BadTags => "bad_tags",
            ParseError::BadComponent => "bad_component",
            ParseError::InvalidUtf8 => "invalid_utf8",
            ParseError::Unsupported => "unsupported",
        }
    }
}

/// The StatsD type of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// `c`: a counter increment.
    Counter,
    /// `g`: a gauge value, or a delta when signed.
    Gauge,
    /// `ms`: a timer observation in milliseconds.
    Timer,
    /// `h`: a histogram observation.
    Histogram,
    /// `d`: a distribution observation.
    Distribution,
    /// `s`: a set member.
    Set,
}

impl MetricKind {
    /// Returns the type as written on the wire.
    pub fn as_wire(self) -> &'static str {
        match self {
            MetricKind::Counter => "c",
            MetricKind::Gauge => "g",
            MetricKind::Timer => "ms",
            MetricKind::Histogram => "h",
            MetricKind::Distribution => "d",
            MetricKind::Set => "s",
        }
    }

    /// Returns true for timers, histograms and distributions (statsd_exporter's "observer").
    pub fn is_observer(self) -> bool {
        matches!(
            self,
            MetricKind::Timer | MetricKind::Histogram | MetricKind::Distribution
        )
    }

    fn from_wire(text: &[u8]) -> Result<Self, ParseError> {
        match text {
            b"c" => Ok(MetricKind::Counter),
            b"g" => Ok(MetricKind::Gauge),
            b"ms" => Ok(MetricKind::Timer),
            b"h" => Ok(MetricKind::Histogram),
            b"d" => Ok(MetricKind::Distribution),
            b"s" => Ok(MetricKind::Set),
            _ => Err(ParseError::BadType),
        }
    }
}

/// The value of one sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SampleValue<'a> {
    /// A counter increment, already divided by the sample rate.
    Counter(f64),
    /// A gauge: `relative` when the value was written with a sign (`+3`, `-2`).
    Gauge {
        /// The value or delta.
        value: f64,
        /// True for a delta.
        relative: bool,
    },
    /// An observation of a timer (milliseconds, as sent), histogram or distribution.
    Observation {
        /// The observed value, as sent.
        value: f64,
        /// How many observations it stands for (`1/rate`, truncated as statsd_exporter does).
        count: u32,
    },
    /// A set member.
    Set(&'a str),
}

/// One sample of a line, with its name and tags still raw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawSample<'a> {
    /// The text before the first `:`, with any InfluxDB, Librato or SignalFx tags in it.
    pub name_section: &'a str,
    /// The DogStatsD tags after `|#`, without the `#`; empty when absent.
    pub dogstatsd_tags: &'a str,
    /// The type.
    pub kind: MetricKind,
    /// The value.
    pub value: SampleValue<'a>,
}

/// Splits a datagram into lines: separated by `\n`, a trailing `\r` removed, empty lines
/// skipped.
pub fn lines(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(datagram);
    std::iter::from_fn(move || loop {
        let text = rest?;
        let line = match memchr::memchr(b'\n', text) {
            Some(end) => {
                rest = text.get(end + 1..);
                text.get(..end)?
            }
            None => {
                rest = None;
                text
            }
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            return Some(line);
        }
    })
}

/// One sample of a line of the common shape, as [`fast_sample`] reads it: name and tags still
/// raw bytes, not yet checked for UTF-8.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FastSample<'a> {
    /// The text before the first `:`.
    pub name_section: &'a [u8],
    /// The DogStatsD tags after `|#`, without the `#`; empty when absent.
    pub dogstatsd_tags: &'a [u8],
    /// The type (never [`MetricKind::Set`]).
    pub kind: MetricKind,
    /// The value (never [`SampleValue::Set`]).
    pub value: SampleValue<'a>,
}

/// Reads a line of the shape nearly every client sends, `name:value|type[|@rate][|#tags]` with
/// a plain decimal value, in one pass and without checking UTF-8: the aggregator checks the
/// name and tags once per distinct series instead of once per line. Returns `None` for every
/// other line (several samples, a set, another component, an exponent or a negative counter,
/// a leading `_`, any error), which [`for_each_sample`] then reads. Where it returns a sample,
/// [`for_each_sample`] reads the line as exactly that one sample, once the name and tags are
/// valid UTF-8 (a property test checks it).
pub fn fast_sample(line: &[u8]) -> Option<FastSample<'_>> {
    match fast_sample_at(line)? {
        (sample, length) if length == line.len() => Some(sample),
        _ => None,
    }
}

/// Reads the first line of `text` (up to a `\n` or the end) as [`fast_sample`] does, in the
/// same pass that finds where the line ends, and returns the sample with the line's length.
/// `None` where [`fast_sample`] returns `None` for that line, and for a line ending in `\r`;
/// the caller then splits the line off as [`lines`] does.
pub fn fast_sample_at(text: &[u8]) -> Option<(FastSample<'_>, usize)> {
    if text.first() == Some(&b'_') {
        return None;
    }
    let colon = find_either(text, b':', b'\n')?;
    let (name_section, rest) = (text.get(..colon)?, text.get(colon + 1..)?);
    if name_section.is_empty() || text.get(colon) != Some(&b':') {
        return None;
    }
    // The value is read while looking for the `|` after it.
    let (number, value_len) = scan_decimal(rest)?;
    if rest.get(value_len) != Some(&b'|') {
        return None;
    }
    let value_text = rest.get(..value_len)?;
    let after_value = rest.get(value_len + 1..)?;
    let (kind, kind_len) = kind_prefix(after_value)?;
    // `end` is the line's end within `after_value`, once known.
    let (mut components, mut end) = match after_value.get(kind_len) {
        None | Some(b'\n') => (None, kind_len),
        Some(b'|') => (Some(kind_len + 1), 0),
        Some(_) => return None,
    };
    let mut sample_rate = None;
    let mut dogstatsd_tags = None;
    while let Some(start) = components {
        let component = after_value.get(start..)?;
        let component_len = match component.split_first() {
            Some((b'@', rate_text)) if sample_rate.is_none() => {
                let (rate, rate_len) = scan_decimal(rate_text)?;
                if !(rate > 0.0 && rate <= 1.0) {
                    return None;
                }
                sample_rate = Some(rate);
                rate_len + 1
            }
            Some((b'#', tags_text)) if dogstatsd_tags.is_none() => {
                let tags_len = find_either(tags_text, b'|', b'\n').unwrap_or(tags_text.len());
                dogstatsd_tags = Some(tags_text.get(..tags_len)?);
                tags_len + 1
            }
            _ => return None,
        };
        let terminator = start + component_len;
        match after_value.get(terminator) {
            Some(b'|') => components = Some(terminator + 1),
            None | Some(b'\n') => {
                components = None;
                end = terminator;
            }
            Some(_) => return None,
        }
    }
    if end > 0 && after_value.get(end - 1) == Some(&b'\r') {
        return None;
    }
    let line_len = colon + 1 + value_len + 1 + end;
    let sample_rate = sample_rate.unwrap_or(1.0);
    let value = match kind {
        MetricKind::Set => return None,
        MetricKind::Counter => {
            if number < 0.0 {
                return None;
            }
            SampleValue::Counter(number / sample_rate)
        }
        MetricKind::Gauge => SampleValue::Gauge {
            value: number,
            relative: matches!(value_text.first(), Some(b'+' | b'-')),
        },
        MetricKind::Timer | MetricKind::Histogram | MetricKind::Distribution => {
            SampleValue::Observation {
                value: number,
                count: observation_count(sample_rate),
            }
        }
    };
    let sample = FastSample {
        name_section,
        dogstatsd_tags: dogstatsd_tags.unwrap_or_default(),
        kind,
        value,
    };
    Some((sample, line_len))
}

/// Returns the position of the first `first` or `second` byte, eight bytes at a time: names
/// and tags are a few dozen bytes, too short for a vector search to pay for its set-up.
#[inline]
fn find_either(text: &[u8], first: u8, second: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let (firsts, seconds) = (ONES * u64::from(first), ONES * u64::from(second));
    // Flags the bytes of `word` that are zero; the lowest flagged byte is always a true zero
    // (a borrow can only flag bytes above it).
    let zeros = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let mut words = text.chunks_exact(8);
    let mut offset = 0;
    for word in words.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let word = u64::from_le_bytes(bytes);
        let found = zeros(word ^ firsts) | zeros(word ^ seconds);
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    words
        .remainder()
        .iter()
        .position(|byte| *byte == first || *byte == second)
        .map(|position| offset + position)
}

/// Reads the type at the start of `text` (`c`, `g`, `ms`, `h`, `d` or `s`, followed by `|`,
/// `\n` or the end) and returns it with its length.
#[inline]
fn kind_prefix(text: &[u8]) -> Option<(MetricKind, usize)> {
    let kind = match text.first()? {
        b'c' => MetricKind::Counter,
        b'g' => MetricKind::Gauge,
        b'h' => MetricKind::Histogram,
        b'd' => MetricKind::Distribution,
        b's' => MetricKind::Set,
        b'm' if text.get(1) == Some(&b's') => MetricKind::Timer,
        _ => return None,
    };
    let len = if kind == MetricKind::Timer { 2 } else { 1 };
    match text.get(len) {
        None | Some(b'|' | b'\n') => Some((kind, len)),
        Some(_) => None,
    }
}

/// Parses one line and hands each of its samples (or the error of a bad one) to `visit`.
/// A line with several samples (`name:1|c:2|g`) calls `visit` once per sample.
pub fn for_each_sample<'a>(
    line: &'a [u8],
    mut visit: impl FnMut(Result<RawSample<'a>, ParseError>),
) {
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(_) => return visit(Err(ParseError::InvalidUtf8)),
    };
    if text.starts_with("_e{") || text.starts_with("_sc|") {
        return visit(Err(ParseError::Unsupported));
    }
    let Some((name_section, samples_text)) = split_once_byte(text, b':') else {
        return visit(Err(ParseError::Malformed));
    };
    if name_section.is_empty() {
        return visit(Err(ParseError::EmptyName));
    }
    if has_dogstatsd_tags(samples_text) {
        // DogStatsD tags contain `:`; as in statsd_exporter such a line has one sample.
        return visit(parse_sample(name_section, samples_text));
    }
    for sample_text in split_byte(samples_text, b':') {
        visit(parse_sample(name_section, sample_text));
    }
}

// The separators of the line protocol are ASCII, so the byte scans below cut `&str`s at
// character boundaries. They replace `str::split`/`split_once`/`contains`, whose generic
// searchers cost more than the rest of the parse on lines of a few dozen bytes.

/// `text.split_once(byte as char)` for an ASCII `byte`.
#[inline]
fn split_once_byte(text: &str, byte: u8) -> Option<(&str, &str)> {
    let index = text
        .as_bytes()
        .iter()
        .position(|candidate| *candidate == byte)?;
    Some((&text[..index], &text[index + 1..]))
}

/// `text.contains("|#")`.
#[inline]
fn has_dogstatsd_tags(text: &str) -> bool {
    let bytes = text.as_bytes();
    // `#` is rare outside the tag section: look for it, then at the byte before it.
    bytes
        .iter()
        .enumerate()
        .skip(1)
        .any(|(index, byte)| *byte == b'#' && bytes[index - 1] == b'|')
}

/// `text.split(byte as char)` for an ASCII `byte`.
#[inline]
fn split_byte(text: &str, byte: u8) -> ByteSplit<'_> {
    ByteSplit {
        rest: Some(text),
        byte,
    }
}

struct ByteSplit<'a> {
    rest: Option<&'a str>,
    byte: u8,
}

impl<'a> Iterator for ByteSplit<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match split_once_byte(rest, self.byte) {
            Some((piece, after)) => {
                self.rest = Some(after);
                Some(piece)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

fn parse_sample<'a>(name_section: &'a str, text: &'a str) -> Result<RawSample<'a>, ParseError> {
    let mut components = split_byte(text, b'|');
    let value_text = components.next().unwrap_or_default();
    let kind = match components.next() {
        Some(kind_text) => MetricKind::from_wire(kind_text.as_bytes())?,
        None => return Err(ParseError::Malformed),
    };
    let mut sample_rate = 1.0;
    let mut dogstatsd_tags = None;
    for component in components {
        match component.as_bytes().first() {
            Some(b'@') => sample_rate = parse_sample_rate(&component[1..])?,
            Some(b'#') => {
                if dogstatsd_tags.is_some() {
                    return Err(ParseError::BadTags);
                }
                dogstatsd_tags = Some(&component[1..]);
            }
            // DogStatsD protocol 1.2 container id and 1.3 timestamp: accepted and ignored.
            Some(b'c') if component.starts_with("c:") => {}
            Some(b'T') => {}
            _ => return Err(ParseError::BadComponent),
        }
    }
    let value = parse_value(kind, value_text, sample_rate)?;
    Ok(RawSample {
        name_section,
        dogstatsd_tags: dogstatsd_tags.unwrap_or_default(),
        kind,
        value,
    })
}

fn parse_sample_rate(text: &str) -> Result<f64, ParseError> {
    let rate = match parse_decimal(text.as_bytes()) {
        Some(rate) => rate,
        None => text.parse().map_err(|_| ParseError::BadSampleRate)?,
    };
    if !(0.0..=1.0).contains(&rate) {
        return Err(ParseError::BadSampleRate);
    }
    // statsd_exporter treats a rate of 0 as unsampled.
    if rate == 0.0 {
        return Ok(1.0);
    }
    Ok(rate)
}

fn parse_number(text: &str) -> Result<f64, ParseError> {
    if let Some(number) = parse_decimal(text.as_bytes()) {
        return Ok(number);
    }
    // Rust's float parser accepts words ("inf", "NaN"); only finite numbers are values.
    let number: f64 = text.parse().map_err(|_| ParseError::BadValue)?;
    if !number.is_finite() {
        return Err(ParseError::BadValue);
    }
    Ok(number)
}

/// The value of an optionally signed decimal of at most 15 digits with an optional fraction
/// (`12`, `-3`, `+0.25`, `7.`), as `str::parse::<f64>` reads it; `None` for anything else. The
/// digits are an integer below 2^53 and the divisor a power of ten below 10^16, both exact in an
/// `f64`, so the one division rounds as the general parser does (Clinger's fast path). Most
/// StatsD values and rates are such decimals, and this is a fraction of the general parser's
/// cost.
#[inline]
fn parse_decimal(text: &[u8]) -> Option<f64> {
    match scan_decimal(text)? {
        (value, end) if end == text.len() => Some(value),
        _ => None,
    }
}

/// Reads a plain decimal (as [`parse_decimal`] does) up to the first `|`, `\n` or the end, in the
/// same pass that looks for that `|`, and returns it with the length of its text; `None` when
/// a byte before it is not part of such a decimal.
#[inline]
fn scan_decimal(text: &[u8]) -> Option<(f64, usize)> {
    const POWERS_OF_TEN: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, start) = match text.first()? {
        b'-' => (true, 1),
        b'+' => (false, 1),
        _ => (false, 0),
    };
    let mut mantissa: u64 = 0;
    let mut digits = 0usize;
    let mut fraction_digits = 0usize;
    let mut seen_point = false;
    let mut end = text.len();
    for (index, byte) in text.iter().enumerate().skip(start) {
        match byte {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(byte - b'0');
                digits += 1;
                if digits > 15 {
                    return None;
                }
                if seen_point {
                    fraction_digits += 1;
                }
            }
            b'.' if !seen_point => seen_point = true,
            b'|' | b'\n' => {
                end = index;
                break;
            }
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    let value = mantissa as f64 / POWERS_OF_TEN.get(fraction_digits)?;
    Some((if negative { -value } else { value }, end))
}

fn parse_value(
    kind: MetricKind,
    text: &str,
    sample_rate: f64,
) -> Result<SampleValue<'_>, ParseError> {
    match kind {
        MetricKind::Counter => {
            let increment = parse_number(text)?;
            if increment < 0.0 {
                return Err(ParseError::NegativeCounter);
            }
            Ok(SampleValue::Counter(increment / sample_rate))
        }
        MetricKind::Gauge => {
            let relative = text.starts_with('+') || text.starts_with('-');
            Ok(SampleValue::Gauge {
                value: parse_number(text)?,
                relative,
            })
        }
        MetricKind::Timer | MetricKind::Histogram | MetricKind::Distribution => {
            Ok(SampleValue::Observation {
                value: parse_number(text)?,
                count: observation_count(sample_rate),
            })
        }
        MetricKind::Set => {
            if text.is_empty() {
                return Err(ParseError::BadValue);
            }
            Ok(SampleValue::Set(text))
        }
    }
}

/// How many observations one sampled observation stands for: `1/rate`, truncated as
/// statsd_exporter does, at least 1.
fn observation_count(sample_rate: f64) -> u32 {
    let repeat = if sample_rate == 1.0 {
        1.0
    } else {
        (1.0 / sample_rate).floor()
    };
    if repeat >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        (repeat as u32).max(1)
    }
}

/// The name and labels of a series, decoded from a sample's raw sections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameAndTags<'a> {
    /// The metric name with the tag sections removed, not yet escaped.
    pub name: Cow<'a, str>,
    /// Tags as `(label name, value)`, label names escaped as statsd_exporter escapes them.
    pub tags: Vec<(String, String)>,
    /// How many tags were skipped as malformed (empty key or value, no separator, a key
    /// starting with `__`), as statsd_exporter skips them.
    pub skipped_tags: usize,
}

/// Decodes the tags of a sample: InfluxDB, Librato or SignalFx tags in the name section, and
/// DogStatsD tags. A malformed single tag is skipped and counted; the line stays.
///
/// # Errors
/// [`ParseError::BadTags`] when DogStatsD tags are mixed with another style or a SignalFx
/// bracket is unbalanced; [`ParseError::EmptyName`] when no name remains.
pub fn parse_name_and_tags<'a>(
    name_section: &'a str,
    dogstatsd_tags: &str,
) -> Result<NameAndTags<'a>, ParseError> {
    let mut decoded = NameAndTags::default();
    let open = name_section.find('[');
    let close = name_section.find(']');
    decoded.name = match (open, close) {
        (Some(open), Some(close)) if open < close => {
            parse_tag_list(&name_section[open + 1..close], '=', &mut decoded);
            let (before, after) = (&name_section[..open], &name_section[close + 1..]);
            if after.is_empty() {
                Cow::Borrowed(before)
            } else {
                Cow::Owned(format!("{before}{after}"))
            }
        }
        (None, None) => match name_section.find([',', '#']) {
            Some(start) => {
                parse_tag_list(&name_section[start + 1..], '=', &mut decoded);
                Cow::Borrowed(&name_section[..start])
            }
            None => Cow::Borrowed(name_section),
        },
        _ => return Err(ParseError::BadTags),
    };
    if !dogstatsd_tags.is_empty() {
        let had_name_tags = !decoded.tags.is_empty() || decoded.skipped_tags > 0;
        if had_name_tags {
            return Err(ParseError::BadTags);
        }
        parse_tag_list(dogstatsd_tags, ':', &mut decoded);
    }
    if decoded.name.is_empty() {
        return Err(ParseError::EmptyName);
    }
    Ok(decoded)
}

fn parse_tag_list(list: &str, separator: char, decoded: &mut NameAndTags<'_>) {
    if list.is_empty() {
        return;
    }
    for tag in list.split(',') {
        match tag.split_once(separator) {
            Some((key, value))
                if !key.is_empty() && !value.is_empty() && !key.starts_with("__") =>
            {
                let key = escape_metric_name(key).into_owned();
                match decoded
                    .tags
                    .iter_mut()
                    .find(|(existing, _)| *existing == key)
                {
                    Some(existing) => existing.1 = value.to_string(),
                    None => decoded.tags.push((key, value.to_string())),
                }
            }
            _ => decoded.skipped_tags += 1,
        }
    }
}

/// Escapes a name as statsd_exporter does: every character outside `[a-zA-Z0-9_]` becomes `_`,
/// and a leading digit gets a `_` prefix.
pub fn escape_metric_name(name: &str) -> Cow<'_, str> {
    let valid = |character: char| character.is_ascii_alphanumeric() || character == '_';
    let starts_with_digit = name.as_bytes().first().is_some_and(u8::is_ascii_digit);
    if !starts_with_digit && name.chars().all(valid) {
        return Cow::Borrowed(name);
    }
    let mut escaped = String::with_capacity(name.len() + 1);
    if starts_with_digit {
        escaped.push('_');
    }
    for character in name.chars() {
        escaped.push(if valid(character) { character } else { '_' });
    }
    Cow::Owned(escaped)
}

/// A fully decoded StatsD sample, owning its text: what [`parse_datagram`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsdMetric {
    /// The metric name without tag sections, not escaped.
    pub name: String,
    /// Tags in the order they appeared, label names escaped.
    pub tags: Vec<(String, String)>,
    /// The type.
    pub kind: MetricKind,
    /// The value (a set member is owned).
    pub value: OwnedValue,
}

/// The owned counterpart of [`SampleValue`].
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedValue {
    /// A counter increment, divided by the sample rate.
    Counter(f64),
    /// A gauge value or delta.
    Gauge {
        /// The value or delta.
        value: f64,
        /// True for a delta.
        relative: bool,
    },
    /// An observation and how many it stands for.
    Observation {
        /// The value as sent.
        value: f64,
        /// `1/rate` truncated.
        count: u32,
    },
    /// A set member.
    Set(String),
}

/// Parses a whole datagram into one result per sample, in order: the pure entry point for
/// fuzzing and tests. A bad line never hides the good lines around it.
pub fn parse_datagram(datagram: &[u8]) -> Vec<Result<StatsdMetric, ParseError>> {
    let mut results = Vec::new();
    for line in lines(datagram) {
        for_each_sample(line, |sample| {
            let decoded = sample.and_then(|sample| {
                let name_and_tags =
                    parse_name_and_tags(sample.name_section, sample.dogstatsd_tags)?;
                Ok(StatsdMetric {
                    name: name_and_tags.name.into_owned(),
                    tags: name_and_tags.tags,
                    kind: sample.kind,
                    value: match sample.value {
                        SampleValue::Counter(value) => OwnedValue::Counter(value),
                        SampleValue::Gauge { value, relative } => {
                            OwnedValue::Gauge { value, relative }
                        }
                        SampleValue::Observation { value, count } => {
                            OwnedValue::Observation { value, count }
                        }
                        SampleValue::Set(member) => OwnedValue::Set(member.to_string()),
                    },
                })
            });
            results.push(decoded);
        });
    }
    results
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_one(line: &str) -> Result<StatsdMetric, ParseError> {
        let mut results = parse_datagram(line.as_bytes());
        assert_eq!(results.len(), 1, "{line:?} gave {results:?}");
        results.remove(0)
    }

    #[test]
    fn plain_counter() {
        let metric = parse_one("gateway.requests:1|c").unwrap();
        assert_eq!(metric.name, "gateway.requests");
        assert_eq!(metric.kind, MetricKind::Counter);
        assert_eq!(metric.value, OwnedValue::Counter(1.0));
    }

    #[test]
    fn sampled_counter() {
        let metric = parse_one("gateway.requests:1|c|@0.5").unwrap();
        assert_eq!(metric.value, OwnedValue::Counter(2.0));
        let metric = parse_one("bar:2|c|@0.1").unwrap();
        assert!(matches!(metric.value, OwnedValue::Counter(value) if (value - 20.0).abs() < 1e-9));
    }

    #[test]
    fn zero_sample_rate_counts_once() {
        let metric = parse_one("bar:2|c|@0").unwrap();
        assert_eq!(metric.value, OwnedValue::Counter(2.0));
    }

    #[test]
    fn bad_sample_rate_is_rejected() {
        assert_eq!(parse_one("bar:2|c|@x"), Err(ParseError::BadSampleRate));
        assert_eq!(parse_one("bar:2|c|@1.5"), Err(ParseError::BadSampleRate));
        assert_eq!(parse_one("bar:2|c|@-0.1"), Err(ParseError::BadSampleRate));
        assert_eq!(parse_one("bar:2|c|@NaN"), Err(ParseError::BadSampleRate));
    }

    #[test]
    fn negative_counter_is_rejected() {
        assert_eq!(parse_one("bar:-2|c"), Err(ParseError::NegativeCounter));
    }

    #[test]
    fn gauge_absolute_and_deltas() {
        assert_eq!(
            parse_one("x:5|g").unwrap().value,
            OwnedValue::Gauge {
                value: 5.0,
                relative: false
            }
        );
        assert_eq!(
            parse_one("x:+3|g").unwrap().value,
            OwnedValue::Gauge {
                value: 3.0,
                relative: true
            }
        );
        assert_eq!(
            parse_one("x:-2.5|g").unwrap().value,
            OwnedValue::Gauge {
                value: -2.5,
                relative: true
            }
        );
    }

    #[test]
    fn gauge_delta_ignores_sample_rate() {
        assert_eq!(
            parse_one("x:+3|g|@0.5").unwrap().value,
            OwnedValue::Gauge {
                value: 3.0,
                relative: true
            }
        );
    }

    #[test]
    fn timer_histogram_distribution_and_sampled_timer() {
        assert_eq!(
            parse_one("t:320|ms").unwrap().value,
            OwnedValue::Observation {
                value: 320.0,
                count: 1
            }
        );
        assert_eq!(parse_one("t:320|h").unwrap().kind, MetricKind::Histogram);
        assert_eq!(parse_one("t:320|d").unwrap().kind, MetricKind::Distribution);
        assert_eq!(
            parse_one("t:320|ms|@0.25").unwrap().value,
            OwnedValue::Observation {
                value: 320.0,
                count: 4
            }
        );
        assert_eq!(
            parse_one("t:1|ms|@0.3").unwrap().value,
            OwnedValue::Observation {
                value: 1.0,
                count: 3
            }
        );
    }

    #[test]
    fn set_member() {
        let metric = parse_one("s:u1|s").unwrap();
        assert_eq!(metric.kind, MetricKind::Set);
        assert_eq!(metric.value, OwnedValue::Set("u1".to_string()));
    }

    #[test]
    fn dogstatsd_tags_become_labels() {
        let metric = parse_one("gateway.requests:1|c|#env:prod,service:gateway").unwrap();
        assert_eq!(metric.name, "gateway.requests");
        assert_eq!(
            metric.tags,
            [
                ("env".to_string(), "prod".to_string()),
                ("service".to_string(), "gateway".to_string())
            ]
        );
    }

    #[test]
    fn dogstatsd_tags_with_rate_and_container_id() {
        let metric = parse_one("page.views:1|c|@0.5|#env:prod|c:abc123|T1656581400").unwrap();
        assert_eq!(metric.value, OwnedValue::Counter(2.0));
        assert_eq!(metric.tags, [("env".to_string(), "prod".to_string())]);
    }

    #[test]
    fn dogstatsd_tag_without_value_is_skipped() {
        let decoded = parse_name_and_tags("x", "env:prod,flag,:v,k:").unwrap();
        assert_eq!(decoded.tags, [("env".to_string(), "prod".to_string())]);
        assert_eq!(decoded.skipped_tags, 3);
    }

    #[test]
    fn dogstatsd_tag_value_keeps_colons() {
        let decoded = parse_name_and_tags("x", "url:http://a:80/").unwrap();
        assert_eq!(
            decoded.tags,
            [("url".to_string(), "http://a:80/".to_string())]
        );
    }

    #[test]
    fn influx_tags_in_name() {
        let metric = parse_one("gateway.requests,env=prod,service=gateway:1|c").unwrap();
        assert_eq!(metric.name, "gateway.requests");
        assert_eq!(metric.tags.len(), 2);
        assert_eq!(
            metric.tags[1],
            ("service".to_string(), "gateway".to_string())
        );
    }

    #[test]
    fn librato_tags_in_name() {
        let metric = parse_one("gateway.requests#env=prod,region=eu:1|c").unwrap();
        assert_eq!(metric.name, "gateway.requests");
        assert_eq!(metric.tags[0], ("env".to_string(), "prod".to_string()));
    }

    #[test]
    fn signalfx_tags_in_name() {
        let metric = parse_one("gateway.[env=prod,region=eu]requests:1|c").unwrap();
        assert_eq!(metric.name, "gateway.requests");
        assert_eq!(metric.tags.len(), 2);
        let metric = parse_one("gateway.requests[env=prod]:1|c").unwrap();
        assert_eq!(metric.name, "gateway.requests");
    }

    #[test]
    fn unbalanced_signalfx_bracket_is_bad_tags() {
        assert_eq!(parse_one("gateway.[env=prod:1|c"), Err(ParseError::BadTags));
    }

    #[test]
    fn mixed_tag_styles_are_bad_tags() {
        assert_eq!(
            parse_one("a,env=prod:1|c|#env:dev"),
            Err(ParseError::BadTags)
        );
    }

    #[test]
    fn tag_keys_are_escaped_and_reserved_keys_skipped() {
        let decoded = parse_name_and_tags("x", "k.8s-pod:a,__name__:evil").unwrap();
        assert_eq!(decoded.tags, [("k_8s_pod".to_string(), "a".to_string())]);
        assert_eq!(decoded.skipped_tags, 1);
    }

    #[test]
    fn several_samples_in_one_line() {
        let results = parse_datagram(b"a.b:1|c:2|g:bad|ms");
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].as_ref().unwrap().value, OwnedValue::Counter(1.0));
        assert_eq!(results[1].as_ref().unwrap().kind, MetricKind::Gauge);
        assert_eq!(results[2], Err(ParseError::BadValue));
    }

    #[test]
    fn bad_line_never_stops_good_lines() {
        let results = parse_datagram(b"a:1|c\nbroken\n:1|c\nb:x|g\nc:1|zz\n\nd:2|ms\r\n");
        let reasons: Vec<&str> = results
            .iter()
            .map(|result| match result {
                Ok(_) => "ok",
                Err(error) => error.reason(),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                "ok",
                "malformed_line",
                "empty_name",
                "bad_value",
                "bad_type",
                "ok"
            ]
        );
    }

    #[test]
    fn non_finite_values_are_bad_values() {
        assert_eq!(parse_one("a:NaN|g"), Err(ParseError::BadValue));
        assert_eq!(parse_one("a:inf|ms"), Err(ParseError::BadValue));
        assert_eq!(parse_one("a:|c"), Err(ParseError::BadValue));
        assert_eq!(parse_one("a:|s"), Err(ParseError::BadValue));
    }

    #[test]
    fn missing_type_and_unknown_component() {
        assert_eq!(parse_one("a:1"), Err(ParseError::Malformed));
        assert_eq!(parse_one("a:1|c|x"), Err(ParseError::BadComponent));
        assert_eq!(parse_one("a:1|c||"), Err(ParseError::BadComponent));
    }

    #[test]
    fn events_and_service_checks_are_unsupported() {
        assert_eq!(
            parse_one("_e{5,4}:title|text"),
            Err(ParseError::Unsupported)
        );
        assert_eq!(parse_one("_sc|name|0"), Err(ParseError::Unsupported));
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        assert_eq!(parse_datagram(b"a\xff:1|c"), [Err(ParseError::InvalidUtf8)]);
    }

    #[test]
    fn escape_follows_statsd_exporter() {
        assert_eq!(escape_metric_name("gateway.requests"), "gateway_requests");
        assert_eq!(escape_metric_name("1st-try"), "_1st_try");
        assert_eq!(escape_metric_name("ok_name"), "ok_name");
        assert_eq!(escape_metric_name("a:b/é"), "a_b__");
    }

    fn format_metric(
        name: &str,
        tags: &[(String, String)],
        kind: MetricKind,
        value: f64,
    ) -> String {
        let mut line = format!("{name}:{value}|{}", kind.as_wire());
        if !tags.is_empty() {
            line.push_str("|#");
            let joined: Vec<String> = tags
                .iter()
                .map(|(key, value)| format!("{key}:{value}"))
                .collect();
            line.push_str(&joined.join(","));
        }
        line
    }

    fn edge_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(1.0),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
            Just(1e-300),
            (0.0f64..1e12),
        ]
    }

    proptest! {
        #[test]
        fn byte_scans_equal_the_str_methods(text in "[a-zé€:|#@,=]{0,40}") {
            for (byte, separator) in [(b':', ':'), (b'|', '|'), (b',', ',')] {
                prop_assert_eq!(
                    split_byte(&text, byte).collect::<Vec<_>>(),
                    text.split(separator).collect::<Vec<_>>()
                );
                prop_assert_eq!(split_once_byte(&text, byte), text.split_once(separator));
            }
            prop_assert_eq!(has_dogstatsd_tags(&text), text.contains("|#"));
        }

        #[test]
        fn the_decimal_path_reads_what_the_float_parser_reads(
            text in "[+\\-]?[0-9]{0,17}|[+\\-]?[0-9]{0,9}\\.[0-9]{0,9}|[+\\-0-9.e]{0,6}"
        ) {
            if let Some(fast) = parse_decimal(text.as_bytes()) {
                let general: f64 = text.parse().unwrap();
                prop_assert_eq!(fast.to_bits(), general.to_bits(), "{}", text);
            }
            let general = text.parse::<f64>().ok().filter(|number| number.is_finite());
            prop_assert_eq!(parse_number(&text).ok().map(f64::to_bits), general.map(f64::to_bits));
        }

        #[test]
        fn the_fast_path_reads_a_line_as_the_general_parser_does(
            line in "[a-c.:|#@,=_é0-9+\\-]{0,30}|[a-c.]{1,20}:[+\\-]?[0-9.]{0,5}\\|(c|g|ms|h|d|s)(\\|[@#][a-c0-9.:,|]{0,6}){0,3}",
            invalid in proptest::option::of(0usize..40),
        ) {
            let mut bytes = line.into_bytes();
            if let Some(position) = invalid {
                let position = position.min(bytes.len());
                bytes.insert(position, 0xff);
            }
            let Some(fast) = fast_sample(&bytes) else {
                return Ok(());
            };
            let mut general = Vec::new();
            for_each_sample(&bytes, |sample| general.push(sample));
            if std::str::from_utf8(&bytes).is_ok() {
                prop_assert_eq!(general.len(), 1);
                let sample = general[0].unwrap();
                prop_assert_eq!(sample.name_section.as_bytes(), fast.name_section);
                prop_assert_eq!(sample.dogstatsd_tags.as_bytes(), fast.dogstatsd_tags);
                prop_assert_eq!(sample.kind, fast.kind);
                prop_assert_eq!(sample.value, fast.value);
            } else {
                // The aggregator refuses the line as invalid UTF-8 when it checks the key.
                prop_assert_eq!(general, vec![Err(ParseError::InvalidUtf8)]);
                prop_assert!(
                    std::str::from_utf8(fast.name_section).is_err()
                        || std::str::from_utf8(fast.dogstatsd_tags).is_err()
                );
            }
        }

        #[test]
        fn the_word_scan_finds_the_first_of_two_bytes(
            bytes in proptest::collection::vec(prop_oneof![Just(b':'), Just(b'\n'), any::<u8>()], 0..64)
        ) {
            prop_assert_eq!(
                find_either(&bytes, b':', b'\n'),
                bytes.iter().position(|byte| *byte == b':' || *byte == b'\n')
            );
        }

        #[test]
        fn lines_of_the_common_shape_take_the_fast_path(
            name in "[a-z][a-z0-9_.]{0,40}",
            value in "[0-9]{1,6}(\\.[0-9]{1,3})?",
            kind in "c|g|ms|h|d",
            rate in proptest::option::of("0\\.[1-9]|1"),
            tags in proptest::option::of("[a-z]{1,8}:[a-z0-9]{1,8}(,[a-z]{1,8}:[a-z0-9]{1,8}){0,3}"),
        ) {
            let mut line = format!("{name}:{value}|{kind}");
            if let Some(rate) = &rate {
                line.push_str(&format!("|@{rate}"));
            }
            if let Some(tags) = &tags {
                line.push_str(&format!("|#{tags}"));
            }
            let fast = fast_sample(line.as_bytes());
            prop_assert!(fast.is_some(), "{}", line);
            let fast = fast.unwrap();
            prop_assert_eq!(fast.name_section, name.as_bytes());
            prop_assert_eq!(fast.dogstatsd_tags, tags.as_deref().unwrap_or_default().as_bytes());
            // Read in place, with the datagram's next line after it.
            let datagram = format!("{line}\nnext.line:1|c");
            let in_place = fast_sample_at(datagram.as_bytes());
            prop_assert_eq!(in_place, Some((fast, line.len())), "{}", line);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_datagram(&bytes);
        }

        #[test]
        fn never_panics_on_statsd_like_text(text in "[a-z.:|#@,=\\[\\]+\\-0-9\n]{0,200}") {
            let _ = parse_datagram(text.as_bytes());
        }

        #[test]
        fn format_then_parse_round_trips(
            name in "[a-z][a-z0-9_.]{0,30}",
            tags in proptest::collection::vec(("[a-z][a-z0-9_]{0,10}", "[a-zA-Z0-9_.\\-/]{1,12}"), 0..4),
            kind in prop_oneof![
                Just(MetricKind::Counter), Just(MetricKind::Gauge), Just(MetricKind::Timer),
                Just(MetricKind::Histogram), Just(MetricKind::Distribution)
            ],
            value in edge_value(),
        ) {
            let mut unique_tags: Vec<(String, String)> = Vec::new();
            for (key, tag_value) in tags {
                if !unique_tags.iter().any(|(existing, _)| *existing == key) {
                    unique_tags.push((key, tag_value));
                }
            }
            let line = format_metric(&name, &unique_tags, kind, value);
            let metric = parse_one(&line).unwrap();
            prop_assert_eq!(&metric.name, &name);
            prop_assert_eq!(&metric.tags, &unique_tags);
            prop_assert_eq!(metric.kind, kind);
            let parsed_value = match metric.value {
                OwnedValue::Counter(value) => value,
                OwnedValue::Gauge { value, .. } => value,
                OwnedValue::Observation { value, .. } => value,
                OwnedValue::Set(_) => f64::NAN,
            };
            prop_assert_eq!(parsed_value, value);
        }
    }
}
