//! Results: one `RESULT` line per figure on stdout (tab-separated: label,
//! metric, direction, value), and the side-by-side table built from them.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Higher is better (rates).
    Higher,
    /// Lower is better (costs, latencies, memory).
    Lower,
    /// Context, not a score (for example the rate a latency was measured at).
    Info,
}

impl Better {
    fn symbol(self) -> &'static str {
        match self {
            Better::Higher => "+",
            Better::Lower => "-",
            Better::Info => "=",
        }
    }

    fn parse(s: &str) -> Option<Better> {
        match s {
            "+" => Some(Better::Higher),
            "-" => Some(Better::Lower),
            "=" => Some(Better::Info),
            _ => None,
        }
    }
}

/// One `RESULT` line.
pub fn result_line(label: &str, metric: &str, better: Better, value: f64) -> String {
    format!("RESULT\t{label}\t{metric}\t{}\t{value}", better.symbol())
}

/// The `p`-th percentile (0..=100) of sorted samples (nearest rank).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", v);
        // Thousands separators make the wide numbers readable.
        let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Builds a Markdown table from `RESULT` lines: one row per metric (in the
/// order first seen), one column per label in `columns`, then one column per
/// ratio `(a, b)`: value of `a` divided by value of `b`. A metric measured
/// several times for one label (repeated runs) shows the median, followed by
/// the range in brackets; ratios use the medians.
pub fn table(results: &str, columns: &[String], ratios: &[(String, String)]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut better: HashMap<String, Better> = HashMap::new();
    let mut runs: HashMap<(String, String), Vec<f64>> = HashMap::new();
    for line in results.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 5 || f[0] != "RESULT" {
            continue;
        }
        let (Some(b), Ok(v)) = (Better::parse(f[3]), f[4].parse::<f64>()) else {
            continue;
        };
        if !better.contains_key(f[2]) {
            order.push(f[2].to_owned());
            better.insert(f[2].to_owned(), b);
        }
        runs.entry((f[1].to_owned(), f[2].to_owned()))
            .or_default()
            .push(v);
    }
    let values: HashMap<(String, String), f64> =
        runs.iter().map(|(k, v)| (k.clone(), median(v))).collect();
    let mut out = String::new();
    let mut head = vec!["scenario: metric".to_owned(), "better".to_owned()];
    head.extend(columns.iter().cloned());
    head.extend(ratios.iter().map(|(a, b)| format!("{a} / {b}")));
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        head.iter()
            .enumerate()
            .map(|(i, _)| if i < 2 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for metric in &order {
        let b = better[metric];
        let mut row = vec![
            metric.clone(),
            match b {
                Better::Higher => "higher",
                Better::Lower => "lower",
                Better::Info => "",
            }
            .to_owned(),
        ];
        for c in columns {
            row.push(
                runs.get(&(c.clone(), metric.clone()))
                    .map(|v| cell(v))
                    .unwrap_or_else(|| "n/a".into()),
            );
        }
        for (a, c) in ratios {
            let va = values.get(&(a.clone(), metric.clone()));
            let vc = values.get(&(c.clone(), metric.clone()));
            row.push(match (va, vc, b) {
                (_, _, Better::Info) => String::new(),
                (Some(&x), Some(&y), _) if y != 0.0 => format!("{:.2}x", x / y),
                _ => "n/a".into(),
            });
        }
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

/// The median of some runs (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One run's value, or the median of several with their range.
fn cell(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() == 1 {
        fmt_value(v[0])
    } else {
        format!(
            "{} [{}-{}]",
            fmt_value(median(v)),
            fmt_value(lo),
            fmt_value(hi)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[], 99.0), 0);
    }

    #[test]
    fn table_rows_columns_and_ratios() {
        let lines = [
            result_line("a", "relay: msgs/s", Better::Higher, 200_000.0),
            result_line("b", "relay: msgs/s", Better::Higher, 50_000.0),
            result_line("a", "relay: rate", Better::Info, 5.0),
            "noise".to_owned(),
            result_line("b", "idle: KiB/session", Better::Lower, 40.0),
            result_line("a", "p99 µs", Better::Lower, 900.0),
            result_line("a", "p99 µs", Better::Lower, 100.0),
            result_line("a", "p99 µs", Better::Lower, 300.0),
            result_line("b", "p99 µs", Better::Lower, 600.0),
        ]
        .join("\n");
        let t = table(
            &lines,
            &["a".into(), "b".into(), "c".into()],
            &[("a".into(), "b".into())],
        );
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 6, "{t}");
        assert_eq!(
            rows[2],
            "| relay: msgs/s | higher | 200,000 | 50,000 | n/a | 4.00x |"
        );
        assert_eq!(rows[3], "| relay: rate |  | 5.00 | n/a | n/a |  |");
        assert_eq!(
            rows[4],
            "| idle: KiB/session | lower | n/a | 40.0 | n/a | n/a |"
        );
        // Repeated runs: the median, its range, and the ratio of medians.
        assert_eq!(
            rows[5],
            "| p99 µs | lower | 300 [100-900] | 600 | n/a | 0.50x |"
        );
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
