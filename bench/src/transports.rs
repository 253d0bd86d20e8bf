//! `transports`: the same fanout over WebSocket and over SSE side by side, from the
//! `fanout --json` lines of `bench/sse-fanout.sh`.
//!
//! Runs are grouped by label (the scenario) and `transport`. The k-th run of a transport in a
//! group belongs to round k: the script runs the two transports of a scenario one after the other
//! in each round, on fresh servers, so each ratio is taken between runs made a minute apart; the
//! table shows every round's SSE / WebSocket ratio and their median beside each transport's
//! medians.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde_json::Value;

use crate::fanout::Transport;
use crate::stats::median;
use crate::summary::{fmt, group, num, read_report_files};

#[derive(clap::Args, Debug, Clone)]
pub struct TransportsArgs {
    /// Files holding one JSON report per line (other lines are skipped); none or `-` reads stdin
    pub files: Vec<PathBuf>,
}

type Figure = (&'static str, fn(&Value) -> Option<f64>);

/// Out of order + unexpected + connections cut + error frames, and lost, duplicated: all 0 in a
/// good run.
fn problems(v: &Value) -> Option<f64> {
    let sum = |ptr: &str| -> Option<f64> {
        Some(
            v.pointer(ptr)?
                .as_object()?
                .values()
                .filter_map(Value::as_f64)
                .sum(),
        )
    };
    Some(
        num(v, "/lost")?
            + num(v, "/duplicates")?
            + num(v, "/outOfOrder")?
            + num(v, "/unexpected")?
            + sum("/socketsClosed")?
            + sum("/errorFrames")?,
    )
}

static FIGURES: &[Figure] = &[
    ("deliveries/s", |v| num(v, "/deliveriesPerSec")),
    ("server CPU µs/delivery", |v| {
        num(v, "/serverCpuUsPerDelivery")
    }),
    ("latency p50 ms", |v| num(v, "/latency/p50Ms")),
    ("latency p99 ms", |v| num(v, "/latency/p99Ms")),
    // Stamped (paced) runs only: the kernel's arrival, without the generator's read queue.
    ("arrival p50 ms", |v| num(v, "/arrival/p50Ms")),
    ("arrival p99 ms", |v| num(v, "/arrival/p99Ms")),
    ("server RSS KiB/connection", |v| {
        num(v, "/serverRssPerSocketKib")
    }),
    ("server CPU µs per connect", |v| {
        num(v, "/connectCpuUsPerSocket")
    }),
    ("generator CPU % of window", |v| {
        Some(100.0 * num(v, "/generatorCpuSecs")? / num(v, "/windowSecs")?)
    }),
    ("lost + dup + other problems", problems),
];

/// Figures of a connect-only run (`connect`): no deliveries.
static CONNECT_FIGURES: &[Figure] = &[
    ("server RSS KiB/connection", |v| {
        num(v, "/serverRssPerSocketKib")
    }),
    ("server CPU µs per connect", |v| {
        num(v, "/connectCpuUsPerSocket")
    }),
    ("connect s (all)", |v| num(v, "/connectSecs")),
];

fn transport_of(r: &Value) -> Transport {
    r.get("transport")
        .cloned()
        .and_then(|k| serde_json::from_value(k).ok())
        .unwrap_or_default()
}

/// Per round, `a / b` (`None` where a figure is missing or b is 0).
fn ratios(a: &[Option<f64>], b: &[Option<f64>]) -> Vec<Option<f64>> {
    a.iter()
        .zip(b)
        .map(|(a, b)| Some((*a)? / (*b).filter(|b| *b != 0.0)?))
        .collect()
}

pub fn run(args: &TransportsArgs) -> Result<()> {
    let reports = read_report_files(&args.files, None)?;
    if reports.is_empty() {
        bail!("no JSON reports found");
    }
    println!(
        "| scenario | figure | WebSocket | SSE | SSE / WebSocket per round | SSE / WebSocket (median) |"
    );
    println!("|---|---|---|---|---|---|");
    for (scenario, runs) in group(reports) {
        let of = |t: Transport| -> Vec<&Value> {
            runs.iter().filter(|r| transport_of(r) == t).collect()
        };
        let (ws, sse) = (of(Transport::Websocket), of(Transport::Sse));
        let connect_only = runs
            .first()
            .and_then(|r| r.get("events"))
            .and_then(Value::as_u64)
            == Some(0);
        let figures = if connect_only {
            CONNECT_FIGURES
        } else {
            FIGURES
        };
        for (name, f) in figures {
            let values =
                |runs: &[&Value]| -> Vec<Option<f64>> { runs.iter().map(|r| f(r)).collect() };
            let med = |v: &[Option<f64>]| median(&v.iter().flatten().copied().collect::<Vec<_>>());
            let (a, b) = (values(&ws), values(&sse));
            if a.iter().chain(&b).all(Option::is_none) {
                continue; // e.g. arrival figures of unstamped runs
            }
            let rounds = ratios(&b, &a);
            println!(
                "| {scenario} | {name} | {} | {} | {} | {} |",
                fmt(med(&a)),
                fmt(med(&b)),
                rounds
                    .iter()
                    .map(|r| fmt(*r))
                    .collect::<Vec<_>>()
                    .join(" / "),
                fmt(med(&rounds)),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rounds_pair_the_kth_runs() {
        let a = [Some(2.0), Some(4.0), None];
        let b = [Some(1.0), Some(0.0), Some(3.0)];
        assert_eq!(ratios(&a, &b), vec![Some(2.0), None, None]);
        assert_eq!(ratios(&a, &[Some(1.0)]), vec![Some(2.0)]);
    }

    #[test]
    fn transports_default_to_websocket() {
        assert_eq!(transport_of(&json!({})), Transport::Websocket);
        assert_eq!(transport_of(&json!({"transport": "sse"})), Transport::Sse);
    }

    #[test]
    fn problems_add_up() {
        let r = json!({"lost": 1, "duplicates": 0, "outOfOrder": 2, "unexpected": 0,
                       "socketsClosed": {"eof": 3}, "errorFrames": {}});
        assert_eq!(problems(&r), Some(6.0));
    }
}
