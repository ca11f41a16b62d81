//! Owns what the benchmark writes: the median/min/max summary of repeated samples, the machine
//! description, and the markdown table and JSON under `target/bench/`.
use std::fmt::Write as _;

use serde_json::json;

/// Median, minimum and maximum of repeated measurements of one quantity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
}

impl Summary {
    /// The summary of `samples`; `None` when there are none. An even count's median is the
    /// mean of the two middle samples.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            samples: n,
        })
    }

    /// Every figure multiplied by `factor` (e.g. per-mapping time to N mappings).
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            median: self.median * factor,
            min: self.min * factor,
            max: self.max * factor,
            samples: self.samples,
        }
    }

    fn to_json(self) -> serde_json::Value {
        json!({ "median": self.median, "min": self.min, "max": self.max, "samples": self.samples })
    }
}

/// The machine and software the figures come from.
#[derive(Debug, Clone)]
pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub netpath_version: String,
}

impl Machine {
    /// The JSON object every report of `cargo xtask bench` writes under "machine".
    pub fn json(&self) -> serde_json::Value {
        json!({
            "date": self.date,
            "kernel": self.kernel,
            "cpu_model": self.cpu_model,
            "cpus": self.cpus,
            "netpath_version": self.netpath_version,
        })
    }
}

/// How the run was configured.
#[derive(Debug, Clone)]
pub struct Setup {
    pub mode: &'static str,
    pub mappings: u32,
    pub first_host_port: u16,
    pub repeats: usize,
    pub singles: u32,
    pub connect_seconds: f64,
    pub command: String,
}

/// One row of the results: a measured quantity and its summary.
#[derive(Debug, Clone)]
pub struct Row {
    /// Stable key for the JSON.
    pub key: &'static str,
    /// What a reader sees in the table.
    pub label: String,
    pub unit: &'static str,
    pub summary: Summary,
    /// How to read it (e.g. "extrapolated").
    pub note: String,
}

/// A target of the issue and whether this run met it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub key: &'static str,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

impl Verdict {
    /// The one line printed for it.
    pub fn line(&self) -> String {
        let word = if self.met { "MET" } else { "NOT MET" };
        format!("{word}: {} (measured: {})", self.target, self.measured)
    }
}

