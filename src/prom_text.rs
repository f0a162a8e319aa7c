//! `/metrics` content negotiation: the registry renders OpenMetrics; a scraper that does not
//! ask for OpenMetrics in `Accept` (a plain `curl`, older Prometheus, many agents) gets the
//! Prometheus text format 0.0.4 made from it.

use std::collections::HashSet;

/// The OpenMetrics content type, for scrapers that ask for it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text exposition format, the default.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The body and content type for a scrape with this `Accept` header.
pub fn negotiate(openmetrics: String, accept: Option<&str>) -> (String, &'static str) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (openmetrics, OPENMETRICS)
    } else {
        (to_prometheus(&openmetrics), PROMETHEUS)
    }
}

/// OpenMetrics text as Prometheus 0.0.4 text: no `# EOF` or `# UNIT`, counter families named
/// with their `_total` suffix (0.0.4 types the sample name), types 0.0.4 does not know
/// (`info`, `stateset`, `unknown`, ...) as gauges or untyped, and no exemplars.
pub fn to_prometheus(openmetrics: &str) -> String {
    let mut types = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            types.insert(name.to_string(), kind.trim().to_string());
        }
    }
    let renamed = |name: &str| -> String {
        match types.get(name).map(String::as_str) {
            Some("counter") if !name.ends_with("_total") => format!("{name}_total"),
            Some("info") => format!("{name}_info"),
            _ => name.to_string(),
        }
    };
    let mut seen = HashSet::new();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind.trim() {
                k @ ("counter" | "gauge" | "histogram" | "summary") => k,
                "info" | "stateset" | "gaugehistogram" => "gauge",
                _ => "untyped",
            };
            let name = renamed(name);
            if seen.insert(name.clone()) {
                out.push_str(&format!("# TYPE {name} {kind}\n"));
            }
            continue;
        }
        // An exemplar follows the value after ` # `; 0.0.4 has none.
        let sample = line.split_once(" # ").map_or(line, |(s, _)| s);
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP requests Requests.\n# TYPE requests counter\nrequests_total{route=\"chat\"} 3 # {trace_id=\"a\"} 1.0\n# HELP up Up.\n# TYPE up gauge\n# UNIT up seconds\nup 1\n# TYPE build info\nbuild_info{v=\"1\"} 1\n# EOF\n";

    #[test]
    fn openmetrics_only_when_asked_for() {
        let (text, kind) = negotiate(
            OM.into(),
            Some("application/openmetrics-text; version=1.0.0"),
        );
        assert_eq!((text.as_str(), kind), (OM, OPENMETRICS));
        for accept in [None, Some("text/plain"), Some("*/*")] {
            let (text, kind) = negotiate(OM.into(), accept);
            assert_eq!(kind, PROMETHEUS);
            assert_eq!(
                text,
                "# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total{route=\"chat\"} 3\n# HELP up Up.\n# TYPE up gauge\nup 1\n# TYPE build_info gauge\nbuild_info{v=\"1\"} 1\n"
            );
        }
    }
}
