//! `compare`: TaskForge, the Socket.IO peer and the bare-write floor side by side, from the
//! `fanout --json` lines of `bench/compare.sh`.
//!
//! Runs are grouped by label (the scenario) and `serverKind`. The k-th run of a kind in a group
//! belongs to round k: the script runs every kind of a scenario one after the other in each round,
//! so a ratio is taken between runs made minutes apart on the same machine, and the table shows
//! the median of the per-round ratios beside the median of each kind's figures.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::Value;

use crate::fanout::ServerKind;
use crate::stats::median;
use crate::summary::{fmt, group, num, read_report_files};

#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Files holding one JSON report per line (other lines are skipped); none or `-` reads stdin
    pub files: Vec<PathBuf>,
}

/// A figure compared across kinds: its name, where it is in a report, and the targets of
/// TaskForge's figure as fractions of the peer's / the floor's (lower is better for all of them).
struct Figure {
    name: &'static str,
    pointer: &'static str,
    vs_peer: Option<f64>,
    vs_floor: Option<f64>,
}

const fn fig(name: &'static str, pointer: &'static str) -> Figure {
    Figure {
        name,
        pointer,
        vs_peer: None,
        vs_floor: None,
    }
}

const CPU: &str = "/serverCpuUsPerDelivery";
const P99: &str = "/latency/p99Ms";

/// The figures shown for a scenario, with the targets of the performance issue where it sets one.
fn figures_of(scenario: &str) -> Vec<Figure> {
    let lost = fig("lost deliveries", "/lost");
    let rate = fig("deliveries/s", "/deliveriesPerSec");
    let p50 = fig("latency p50 ms", "/latency/p50Ms");
    let p99 = fig("latency p99 ms", P99);
    // The same deliveries stamped by the kernel on arrival, without the generator's read queue.
    let a50 = fig("arrival p50 ms", "/arrival/p50Ms");
    let a99 = fig("arrival p99 ms", "/arrival/p99Ms");
    let cpu = fig("server CPU µs/delivery", CPU);
    match scenario {
        "n1000-max" | "n10000-max" => vec![
            Figure {
                vs_peer: Some(1.0 / 3.0),
                vs_floor: Some(1.5),
                ..cpu
            },
            rate,
            p50,
            p99,
            lost,
        ],
        "n1000-paced" => vec![
            Figure {
                vs_peer: Some(1.0 / 3.0),
                ..p99
            },
            Figure {
                vs_peer: Some(1.0 / 3.0),
                ..a99
            },
            p50,
            a50,
            cpu,
            lost,
        ],
        "n10000-paced" => vec![
            Figure {
                vs_peer: Some(1.0 / 8.0),
                ..p99
            },
            Figure {
                vs_peer: Some(1.0 / 8.0),
                ..a99
            },
            p50,
            a50,
            cpu,
            lost,
        ],
        "n15000-idle" => vec![
            Figure {
                vs_peer: Some(1.0 / 3.0),
                ..fig("RSS KiB per idle socket", "/serverRssPerSocketKib")
            },
            fig("server CPU µs per connect", "/connectCpuUsPerSocket"),
            fig("connect s (all sockets)", "/connectSecs"),
        ],
        s if s.starts_with("c3-") => vec![
            Figure {
                vs_peer: Some(1.0 / 3.0),
                ..cpu
            },
            lost,
            rate,
            p99,
            fig(
                "Redis msgs/activity on team: channels",
                "/redis/teamMessagesPerActivity",
            ),
            fig("Redis commands/activity", "/redis/commandsPerActivity"),
        ],
        _ => vec![cpu, rate, p99, lost],
    }
}

fn kind_of(r: &Value) -> ServerKind {
    r.get("serverKind")
        .cloned()
        .and_then(|k| serde_json::from_value(k).ok())
        .unwrap_or_default()
}

/// The median of `a[k] / b[k]` over the rounds both have (`None` where a figure is missing or b is 0).
fn ratio(a: &[Option<f64>], b: &[Option<f64>]) -> Option<f64> {
    let rs: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(a, b)| Some((*a)? / (*b).filter(|b| *b != 0.0)?))
        .collect();
    median(&rs)
}

fn verdict(ratio: Option<f64>, target: Option<f64>) -> String {
    match (ratio, target) {
        (Some(r), Some(t)) => format!(
            "{} ≤ {} {}",
            fmt(Some(r)),
            fmt(Some(t)),
            if r <= t { "met" } else { "MISSED" }
        ),
        (r, None) => fmt(r),
        (None, Some(t)) => format!("- (target ≤ {})", fmt(Some(t))),
    }
}

pub fn run(args: &CompareArgs) -> Result<()> {
    let reports = read_report_files(&args.files, None)?;
    println!(
        "| scenario | figure | TaskForge | Socket.IO | floor | TaskForge / Socket.IO | TaskForge / floor | rounds |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (scenario, runs) in group(reports) {
        let of_kind = |kind: ServerKind| -> Vec<&Value> {
            runs.iter().filter(|r| kind_of(r) == kind).collect()
        };
        let (tf, sio, floor) = (
            of_kind(ServerKind::Taskforge),
            of_kind(ServerKind::Socketio),
            of_kind(ServerKind::Floor),
        );
        for f in figures_of(&scenario) {
            let values = |runs: &[&Value]| -> Vec<Option<f64>> {
                runs.iter().map(|r| num(r, f.pointer)).collect()
            };
            let med = |v: &[Option<f64>]| median(&v.iter().flatten().copied().collect::<Vec<_>>());
            let (a, b, c) = (values(&tf), values(&sio), values(&floor));
            println!(
                "| {scenario} | {} | {} | {} | {} | {} | {} | {}/{}/{} |",
                f.name,
                fmt(med(&a)),
                fmt(med(&b)),
                fmt(med(&c)),
                verdict(ratio(&a, &b), f.vs_peer),
                verdict(ratio(&a, &c), f.vs_floor),
                a.len(),
                b.len(),
                c.len(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_medians_of_rounds() {
        let a = [Some(1.0), Some(2.0), Some(9.0)];
        let b = [Some(4.0), Some(4.0), Some(3.0)];
        assert_eq!(ratio(&a, &b), Some(0.5));
        assert_eq!(ratio(&a, &[Some(0.0), None, Some(3.0)]), Some(3.0));
        assert_eq!(ratio(&a, &[]), None);
    }

    #[test]
    fn verdicts_say_met_or_missed() {
        assert!(verdict(Some(0.2), Some(1.0 / 3.0)).ends_with("met"));
        assert!(verdict(Some(0.5), Some(1.0 / 3.0)).ends_with("MISSED"));
        assert_eq!(verdict(Some(2.0), None), "2");
    }

    #[test]
    fn kinds_default_to_taskforge() {
        assert_eq!(kind_of(&serde_json::json!({})), ServerKind::Taskforge);
        assert_eq!(
            kind_of(&serde_json::json!({"serverKind": "socketio"})),
            ServerKind::Socketio
        );
    }
}
