//! Results of a benchmark run: named figures with units, the Erlang reference next to them, and
//! the two output forms (a table for people, one flat JSON object for scripts).
//!
//! Metric names are the Erlang harness's (`/shared/anchors/erlang/results.txt`) without the
//! `pg.` prefix, so a figure and its reference share one key.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

/// One measured figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// Harness name without `pg.`, e.g. `single.join_seq.1g_10k`.
    pub key: String,
    /// The figure.
    pub value: f64,
    /// Its unit, as the harness writes it (`ops/s`, `us`, `ms`, `bytes/membership`, ...).
    pub unit: &'static str,
}

/// Every figure of a run, in the order measured, plus the units that failed.
#[derive(Debug, Default)]
pub struct Report {
    /// The figures.
    pub metrics: Vec<Metric>,
    /// `(unit id, error)` of every benchmark unit that did not finish.
    pub failed: Vec<(String, String)>,
    /// Extra string-valued facts for the JSON output (timer profiles used, ...).
    pub notes: Vec<(String, String)>,
}

impl Report {
    /// Records every figure of `other` after this one's.
    pub fn extend(&mut self, other: Vec<Metric>) {
        self.metrics.extend(other);
    }

    /// The run as one flat JSON object: every metric by key, plus `backend`, `processes`,
    /// the notes and (when any) `failed`.
    pub fn to_json(&self, backend: &str, processes: bool) -> Value {
        let mut m = Map::new();
        for metric in &self.metrics {
            let v = serde_json::Number::from_f64(metric.value).map_or(Value::Null, Value::Number);
            m.insert(metric.key.clone(), v);
        }
        m.insert("backend".into(), Value::String(backend.into()));
        m.insert("processes".into(), Value::Bool(processes));
        for (k, v) in &self.notes {
            m.insert(k.clone(), Value::String(v.clone()));
        }
        if !self.failed.is_empty() {
            let failed = self
                .failed
                .iter()
                .map(|(unit, why)| Value::String(format!("{unit}: {why}")))
                .collect();
            m.insert("failed".into(), Value::Array(failed));
        }
        Value::Object(m)
    }

    /// The run as a table: metric, value, unit, the Erlang figure and how many times better
    /// meshreg is (`x pg`: above 1 is better, whatever the unit's direction).
    pub fn table(&self, reference: &Reference) -> String {
        let mut s = format!(
            "{:<46} {:>14} {:<17} {:>12} {:>8}\n",
            "metric", "value", "unit", "erlang pg", "x pg"
        );
        for m in &self.metrics {
            let (pg, better) = match reference.get(&m.key) {
                Some(r) => (fmt_value(r), fmt_factor(better_factor(m.value, r, m.unit))),
                None => ("-".to_owned(), "-".to_owned()),
            };
            s.push_str(&format!(
                "{:<46} {:>14} {:<17} {:>12} {:>8}\n",
                m.key,
                fmt_value(m.value),
                m.unit,
                pg,
                better
            ));
        }
        for (unit, why) in &self.failed {
            s.push_str(&format!("{unit:<46} FAILED: {why}\n"));
        }
        s
    }
}

/// Writes `json` (one line) to `path`, creating its directory.
pub fn write_json(path: &Path, json: &Value) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("--json-out {}", path.display()))?;
    }
    std::fs::write(path, format!("{json}\n"))
        .with_context(|| format!("--json-out {}", path.display()))
}

/// Whether a larger value of `unit` is better (rates) or worse (times, sizes).
pub fn higher_is_better(unit: &str) -> bool {
    unit.ends_with("/s")
}

/// How many times better `value` is than `reference`: above 1 means meshreg is better. `NaN`
/// for counts (samples, trials), which have no better direction.
pub fn better_factor(value: f64, reference: f64, unit: &str) -> f64 {
    if higher_is_better(unit) {
        value / reference
    } else if matches!(unit, "us" | "ms" | "bytes/membership") {
        reference / value
    } else {
        f64::NAN
    }
}

fn fmt_factor(f: f64) -> String {
    if !f.is_finite() {
        "-".into()
    } else if f >= 100.0 {
        format!("{f:.0}")
    } else {
        format!("{f:.2}")
    }
}

