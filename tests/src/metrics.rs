//! Reading Prometheus text exposition: sum the samples of one metric whose
//! labels include the given pairs.

/// Labels of one sample line, e.g. `name{a="1",b="x"} 3` → [("a","1"),("b","x")].
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else { break };
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((key, val));
        rest = &after[end..];
    }
    out
}

/// Every sample of metric `name` (exact name, no suffix matching) as
/// (labels, value).
pub fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some(close) = r.rfind('}') else { continue };
            (parse_labels(&r[..close]), r[close + 1..].trim())
        } else if rest.starts_with(' ') {
            (Vec::new(), rest.trim())
        } else {
            continue;
        };
        let value = value.split_whitespace().next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            out.push((labels, v));
        }
    }
    out
}

/// Sum of the samples of `name` whose labels contain every pair in `want`;
/// None when no sample matched.
pub fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for (labels, v) in samples(text, name) {
        let all = want
            .iter()
            .all(|(k, wv)| labels.iter().any(|(lk, lv)| lk == k && lv == wv));
        if all {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x y\n# TYPE tollgate_requests_total counter\n\
        tollgate_requests_total{host=\"api\",route=\"users\",class=\"2xx\"} 5\n\
        tollgate_requests_total{host=\"api\",route=\"users\",class=\"5xx\"} 2\n\
        tollgate_requests_total_created{host=\"api\"} 1\n\
        tollgate_endpoint_healthy{cluster=\"c\",endpoint=\"127.0.0.1:1\"} 0\n\
        plain 7\n";

    #[test]
    fn sums_matching_samples() {
        assert_eq!(sum(TEXT, "tollgate_requests_total", &[("host", "api")]), Some(7.0));
        assert_eq!(sum(TEXT, "tollgate_requests_total", &[("class", "5xx")]), Some(2.0));
        assert_eq!(sum(TEXT, "tollgate_requests_total", &[("class", "4xx")]), None);
        assert_eq!(
            sum(TEXT, "tollgate_endpoint_healthy", &[("endpoint", "127.0.0.1:1")]),
            Some(0.0)
        );
        assert_eq!(sum(TEXT, "plain", &[]), Some(7.0));
    }
}
