//! The table: one row per attack (or the medians of several runs of it), as a Markdown table
//! whose columns are padded so that it also reads in a terminal.

use std::collections::BTreeMap;

use super::{AbuseReport, Attack};
use crate::stats::median;

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    pub attack: String,
    pub runs: usize,
    pub worst_http_ms: Option<f64>,
    pub worst_op: Option<String>,
    pub baseline_ms: Option<f64>,
    /// Normal requests without a 2xx answer
    pub failed: Option<f64>,
    pub delivery_ms: Option<f64>,
    pub lost_live: Option<f64>,
    pub rss_before_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
    pub rss_growth_mib: Option<f64>,
    pub rss_after_mib: Option<f64>,
    /// Attacking sockets cut / held
    pub cut: Option<(f64, f64)>,
    pub first_cut_secs: Option<f64>,
    pub open_after_45s: Option<f64>,
    /// Committed tasks lost (the worst run); `None` when a check could not be made
    pub committed_lost: Option<u64>,
    pub notes: String,
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What else a reader needs to know about one run of an attack.
pub fn notes(r: &AbuseReport) -> String {
    let mut n = Vec::new();
    if let Some(why) = &r.aborted {
        n.push(format!("ABORTED: {why}"));
    }
    if !r.server_survived {
        n.push(format!(
            "SERVER DIED ({})",
            r.server_exit.as_deref().unwrap_or("?")
        ));
    }
    if let Some(e) = &r.committed.error {
        n.push(format!("check failed: {e}"));
    }
    if r.normal.login.count > 0
        && (r.normal.login_refused > 0 || r.attack == Attack::PasswordGuessing)
    {
        n.push(format!(
            "user's own log-ins refused (429) {}/{}",
            r.normal.login_refused, r.normal.login.count
        ));
    }
    if !r.normal.ws_cuts.is_empty() {
        n.push(format!(
            "user's socket ended: {}",
            counts(&r.normal.ws_cuts)
        ));
    }
    if let Some(s) = &r.seed {
        n.push(format!(
            "seed {} activities, {:.1} MB of descriptions",
            s.activities, s.description_mb
        ));
    }
    let t = &r.traffic;
    if t.requests > 0 {
        n.push(format!(
            "attack: {} requests ({:.0}/s) {}{}",
            t.requests,
            t.requests as f64 / r.attack_secs.max(0.001),
            counts(&t.statuses),
            if t.errors.is_empty() {
                String::new()
            } else {
                format!(" errors {}", counts(&t.errors))
            }
        ));
    } else if !t.errors.is_empty() {
        n.push(format!("attack errors {}", counts(&t.errors)));
    }
    if !t.cut_how.is_empty() {
        n.push(format!("cut by {}", counts(&t.cut_how)));
    }
    if t.reconnects > 0 {
        n.push(format!(
            "{} attacking connections reopened (closed by the server or failed)",
            t.reconnects
        ));
    }
    n.extend(t.notes.iter().cloned());
    n.join("; ")
}

pub fn row(r: &AbuseReport) -> Row {
    Row {
        attack: r.attack.name().to_owned(),
        runs: 1,
        worst_http_ms: r.normal.worst_ms,
        worst_op: r.normal.worst_op.clone(),
        baseline_ms: r.normal.baseline_worst_ms,
        failed: Some(r.normal.failed as f64),
        delivery_ms: r.normal.delivery.max_ms,
        lost_live: Some(r.normal.delivery.lost as f64),
        rss_before_mib: mib(r.rss_before_kib),
        rss_peak_mib: mib(r.rss_peak_kib),
        rss_growth_mib: r.rss_growth_kib.map(|g| g as f64 / 1024.0),
        rss_after_mib: mib(r.rss_after_kib),
        cut: r
            .traffic
            .held
            .map(|h| (r.traffic.cut.unwrap_or(0) as f64, h as f64)),
        first_cut_secs: r.traffic.first_cut_secs,
        open_after_45s: r.traffic.open_after_45s.map(|n| n as f64),
        committed_lost: r.committed.error.is_none().then_some(r.committed.lost),
        notes: notes(r),
    }
}

fn med(xs: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    median(&xs.flatten().collect::<Vec<_>>())
}

