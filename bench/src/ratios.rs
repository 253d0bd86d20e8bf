//! `ratios`: each variant of a benchmark against a base variant, from `writes --json` lines.
//!
//! Labels are `VARIANT/MODE` (or just `VARIANT`); a variant is compared with the base variant of
//! the same mode. Runs are paired by their `round` (by position when they have none): a script
//! runs every variant once per round, so a ratio is taken between runs made minutes apart on the
//! same machine, and the table shows the median of the per-round ratios beside each median.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde_json::Value;

use crate::stats::median;
use crate::summary::{fmt, group, num, read_report_files};

#[derive(clap::Args, Debug, Clone)]
pub struct RatiosArgs {
    /// Files holding one JSON report per line (other lines are skipped); none or `-` reads stdin
    pub files: Vec<PathBuf>,
    /// The variant the others are divided by (the part of the label before `/`)
    #[arg(long)]
    pub base: String,
}

fn split(label: &str) -> (&str, &str) {
    label.split_once('/').unwrap_or((label, ""))
}

/// The figure of each run, keyed by its round (its position when it has none).
fn by_round(runs: &[Value], pointer: &str) -> Vec<(u64, Option<f64>)> {
    runs.iter()
        .enumerate()
        .map(|(i, r)| {
            let round = r
                .get("round")
                .and_then(Value::as_u64)
                .unwrap_or(i as u64 + 1);
            (round, num(r, pointer))
        })
        .collect()
}

/// The median over the rounds both have of `a / b` (`None` where a figure is missing or b is 0).
fn paired_ratio(a: &[(u64, Option<f64>)], b: &[(u64, Option<f64>)]) -> Option<f64> {
    let rs: Vec<f64> = a
        .iter()
        .filter_map(|(round, x)| {
            let (_, y) = b.iter().find(|(r, _)| r == round)?;
            Some((*x)? / (*y).filter(|y| *y != 0.0)?)
        })
        .collect();
    median(&rs)
}

fn med(v: &[(u64, Option<f64>)]) -> Option<f64> {
    median(&v.iter().filter_map(|(_, x)| *x).collect::<Vec<_>>())
}

const FIGURES: &[(&str, &str)] = &[
    ("/throughput", "writes/s"),
    ("/latency/p50Ms", "p50 ms"),
    ("/latency/p99Ms", "p99 ms"),
    ("/serverCpuUsPerWrite", "server CPU µs/write"),
];

pub fn run(args: &RatiosArgs) -> Result<()> {
    let groups = group(read_report_files(&args.files, None)?);
    if groups.is_empty() {
        bail!("no JSON reports found");
    }
    let mut header = "| mode | variant | followers | runs |".to_string();
    let mut rule = "|---|---|---|---|".to_string();
    for (_, name) in FIGURES {
        header.push_str(&format!(" {name} | ÷ {} |", args.base));
        rule.push_str("---|---|");
    }
    header.push_str(" failed |");
    rule.push_str("---|");
    println!("{header}\n{rule}");
    for (label, runs) in &groups {
        let (variant, mode) = split(label);
        let base = groups
            .iter()
            .find(|(l, _)| split(l) == (args.base.as_str(), mode))
            .map(|(_, runs)| runs.as_slice())
            .unwrap_or_default();
        let followers = runs.first().and_then(|r| num(r, "/followers"));
        let mut line = format!(
            "| {} | {variant} | {} | {} |",
            if mode.is_empty() { "-" } else { mode },
            fmt(followers),
            runs.len()
        );
        for (pointer, _) in FIGURES {
            let a = by_round(runs, pointer);
            let b = by_round(base, pointer);
            line.push_str(&format!(
                " {} | {} |",
                fmt(med(&a)),
                fmt(paired_ratio(&a, &b))
            ));
        }
        let failed: f64 = runs
            .iter()
            .map(|r| {
                let sum = |p: &str| {
                    r.pointer(p)
                        .and_then(Value::as_object)
                        .map_or(0.0, |m| m.values().filter_map(Value::as_f64).sum())
                };
                sum("/non2xx") + sum("/errors") + num(r, "/unsent").unwrap_or(0.0)
            })
            .sum();
        line.push_str(&format!(" {} |", fmt(Some(failed))));
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ratios_pair_runs_by_round() {
        let a = by_round(
            &[
                json!({"round": 2, "throughput": 50.0}),
                json!({"round": 1, "throughput": 90.0}),
                json!({"round": 3, "throughput": 10.0}),
            ],
            "/throughput",
        );
        let b = by_round(
            &[
                json!({"round": 1, "throughput": 100.0}),
                json!({"round": 2, "throughput": 100.0}),
            ],
            "/throughput",
        );
        // Round 3 has no base run: only 0.5 and 0.9 count.
        assert_eq!(paired_ratio(&a, &b), Some(0.7));
        assert_eq!(med(&a), Some(50.0));
    }

    #[test]
    fn runs_without_rounds_pair_by_position() {
        let a = by_round(&[json!({"x": 2.0}), json!({"x": 6.0})], "/x");
        let b = by_round(&[json!({"x": 4.0}), json!({"x": 0.0})], "/x");
        assert_eq!(paired_ratio(&a, &b), Some(0.5));
    }

    #[test]
    fn labels_split_into_variant_and_mode() {
        assert_eq!(split("f10/max"), ("f10", "max"));
        assert_eq!(split("base"), ("base", ""));
    }
}
