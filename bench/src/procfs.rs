//! CPU time and memory of a process, read from Linux `/proc`.

use std::fs;
use std::io;

/// Which process to look at.
#[derive(Clone, Copy, Debug)]
pub enum Proc {
    /// The benchmark process itself (all its threads).
    Current,
    Pid(u32),
}

impl Proc {
    fn dir(self) -> String {
        match self {
            Proc::Current => "/proc/self".to_string(),
            Proc::Pid(pid) => format!("/proc/{pid}"),
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User + system CPU seconds the process has used so far (`utime + stime` of `/proc/PID/stat`).
pub fn cpu_seconds(p: Proc) -> io::Result<f64> {
    let stat = fs::read_to_string(format!("{}/stat", p.dir()))?;
    parse_stat_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / clock_ticks_per_second())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected /proc/PID/stat format",
            )
        })
}

fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so utime (field 14) is fields[11] and stime (field 15) fields[12].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size now and its peak, in KiB (`VmRSS`, `VmHWM` of `/proc/PID/status`).
pub fn rss_kib(p: Proc) -> io::Result<(u64, u64)> {
    let status = fs::read_to_string(format!("{}/status", p.dir()))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no VmRSS/VmHWM in /proc/PID/status",
        )),
    }
}

/// Fields of `/proc/PID/status` that explain a change of RSS: `RssAnon` and `RssFile` (KiB) and
/// `Threads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryParts {
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub threads: u64,
}

pub fn memory_parts(p: Proc) -> io::Result<MemoryParts> {
    let status = fs::read_to_string(format!("{}/status", p.dir()))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    match (field("RssAnon:"), field("RssFile:"), field("Threads:")) {
        (Some(rss_anon_kib), Some(rss_file_kib), Some(threads)) => Ok(MemoryParts {
            rss_anon_kib,
            rss_file_kib,
            threads,
        }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no RssAnon/RssFile/Threads in /proc/PID/status",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat =
            "1234 (tokio rt (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn reads_own_process() {
        assert!(cpu_seconds(Proc::Current).unwrap() >= 0.0);
        let (rss, hwm) = rss_kib(Proc::Current).unwrap();
        assert!(rss > 0 && hwm >= rss);
        let parts = memory_parts(Proc::Current).unwrap();
        assert!(parts.rss_anon_kib > 0 && parts.threads >= 1);
    }
}