/// One row per attack (in the order of `Attack::ALL`): medians over its runs; committed losses
/// are the worst run's, and unknown when any run's check failed.
pub fn median_rows(reports: &[AbuseReport]) -> Vec<Row> {
    let mut rows = Vec::new();
    for attack in Attack::ALL {
        let rs: Vec<Row> = reports
            .iter()
            .filter(|r| r.attack == attack)
            .map(row)
            .collect();
        let Some(last) = rs.last() else {
            continue;
        };
        let worst_op = {
            let mut by: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &rs {
                if let Some(op) = &r.worst_op {
                    *by.entry(op.as_str()).or_default() += 1;
                }
            }
            by.into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(op, _)| op.to_owned())
        };
        let cut = match (
            med(rs.iter().map(|r| r.cut.map(|c| c.0))),
            med(rs.iter().map(|r| r.cut.map(|c| c.1))),
        ) {
            (Some(c), Some(h)) => Some((c, h)),
            _ => None,
        };
        let committed_lost = rs
            .iter()
            .map(|r| r.committed_lost)
            .collect::<Option<Vec<u64>>>()
            .and_then(|v| v.into_iter().max());
        rows.push(Row {
            attack: attack.name().to_owned(),
            runs: rs.len(),
            worst_http_ms: med(rs.iter().map(|r| r.worst_http_ms)),
            worst_op,
            baseline_ms: med(rs.iter().map(|r| r.baseline_ms)),
            failed: med(rs.iter().map(|r| r.failed)),
            delivery_ms: med(rs.iter().map(|r| r.delivery_ms)),
            lost_live: med(rs.iter().map(|r| r.lost_live)),
            rss_before_mib: med(rs.iter().map(|r| r.rss_before_mib)),
            rss_peak_mib: med(rs.iter().map(|r| r.rss_peak_mib)),
            rss_growth_mib: med(rs.iter().map(|r| r.rss_growth_mib)),
            rss_after_mib: med(rs.iter().map(|r| r.rss_after_mib)),
            cut,
            first_cut_secs: med(rs.iter().map(|r| r.first_cut_secs)),
            open_after_45s: med(rs.iter().map(|r| r.open_after_45s)),
            committed_lost,
            notes: if rs.len() > 1 && !last.notes.is_empty() {
                format!("last of {} runs: {}", rs.len(), last.notes)
            } else {
                last.notes.clone()
            },
        });
    }
    rows
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

fn cells(r: &Row) -> Vec<String> {
    let worst = match (&r.worst_http_ms, &r.worst_op) {
        (Some(ms), Some(op)) => format!("{ms:.0} ({op})"),
        (Some(ms), None) => format!("{ms:.0}"),
        _ => "-".to_owned(),
    };
    let rss = format!(
        "{} / {} ({}) / {}",
        num(r.rss_before_mib, 1),
        num(r.rss_peak_mib, 1),
        r.rss_growth_mib
            .map_or_else(|| "-".to_owned(), |g| format!("{g:+.1}")),
        num(r.rss_after_mib, 1),
    );
    let mut cut = match r.cut {
        Some((c, h)) => format!("{c:.0}/{h:.0}"),
        None => "n/a".to_owned(),
    };
    if let Some(s) = r.first_cut_secs {
        cut.push_str(&format!(", first at {s:.1} s"));
    }
    if let Some(n) = r.open_after_45s {
        cut.push_str(&format!(", {n:.0} open at 45 s"));
    }
    vec![
        r.attack.clone(),
        worst,
        num(r.baseline_ms, 0),
        num(r.failed, 0),
        num(r.delivery_ms, 0),
        num(r.lost_live, 0),
        rss,
        cut,
        r.committed_lost
            .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
        r.notes.clone(),
    ]
}

const HEADER: [&str; 10] = [
    "attack",
    "worst HTTP ms (which)",
    "before ms",
    "failed",
    "worst delivery ms",
    "lost live",
    "RSS MiB before / peak (growth) / after",
    "attackers cut",
    "committed lost",
    "notes",
];

/// The rows as a Markdown table, columns padded to their widest cell.
pub fn render(rows: &[Row]) -> String {
    let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
    let mut width: Vec<usize> = HEADER.iter().map(|h| h.chars().count()).collect();
    for cells in &body {
        for (w, c) in width.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&HEADER.map(str::to_owned));
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for cells in &body {
        out.push_str(&line(cells));
    }
    out
}