/// Formats like the harness: integers above 100, two decimals above 1, three below.
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "nan".into()
    } else if v.abs() >= 100.0 {
        format!("{}", v.round() as i64)
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The Erlang anchor figures by key (without `pg.`).
#[derive(Debug, Default)]
pub struct Reference {
    values: HashMap<String, f64>,
    /// Where they came from, for the table header; `None` when no file was found.
    pub source: Option<String>,
}

impl Reference {
    /// Reads a harness results file (`name value unit` lines, `#` comments). A missing file
    /// gives an empty reference: the table then shows `-`.
    pub fn load(path: &Path) -> Self {
        Self::load_with(path, "pg.")
    }

    /// Like [`Self::load`] for the metrics named `prefix...`, keyed without the prefix.
    pub fn load_with(path: &Path, prefix: &str) -> Self {
        match std::fs::read_to_string(path) {
            Ok(text) => Self {
                values: Self::parse(&text, prefix),
                source: Some(path.display().to_string()),
            },
            Err(_) => Self::default(),
        }
    }

    fn parse(text: &str, prefix: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let name = it.next()?;
                let value = it.next()?.parse::<f64>().ok()?;
                let key = name.strip_prefix(prefix)?;
                Some((key.to_owned(), value))
            })
            .collect()
    }

    /// The reference figure for `key`, if the harness has one.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
}

/// The harness's percentile: the element at rank `ceil(p * n / 100)` (1-based, clamped) of
/// an ascending list; `NaN` for an empty one.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let rank = ((p * n as f64 / 100.0).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

/// The harness's median of a few repetitions: the element at `(n + 1) / 2` (1-based) of the
/// sorted values, i.e. the lower median.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len().div_ceil(2) - 1]
}

/// Combines repetitions key by key: the median of each metric over the runs (keys and order
/// from the first run); keys listed in `use_max` take the largest value instead.
pub fn combine(runs: &[Vec<Metric>], use_max: &[&str]) -> Vec<Metric> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|m| {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.iter().find(|x| x.key == m.key).map(|x| x.value))
                .collect();
            let value = if use_max.iter().any(|k| m.key.contains(k)) {
                values.iter().copied().fold(f64::NAN, f64::max)
            } else {
                median(&values)
            };
            Metric {
                key: m.key.clone(),
                value,
                unit: m.unit,
            }
        })
        .collect()
}

/// The harness's size names: `10000` -> `10k`, `1500` -> `1500`.
pub fn kname(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_harness_rank_rule() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(pct(&v, 50.0), 500.0);
        assert_eq!(pct(&v, 99.0), 990.0);
        assert_eq!(pct(&[7.0], 99.0), 7.0);
        assert!(pct(&[], 50.0).is_nan());
    }

    #[test]
    fn the_median_of_an_even_count_is_the_lower_one() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
    }

    #[test]
    fn size_names_match_the_harness() {
        assert_eq!(kname(10_000), "10k");
        assert_eq!(kname(100_000), "100k");
        assert_eq!(kname(100), "100");
        assert_eq!(kname(1500), "1500");
    }

    #[test]
    fn reference_lines_lose_their_pg_prefix_and_comments_are_skipped() {
        let text = "# metric value unit\npg.single.join_seq.1g_10k  8745  ops/s\n\
             pg.bulk.x.verified ok -\nglobal.k1.register_seq 3033 ops/s\n";
        let r = Reference::parse(text, "pg.");
        assert_eq!(r.get("single.join_seq.1g_10k"), Some(&8745.0));
        assert!(!r.contains_key("bulk.x.verified"));
        assert_eq!(r.len(), 1);
        let g = Reference::parse(text, "global.");
        assert_eq!(g.get("k1.register_seq"), Some(&3033.0));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn the_factor_is_above_one_when_meshreg_is_better_in_either_direction() {
        assert_eq!(better_factor(20.0, 10.0, "ops/s"), 2.0);
        assert_eq!(better_factor(5.0, 10.0, "us"), 2.0);
        assert!(better_factor(5.0, 10.0, "joins").is_nan());
    }

    #[test]
    fn repetitions_combine_by_median_or_max_per_key() {
        let run = |a: f64, b: f64| {
            vec![
                Metric {
                    key: "x.rate".into(),
                    value: a,
                    unit: "ops/s",
                },
                Metric {
                    key: "x.mem_rss".into(),
                    value: b,
                    unit: "bytes/membership",
                },
            ]
        };
        let c = combine(&[run(1.0, 5.0), run(3.0, 9.0), run(2.0, 1.0)], &["mem_rss"]);
        assert_eq!(c[0].value, 2.0);
        assert_eq!(c[1].value, 9.0);
    }

    #[test]
    fn json_is_flat_with_backend_and_processes() {
        let mut r = Report::default();
        r.extend(vec![Metric {
            key: "single.join_seq.1g_10k".into(),
            value: 5.0,
            unit: "ops/s",
        }]);
        let j = r.to_json("gossip", true);
        assert_eq!(j["single.join_seq.1g_10k"], 5.0);
        assert_eq!(j["backend"], "gossip");
        assert_eq!(j["processes"], true);
    }
}
