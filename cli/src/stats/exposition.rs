//! Reading a Prometheus text exposition (format 0.0.4), and fetching one over HTTP.
//!
//! Owns: the sample-line grammar (`name{label="value",...} value [timestamp]`, with escapes in
//! label values) and the HTTP/1.1 GET that fetches `/metrics`. Must not touch: what the
//! samples mean (`view`). Bad input is an error naming the line, never a panic.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

/// Largest answer read from an endpoint.
const MAX_BODY: u64 = 16 * 1024 * 1024;
/// How long connecting to, and reading from, the endpoint may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels, by name.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Why an exposition could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// Every sample of `text`; comments and blank lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|problem| ParseError {
            line: i + 1,
            problem,
        })?;
        samples.push(sample);
    }
    Ok(samples)
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return Err(format!("no metric name in {line:?}"));
    }
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or_else(|| format!("{name}: no value"))?;
    let value = parse_value(value).ok_or_else(|| format!("{name}: {value:?} is not a number"))?;
    // An optional timestamp (ms), ignored; anything more is an error.
    if let Some(ts) = fields.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("{name}: {ts:?} is not a timestamp"));
    }
    if fields.next().is_some() {
        return Err(format!("{name}: text after the timestamp"));
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Reads `name="value",...}` into `labels`; what follows the `}`.
fn parse_labels<'a>(
    mut text: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = text
            .find('=')
            .ok_or_else(|| "a label without '='".to_owned())?;
        let key = text[..eq].trim();
        if key.is_empty()
            || !key
                .chars()
                .enumerate()
                .all(|(i, c)| is_name_char(c, i == 0))
        {
            return Err(format!("bad label name {key:?}"));
        }
        let after = text[eq + 1..].trim_start();
        let mut chars = after.char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {key}: value not quoted"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("label {key}: unterminated value"))?;
        labels.insert(key.to_owned(), value);
        text = after[end..].trim_start();
        if let Some(rest) = text.strip_prefix(',') {
            text = rest;
        } else if !text.starts_with('}') {
            return Err(format!("after label {key}: expected ',' or '}}'"));
        }
    }
}

/// Fetches `http://addr/metrics`; the body.
pub fn fetch(addr: SocketAddr) -> anyhow::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| {
        format!(
            "cannot reach the metrics endpoint at {addr} (is the daemon running with \
             metrics_listen = \"{addr}\" or --metrics {addr}?)"
        )
    })?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes())
        .with_context(|| format!("metrics endpoint {addr}: cannot send the request"))?;
    let mut answer = Vec::new();
    conn.take(MAX_BODY)
        .read_to_end(&mut answer)
        .with_context(|| format!("metrics endpoint {addr}: cannot read the answer"))?;
    let answer = String::from_utf8(answer)
        .with_context(|| format!("metrics endpoint {addr}: the answer is not text"))?;
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        bail!("metrics endpoint {addr}: not an HTTP answer");
    };
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        bail!("metrics endpoint {addr} answered {status:?}");
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels() {
        let text = "# HELP x y\n# TYPE x gauge\nx 1\n\
                    y{a=\"1\",b=\"q\\\"uo\\\\te\\n\"} 2.5 1700000000000\nz{} +Inf\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "x");
        assert_eq!(samples[0].value, 1.0);
        assert_eq!(samples[1].label("a"), "1");
        assert_eq!(samples[1].label("b"), "q\"uo\\te\n");
        assert_eq!(samples[1].value, 2.5);
        assert!(samples[2].value.is_infinite());
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        for bad in [
            "x",
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "x{=\"1\"} 2",
            "x{a=\"1\"",
            "x abc",
            "x 1 2 3",
            "{a=\"b\"} 1",
            "x{a=\"\\",
        ] {
            let error = parse(&format!("ok 1\n{bad}\n")).expect_err(bad);
            assert_eq!(error.line, 2, "{bad}");
        }
    }

    #[test]
    fn an_endpoint_that_is_down_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = format!("{:#}", fetch(addr).unwrap_err());
        assert!(
            error.contains("cannot reach the metrics endpoint"),
            "{error}"
        );
    }
}