/// A one-line summary of an attack for the progress log.
pub fn one_line(r: &AbuseReport) -> String {
    let row = row(r);
    let c = cells(&row);
    format!(
        "worst HTTP {} ms, worst delivery {} ms, lost live {}, RSS {} MiB, cut {}, committed lost {}",
        c[1], c[4], c[5], c[6], c[7], c[8]
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::attacks::AttackTraffic;
    use super::super::normal::{DeliveryReport, NormalReport, OpReport};
    use super::super::{CommittedCheck, SeedReport};
    use super::*;

    /// A report with the figures that end up in the table.
    pub fn report(attack: Attack, worst_ms: f64, growth_kib: i64, cut: u64) -> AbuseReport {
        AbuseReport {
            scenario: "abuse".into(),
            attack,
            label: None,
            server_bin: "taskforge".into(),
            started_unix: 0,
            attack_secs: 25.0,
            aborted: None,
            normal: NormalReport {
                login: OpReport {
                    count: 4,
                    ok: 4,
                    ..OpReport::default()
                },
                worst_ms: Some(worst_ms),
                worst_op: Some("POST".into()),
                baseline_worst_ms: Some(9.0),
                delivery: DeliveryReport {
                    expected: 250,
                    delivered: 250,
                    max_ms: Some(worst_ms + 5.0),
                    ..DeliveryReport::default()
                },
                ..NormalReport::default()
            },
            rss_before_kib: Some(20 * 1024),
            rss_peak_kib: Some((20 * 1024 + growth_kib) as u64),
            rss_growth_kib: Some(growth_kib),
            rss_after_kib: Some(20 * 1024),
            server_cpu_secs: Some(1.0),
            traffic: AttackTraffic {
                requests: 500,
                statuses: [("401".to_owned(), 500)].into(),
                held: Some(12),
                cut: Some(cut),
                ..AttackTraffic::default()
            },
            committed: CommittedCheck {
                created: 270,
                in_log: 270,
                live: 270,
                ..CommittedCheck::default()
            },
            server_survived: true,
            server_exit: None,
            server_warnings: 0,
            server_first_warnings: Vec::new(),
            seed: None,
            setup_secs: 1.0,
        }
    }

    #[test]
    fn a_row_from_a_report() {
        let mut r = report(Attack::StalledReplay, 1234.4, 300 * 1024, 0);
        r.seed = Some(SeedReport {
            activities: 20_000,
            description_mb: 20.5,
            secs: 9.0,
        });
        let row = row(&r);
        assert_eq!(row.attack, "stalled-replay");
        assert_eq!(row.rss_growth_mib, Some(300.0));
        assert_eq!(row.cut, Some((0.0, 12.0)));
        assert_eq!(row.committed_lost, Some(0));
        assert!(row.notes.contains("seed 20000 activities"), "{}", row.notes);
        assert!(row.notes.contains("401×500"), "{}", row.notes);
        let c = cells(&row);
        assert_eq!(c[1], "1234 (POST)");
        assert_eq!(c[6], "20.0 / 320.0 (+300.0) / 20.0");
        assert_eq!(c[7], "0/12");
    }

    #[test]
    fn notes_flag_what_went_wrong() {
        let mut r = report(Attack::PasswordGuessing, 10.0, 0, 0);
        r.normal.login_refused = 3;
        r.server_survived = false;
        r.server_exit = Some("signal: 9 (SIGKILL)".into());
        r.committed.error = Some("reading the activity log: connect error".into());
        let row = row(&r);
        assert!(
            row.notes.contains("SERVER DIED (signal: 9"),
            "{}",
            row.notes
        );
        assert!(row.notes.contains("refused (429) 3/4"), "{}", row.notes);
        assert_eq!(row.committed_lost, None);
        assert_eq!(cells(&row)[8], "unknown");
        // Refusals are always shown for password-guessing, even none.
        let ok = row_notes(report(Attack::PasswordGuessing, 10.0, 0, 0));
        assert!(ok.contains("refused (429) 0/4"), "{ok}");
        assert!(!row_notes(report(Attack::MetricsFlood, 10.0, 0, 0)).contains("refused"));
    }

    fn row_notes(r: AbuseReport) -> String {
        row(&r).notes
    }

    #[test]
    fn medians_per_attack_in_a_fixed_order() {
        let mut lossy = report(Attack::SilentReaders, 30.0, 3 * 1024, 12);
        lossy.committed.lost = 2;
        let reports = vec![
            report(Attack::SilentReaders, 10.0, 1024, 10),
            report(Attack::StalledReplay, 500.0, 100 * 1024, 0),
            lossy,
            report(Attack::SilentReaders, 20.0, 2 * 1024, 11),
        ];
        let rows = median_rows(&reports);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].attack, "stalled-replay");
        assert_eq!(rows[0].runs, 1);
        let s = &rows[1];
        assert_eq!(s.attack, "silent-readers");
        assert_eq!(s.runs, 3);
        assert_eq!(s.worst_http_ms, Some(20.0));
        assert_eq!(s.rss_growth_mib, Some(2.0));
        assert_eq!(s.cut, Some((11.0, 12.0)));
        assert_eq!(s.committed_lost, Some(2), "the worst run");
        assert!(s.notes.starts_with("last of 3 runs: "), "{}", s.notes);
    }

    #[test]
    fn renders_an_aligned_markdown_table() {
        let rows = median_rows(&[
            report(Attack::StalledReplay, 1234.0, 300 * 1024, 0),
            report(Attack::MetricsFlood, 12.0, 0, 0),
        ]);
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("| attack "));
        assert!(lines[1].starts_with("|---"));
        assert!(lines[2].starts_with("| stalled-replay | 1234 (POST) "));
        // Every line has the same number of columns, and the padded ones line up.
        for l in lines.iter().filter(|l| !l.starts_with("|-")) {
            assert_eq!(l.matches(" | ").count(), HEADER.len() - 1, "{l}");
        }
        assert_eq!(lines[1].matches("-|-").count(), HEADER.len() - 1);
        let bar = |l: &str| {
            l.char_indices()
                .filter(|(_, c)| *c == '|')
                .nth(3)
                .map(|(i, _)| i)
        };
        assert_eq!(bar(lines[0]), bar(lines[2]));
        assert_eq!(bar(lines[2]), bar(lines[3]));
    }
}