/// Everything one run found.
#[derive(Debug, Clone)]
pub struct Results {
    pub machine: Machine,
    pub setup: Setup,
    pub rows: Vec<Row>,
    /// Plain facts that are no repeated measurement (e.g. processes left running).
    pub facts: Vec<(&'static str, String, serde_json::Value)>,
    pub verdicts: Vec<Verdict>,
}

/// A figure with 3 significant digits at most, no exponent.
fn fmt_num(x: f64) -> String {
    let magnitude = x.abs();
    if magnitude >= 100.0 {
        format!("{x:.0}")
    } else if magnitude >= 10.0 {
        format!("{x:.1}")
    } else if magnitude >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

impl Results {
    /// The markdown report: where and how it ran, the table, the facts, the verdicts.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let s = &self.setup;
        let mut out = String::new();
        let _ = writeln!(out, "# netpath published-port scale benchmark\n");
        let _ = writeln!(
            out,
            "{} · Linux {} · {} ({} CPUs) · netpath {} · mode {} · N = {} mappings \
             (host ports {}-{} → {}:80) · {} repeats · connect loops of {} s\n",
            m.date,
            m.kernel,
            m.cpu_model,
            m.cpus,
            m.netpath_version,
            s.mode,
            s.mappings,
            s.first_host_port,
            u32::from(s.first_host_port) + s.mappings - 1,
            super::lab::ENDPOINT,
            s.repeats,
            s.connect_seconds,
        );
        let _ = writeln!(out, "Command: `{}`\n", s.command);
        let _ = writeln!(out, "| measurement | median | min | max | unit | note |");
        let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                row.label,
                fmt_num(row.summary.median),
                fmt_num(row.summary.min),
                fmt_num(row.summary.max),
                row.unit,
                row.note
            );
        }
        out.push('\n');
        for (_, label, value) in &self.facts {
            let shown = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "- {label}: {shown}");
        }
        out.push('\n');
        let _ = writeln!(out, "Targets (issues 5 and 6):\n");
        for verdict in &self.verdicts {
            let _ = writeln!(out, "- {}", verdict.line());
        }
        out
    }

    /// The same as JSON, keyed for scripts.
    pub fn json(&self) -> serde_json::Value {
        let m = &self.machine;
        let s = &self.setup;
        let rows: serde_json::Map<String, serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut v = r.summary.to_json();
                v["unit"] = json!(r.unit);
                v["label"] = json!(r.label);
                if !r.note.is_empty() {
                    v["note"] = json!(r.note);
                }
                (r.key.to_string(), v)
            })
            .collect();
        let facts: serde_json::Map<String, serde_json::Value> = self
            .facts
            .iter()
            .map(|(key, _, value)| (key.to_string(), value.clone()))
            .collect();
        let verdicts: serde_json::Map<String, serde_json::Value> = self
            .verdicts
            .iter()
            .map(|v| {
                (
                    v.key.to_string(),
                    json!({ "target": v.target, "measured": v.measured, "met": v.met }),
                )
            })
            .collect();
        json!({
            "benchmark": "published-port scale",
            "machine": m.json(),
            "setup": {
                "mode": s.mode,
                "mappings": s.mappings,
                "first_host_port": s.first_host_port,
                "repeats": s.repeats,
                "one_at_a_time_sample": s.singles,
                "connect_seconds": s.connect_seconds,
                "command": s.command,
            },
            "results": rows,
            "facts": facts,
            "verdicts": verdicts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_median_min_max() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).expect("three samples");
        assert_eq!((s.median, s.min, s.max, s.samples), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).expect("four samples");
        assert_eq!(s.median, 2.5);
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(s.scaled(2.0).max, 8.0);
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(fmt_num(12345.6), "12346");
        assert_eq!(fmt_num(45.67), "45.7");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(0.01234), "0.012");
    }

    #[test]
    fn markdown_and_json_carry_rows_and_verdicts() {
        let results = Results {
            machine: Machine {
                date: "2025-01-01T00:00:00Z".into(),
                kernel: "6.1".into(),
                cpu_model: "cpu".into(),
                cpus: 2,
                netpath_version: "abc".into(),
            },
            setup: Setup {
                mode: "quick",
                mappings: 10,
                first_host_port: 20000,
                repeats: 3,
                singles: 5,
                connect_seconds: 1.0,
                command: "cargo xtask bench --quick".into(),
            },
            rows: vec![Row {
                key: "batch_publish_s",
                label: "publish -f".into(),
                unit: "s",
                summary: Summary::of(&[0.5, 0.4, 0.6]).expect("samples"),
                note: String::new(),
            }],
            facts: vec![("leftover_processes", "left running".into(), json!(0))],
            verdicts: vec![Verdict {
                key: "batch_under_1s",
                target: "fast".into(),
                measured: "0.5 s".into(),
                met: true,
            }],
        };
        let md = results.markdown();
        assert!(
            md.contains("| publish -f | 0.500 | 0.400 | 0.600 | s |"),
            "{md}"
        );
        assert!(md.contains("host ports 20000-20009"), "{md}");
        assert!(md.contains("- MET: fast (measured: 0.5 s)"), "{md}");
        assert!(md.contains("- left running: 0"), "{md}");
        let js = results.json();
        assert_eq!(js["results"]["batch_publish_s"]["median"], json!(0.5));
        assert_eq!(js["verdicts"]["batch_under_1s"]["met"], json!(true));
        assert_eq!(js["facts"]["leftover_processes"], json!(0));
    }
}
