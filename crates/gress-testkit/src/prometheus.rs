//! Scraping a Prometheus endpoint over loopback HTTP, and reading the text
//! exposition format, for tests of the metrics endpoint.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One sample of a scrape: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name (with `_bucket`, `_sum`, `_count` for histograms).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// `GET /metrics` from `addr` with HTTP/1.1; the body of a 200 answer.
pub fn scrape(addr: SocketAddr) -> io::Result<String> {
    get(addr, "/metrics")
}

/// The body of `GET <path>` on the endpoint at `addr`; an error unless it
/// answers 200.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response =
        String::from_utf8(response).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "no end of the response headers")
    })?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("answered `{status}`")));
    }
    if head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "chunked answers are not read here",
        ));
    }
    Ok(body.to_string())
}

/// The samples of a text-format scrape (comments skipped). A line that is
/// not a sample is an error naming it.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_line(line).ok_or_else(|| format!("not a sample: `{line}`"))?);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(inner) => parse_labels(inner)?,
        None => (BTreeMap::new(), &line[name_end..]),
    };
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `key="value",...}` and what follows the brace.
fn parse_labels(mut rest: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, quoted) = rest.split_once('=')?;
        let quoted = quoted.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i + 1,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    escaped => value.push(escaped),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        rest = &quoted[end..];
    }
}

/// The samples named `name` that have (at least) `labels`.
pub fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> {
    samples.iter().filter(move |s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
    })
}

/// The value of the first sample named `name` that has (at least) `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    matching(samples, name, labels).next().map(|s| s.value)
}

/// The sum of the samples named `name` that have (at least) `labels` (for
/// example over the workers of a job).
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(samples, name, labels).map(|s| s.value).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_and_values() -> Result<(), String> {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\na_total{backend=\"x\",op=\"q\\\"uote\"} 42\nb 1.5\nc_bucket{le=\"+Inf\"} 3\n";
        let samples = parse(text)?;
        assert_eq!(samples.len(), 3);
        assert_eq!(value(&samples, "a_total", &[("backend", "x")]), Some(42.0));
        assert_eq!(value(&samples, "a_total", &[("op", "q\"uote")]), Some(42.0));
        assert_eq!(value(&samples, "a_total", &[("backend", "y")]), None);
        assert_eq!(value(&samples, "b", &[]), Some(1.5));
        assert_eq!(value(&samples, "c_bucket", &[("le", "+Inf")]), Some(3.0));
        assert!(parse("broken{").is_err());
        Ok(())
    }
}
