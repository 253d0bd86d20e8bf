//! `summarize`: medians over repeated runs, read from the `--json` lines of `writes`, `fanout`
//! and `webhooks`.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::stats::median;

#[derive(clap::Args, Debug, Clone)]
pub struct SummarizeArgs {
    /// Files holding one JSON report per line (other lines are skipped); none or `-` reads stdin
    pub files: Vec<PathBuf>,
    /// Only print the median of this field, a JSON pointer such as /throughput or /latency/p99Ms
    #[arg(long)]
    pub field: Option<String>,
    /// Only consider runs with this label
    #[arg(long)]
    pub label: Option<String>,
    /// One JSON object line per label instead of the table
    #[arg(long)]
    pub json: bool,
}

type Column = (&'static str, fn(&Value) -> Option<f64>);

pub(crate) fn num(v: &Value, ptr: &str) -> Option<f64> {
    v.pointer(ptr).and_then(Value::as_f64)
}

fn sum_of(v: &Value, ptr: &str) -> Option<f64> {
    Some(
        v.pointer(ptr)?
            .as_object()?
            .values()
            .filter_map(Value::as_f64)
            .sum(),
    )
}

fn pct_of_window(v: &Value, ptr: &str) -> Option<f64> {
    Some(100.0 * num(v, ptr)? / num(v, "/durationSecs")?)
}

static COLUMNS: &[Column] = &[
    ("teams", |v| num(v, "/teams")),
    ("conc", |v| num(v, "/concurrency")),
    ("rate", |v| num(v, "/targetRate")),
    ("tasks/s", |v| num(v, "/throughput")),
    ("fail", |v| {
        Some(sum_of(v, "/non2xx")? + sum_of(v, "/errors")? + num(v, "/unsent")?)
    }),
    ("p50ms", |v| num(v, "/latency/p50Ms")),
    ("p90ms", |v| num(v, "/latency/p90Ms")),
    ("p99ms", |v| num(v, "/latency/p99Ms")),
    ("p99.9ms", |v| num(v, "/latency/p999Ms")),
    ("maxms", |v| num(v, "/latency/maxMs")),
    ("genCPU%", |v| pct_of_window(v, "/generatorCpuSecs")),
    ("srvCPU%", |v| pct_of_window(v, "/serverCpuSecs")),
    ("srvRSSMiB", |v| Some(num(v, "/serverPeakRssKib")? / 1024.0)),
];

/// Columns for `writes --write comment` reports.
static COMMENT_COLUMNS: &[Column] = &[
    ("members", |v| num(v, "/members")),
    ("follow", |v| num(v, "/followers")),
    ("conc", |v| num(v, "/concurrency")),
    ("rate", |v| num(v, "/targetRate")),
    ("cmts/s", |v| num(v, "/throughput")),
    ("fail", |v| {
        Some(sum_of(v, "/non2xx")? + sum_of(v, "/errors")? + num(v, "/unsent")?)
    }),
    ("p50ms", |v| num(v, "/latency/p50Ms")),
    ("p90ms", |v| num(v, "/latency/p90Ms")),
    ("p99ms", |v| num(v, "/latency/p99Ms")),
    ("p99.9ms", |v| num(v, "/latency/p999Ms")),
    ("maxms", |v| num(v, "/latency/maxMs")),
    ("genCPU%", |v| pct_of_window(v, "/generatorCpuSecs")),
    ("srvCPU%", |v| pct_of_window(v, "/serverCpuSecs")),
    ("srvµs/wr", |v| num(v, "/serverCpuUsPerWrite")),
    ("srvRSSMiB", |v| Some(num(v, "/serverPeakRssKib")? / 1024.0)),
];

/// Out of order + unexpected seqs + sockets cut + error frames of a `fanout` report.
fn other_problems(v: &Value) -> Option<f64> {
    Some(
        num(v, "/outOfOrder")?
            + num(v, "/unexpected")?
            + sum_of(v, "/socketsClosed")?
            + sum_of(v, "/errorFrames")?,
    )
}

/// Columns for `fanout` reports (`"scenario": "ws_fanout"`).
static FANOUT_COLUMNS: &[Column] = &[
    ("sockets", |v| num(v, "/sockets")),
    ("events", |v| num(v, "/created")),
    ("rate", |v| num(v, "/targetRate")),
    ("deliv/s", |v| num(v, "/deliveriesPerSec")),
    ("lost", |v| num(v, "/lost")),
    ("dup", |v| num(v, "/duplicates")),
    ("other", other_problems),
    ("p50ms", |v| num(v, "/latency/p50Ms")),
    ("p90ms", |v| num(v, "/latency/p90Ms")),
    ("p99ms", |v| num(v, "/latency/p99Ms")),
    ("p99.9ms", |v| num(v, "/latency/p999Ms")),
    ("maxms", |v| num(v, "/latency/maxMs")),
    ("arr99ms", |v| num(v, "/arrival/p99Ms")),
    ("genCPUs", |v| num(v, "/generatorCpuSecs")),
    ("srvCPUs", |v| num(v, "/serverCpuSecs")),
    ("srvµs/dl", |v| num(v, "/serverCpuUsPerDelivery")),
    ("KiB/sock", |v| num(v, "/serverRssPerSocketKib")),
    ("srvRSSMiB", |v| Some(num(v, "/serverPeakRssKib")? / 1024.0)),
];

/// Columns for `fanout` reports of several instances or with `--redis` (the scaled deployment).
static CLUSTER_COLUMNS: &[Column] = &[
    ("sockets", |v| num(v, "/sockets")),
    ("inst", |v| Some(v.get("urls")?.as_array()?.len() as f64)),
    ("events", |v| num(v, "/created")),
    ("rate", |v| num(v, "/targetRate")),
    ("deliv/s", |v| num(v, "/deliveriesPerSec")),
    ("lost", |v| num(v, "/lost")),
    ("dup", |v| num(v, "/duplicates")),
    ("other", other_problems),
    ("p50ms", |v| num(v, "/latency/p50Ms")),
    ("p99ms", |v| num(v, "/latency/p99Ms")),
    ("p99.9ms", |v| num(v, "/latency/p999Ms")),
    ("maxms", |v| num(v, "/latency/maxMs")),
    ("genCPUs", |v| num(v, "/generatorCpuSecs")),
    ("srvCPUs", |v| num(v, "/serverCpuSecs")),
    ("srvµs/dl", |v| num(v, "/serverCpuUsPerDelivery")),
    ("team/act", |v| num(v, "/redis/teamMessagesPerActivity")),
    ("user/act", |v| num(v, "/redis/userMessagesPerActivity")),
    ("rcmd/act", |v| num(v, "/redis/commandsPerActivity")),
    ("rµs/act", |v| num(v, "/redis/cpuUsPerActivity")),
    ("KiB/sock", |v| num(v, "/serverRssPerSocketKib")),
    ("srvRSSMiB", |v| Some(num(v, "/serverPeakRssKib")? / 1024.0)),
];

/// Columns for `webhooks --mode drain` reports.
static WEBHOOK_DRAIN_COLUMNS: &[Column] = &[
    ("tasks", |v| num(v, "/created")),
    ("wr/s", |v| num(v, "/writePerSec")),
    ("pickupms", |v| num(v, "/pickupMs")),
    ("drains", |v| num(v, "/drainSecs")),
    ("deliv/s", |v| num(v, "/deliveriesPerSec")),
    ("dl/s1st", |v| num(v, "/deliveriesPerSecFromFirst")),
    ("srvµs/dl", |v| num(v, "/serverCpuUsPerDelivery")),
    ("lost", |v| num(v, "/lost")),
    ("dup", |v| num(v, "/duplicates")),
    ("ooo", |v| num(v, "/outOfOrder")),
    ("genCPUs", |v| num(v, "/generatorCpuSecs")),
];

/// Columns for `webhooks --mode lag` reports.
static WEBHOOK_LAG_COLUMNS: &[Column] = &[
    ("rate", |v| num(v, "/targetRate")),
    ("tasks", |v| num(v, "/created")),
    ("fail", |v| Some(sum_of(v, "/writeFailures")? + 0.0)),
    ("lag50ms", |v| num(v, "/lag/p50Ms")),
    ("lag90ms", |v| num(v, "/lag/p90Ms")),
    ("lag99ms", |v| num(v, "/lag/p99Ms")),
    ("lagmaxms", |v| num(v, "/lag/maxMs")),
    ("wr99ms", |v| num(v, "/writeLatency/p99Ms")),
    ("srvµs/tk", |v| num(v, "/serverCpuUsPerTask")),
    ("lost", |v| num(v, "/lost")),
    ("dup", |v| num(v, "/duplicates")),
    ("ooo", |v| num(v, "/outOfOrder")),
];

/// Columns for `webhooks --mode outage` reports.
static WEBHOOK_OUTAGE_COLUMNS: &[Column] = &[
    ("down", |v| num(v, "/downSecs")),
    ("rate", |v| num(v, "/targetRate")),
    ("backlog", |v| num(v, "/backlogAtRecovery")),
    ("metric", |v| num(v, "/backlogMetricAtRecovery")),
    ("fails", |v| num(v, "/failedAttempts")),
    ("waitms", |v| num(v, "/retryWaitMs")),
    ("gapms", |v| num(v, "/retryGapMs")),
    ("catchms", |v| num(v, "/catchUpMs")),
    ("drainms", |v| num(v, "/backlogDrainMs")),
    ("bl/s", |v| num(v, "/backlogPerSec")),
    ("lost", |v| num(v, "/lost")),
    ("dup", |v| num(v, "/duplicates")),
];

/// The columns for a group of runs, by the scenario of its first report.
fn columns_of(runs: &[Value]) -> &'static [Column] {
    let Some(first) = runs.first() else {
        return COLUMNS;
    };
    match first.get("scenario").and_then(Value::as_str) {
        Some("ws_fanout" | "ws_connect" | "sse_fanout" | "sse_connect") => {
            let instances = first
                .get("urls")
                .and_then(Value::as_array)
                .map_or(1, Vec::len);
            let redis = first.get("redis").is_some_and(|r| !r.is_null());
            if instances > 1 || redis {
                CLUSTER_COLUMNS
            } else {
                FANOUT_COLUMNS
            }
        }
        Some("webhooks") => match first.get("mode").and_then(Value::as_str) {
            Some("lag") => WEBHOOK_LAG_COLUMNS,
            Some("outage") => WEBHOOK_OUTAGE_COLUMNS,
            _ => WEBHOOK_DRAIN_COLUMNS,
        },
        _ if first.get("write").and_then(Value::as_str) == Some("comment") => COMMENT_COLUMNS,
        _ => COLUMNS,
    }
}

/// The JSON report lines of `files` (stdin when empty or `-`), only those labelled `label` if given.
pub(crate) fn read_report_files(files: &[PathBuf], label: Option<&str>) -> Result<Vec<Value>> {
    let mut readers: Vec<(String, Box<dyn Read>)> = Vec::new();
    if files.is_empty() {
        readers.push(("stdin".into(), Box::new(std::io::stdin())));
    }
    for f in files {
        if f.as_os_str() == "-" {
            readers.push(("stdin".into(), Box::new(std::io::stdin())));
        } else {
            let file =
                std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
            readers.push((f.display().to_string(), Box::new(file)));
        }
    }
    let mut out = Vec::new();
    for (name, r) in readers {
        for line in BufReader::new(r).lines() {
            let line = line.with_context(|| format!("reading {name}"))?;
            let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
                continue;
            };
            if !v.is_object() {
                continue;
            }
            if label.is_none() || label == v.get("label").and_then(Value::as_str) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Runs grouped by label, in order of first appearance.
pub(crate) fn group(reports: Vec<Value>) -> Vec<(String, Vec<Value>)> {
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for r in reports {
        let label = r
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string();
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, runs)) => runs.push(r),
            None => groups.push((label, vec![r])),
        }
    }
    groups
}

pub(crate) fn fmt(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if x.abs() >= 100.0 || x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

pub fn run(args: &SummarizeArgs) -> Result<()> {
    let reports = read_report_files(&args.files, args.label.as_deref())?;
    if reports.is_empty() {
        bail!(
            "no JSON reports found{}",
            args.label
                .as_ref()
                .map(|l| format!(" with label {l:?}"))
                .unwrap_or_default()
        );
    }
    if let Some(ptr) = &args.field {
        let values: Vec<f64> = reports.iter().filter_map(|r| num(r, ptr)).collect();
        match median(&values) {
            Some(m) => println!("{m}"),
            None => bail!("no numeric field {ptr} in the reports"),
        }
        return Ok(());
    }
    // Runs against the Socket.IO peer or the floor, or over SSE, get groups of their own.
    let reports = reports
        .into_iter()
        .map(|mut r| {
            let kind = r
                .get("serverKind")
                .and_then(Value::as_str)
                .filter(|k| *k != "taskforge")
                .or_else(|| r.get("transport").and_then(Value::as_str))
                .map(str::to_owned);
            if let (Some(kind), Some(obj)) = (kind.filter(|k| k != "websocket"), r.as_object_mut())
            {
                let label = obj
                    .get("label")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_owned();
                obj.insert("label".into(), json!(format!("{label}/{kind}")));
            }
            r
        })
        .collect();
    let groups = group(reports);
    if args.json {
        for (label, runs) in &groups {
            let mut medians = serde_json::Map::new();
            for (name, f) in columns_of(runs) {
                let vals: Vec<f64> = runs.iter().filter_map(f).collect();
                medians.insert((*name).into(), json!(median(&vals)));
            }
            println!(
                "{}",
                json!({"label": label, "runs": runs.len(), "median": medians})
            );
        }
        return Ok(());
    }
    let label_w = groups
        .iter()
        .map(|(l, _)| l.len())
        .max()
        .unwrap_or(5)
        .max(5);
    // One table per kind of scenario, in order of first appearance.
    let mut kinds: Vec<&'static [Column]> = Vec::new();
    for (_, runs) in &groups {
        let cols = columns_of(runs);
        if !kinds.iter().any(|k| std::ptr::eq(*k, cols)) {
            kinds.push(cols);
        }
    }
    for (n, cols) in kinds.into_iter().enumerate() {
        if n > 0 {
            println!();
        }
        let mut header = format!("{:<label_w$} {:>4}", "label", "runs");
        for (name, _) in cols {
            header.push_str(&format!(" {name:>9}"));
        }
        println!("{header}");
        for (label, runs) in groups
            .iter()
            .filter(|(_, runs)| std::ptr::eq(columns_of(runs), cols))
        {
            let mut line = format!("{label:<label_w$} {:>4}", runs.len());
            for (_, f) in cols {
                let vals: Vec<f64> = runs.iter().filter_map(f).collect();
                line.push_str(&format!(" {:>9}", fmt(median(&vals))));
            }
            println!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(label: &str, tput: f64, p99: f64) -> Value {
        json!({"label": label, "teams": 1, "concurrency": 32, "targetRate": null, "durationSecs": 10.0,
               "throughput": tput, "non2xx": {"500": 1}, "errors": {}, "unsent": 0,
               "latency": {"p50Ms": 1.0, "p90Ms": 2.0, "p99Ms": p99, "p999Ms": 4.0, "maxMs": 5.0},
               "generatorCpuSecs": 5.0, "serverCpuSecs": null})
    }

    #[test]
    fn groups_and_medians() {
        let g = group(vec![
            report("a", 10.0, 3.0),
            report("b", 1.0, 1.0),
            report("a", 30.0, 9.0),
            report("a", 20.0, 6.0),
        ]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, "a");
        let col = |name: &str| COLUMNS.iter().find(|c| c.0 == name).unwrap().1;
        let tput: Vec<f64> = g[0].1.iter().filter_map(col("tasks/s")).collect();
        assert_eq!(median(&tput), Some(20.0));
        let fail: Vec<f64> = g[0].1.iter().filter_map(col("fail")).collect();
        assert_eq!(median(&fail), Some(1.0));
        let cpu: Vec<f64> = g[0].1.iter().filter_map(col("genCPU%")).collect();
        assert_eq!(median(&cpu), Some(50.0));
        assert!(g[0].1.iter().filter_map(col("srvCPU%")).next().is_none());
    }

    #[test]
    fn fanout_reports_get_their_columns() {
        let r = json!({"scenario": "ws_fanout", "label": "f", "sockets": 10, "created": 5,
               "targetRate": null, "deliveriesPerSec": 1000.0, "lost": 0, "duplicates": 1,
               "outOfOrder": 0, "unexpected": 0, "socketsClosed": {"close 4008": 2}, "errorFrames": {},
               "latency": {"p50Ms": 1.0}, "arrival": {"p99Ms": 0.5}, "serverCpuUsPerDelivery": 3.5});
        let runs = vec![r];
        let cols = columns_of(&runs);
        assert!(std::ptr::eq(cols, FANOUT_COLUMNS));
        let col = |name: &str| cols.iter().find(|c| c.0 == name).unwrap().1;
        assert_eq!(col("other")(&runs[0]), Some(2.0));
        assert_eq!(col("dup")(&runs[0]), Some(1.0));
        assert_eq!(col("srvµs/dl")(&runs[0]), Some(3.5));
        assert_eq!(col("arr99ms")(&runs[0]), Some(0.5));
        assert!(std::ptr::eq(columns_of(&[json!({"label": "w"})]), COLUMNS));
        let comments = json!({"scenario": "http_writes", "write": "comment", "followers": 10});
        assert!(std::ptr::eq(columns_of(&[comments]), COMMENT_COLUMNS));
        let lag = json!({"scenario": "webhooks", "mode": "lag", "lag": {"p99Ms": 7.5}});
        assert!(std::ptr::eq(
            columns_of(std::slice::from_ref(&lag)),
            WEBHOOK_LAG_COLUMNS
        ));
        let col = |name: &str| WEBHOOK_LAG_COLUMNS.iter().find(|c| c.0 == name).unwrap().1;
        assert_eq!(col("lag99ms")(&lag), Some(7.5));
        let drain = json!({"scenario": "webhooks", "mode": "drain"});
        assert!(std::ptr::eq(columns_of(&[drain]), WEBHOOK_DRAIN_COLUMNS));
        let outage = json!({"scenario": "webhooks", "mode": "outage"});
        assert!(std::ptr::eq(columns_of(&[outage]), WEBHOOK_OUTAGE_COLUMNS));
    }

    #[test]
    fn cluster_reports_get_their_columns() {
        let r = json!({"scenario": "ws_fanout", "label": "c", "sockets": 30, "created": 10,
               "urls": ["http://a", "http://b", "http://c"], "outOfOrder": 0, "unexpected": 0,
               "socketsClosed": {}, "errorFrames": {"x": 1},
               "redis": {"teamMessagesPerActivity": 1.0, "userMessagesPerActivity": 0.0,
                         "commandsPerActivity": 4.5, "cpuUsPerActivity": 120.0}});
        let runs = vec![r];
        let cols = columns_of(&runs);
        assert!(std::ptr::eq(cols, CLUSTER_COLUMNS));
        let col = |name: &str| cols.iter().find(|c| c.0 == name).unwrap().1;
        assert_eq!(col("inst")(&runs[0]), Some(3.0));
        assert_eq!(col("other")(&runs[0]), Some(1.0));
        assert_eq!(col("team/act")(&runs[0]), Some(1.0));
        assert_eq!(col("rcmd/act")(&runs[0]), Some(4.5));
        assert_eq!(col("rµs/act")(&runs[0]), Some(120.0));
        let single = json!({"scenario": "ws_fanout", "urls": ["http://a"], "redis": null});
        assert!(std::ptr::eq(columns_of(&[single]), FANOUT_COLUMNS));
    }
}
