//! The server under attack: a `taskforge serve` process of a given binary, on a fresh SQLite file
//! and a free loopback port, with its own default limits (every `TASKFORGE_*` variable of this
//! environment is removed; only `--server-env` adds some back).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct Server {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub stderr_path: PathBuf,
    /// How it ended, once it has
    exit: Option<String>,
}

/// The address of the `... listening on http://ADDR` line the server prints when ready.
pub fn parse_ready_line(stdout: &str) -> Option<SocketAddr> {
    stdout.lines().find_map(|l| {
        let rest = &l[l.find("listening on http://")? + "listening on http://".len()..];
        rest.split(|c: char| c.is_whitespace() || c == '/')
            .next()?
            .parse()
            .ok()
    })
}

/// `KEY=VALUE` of `--server-env`.
pub fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl Server {
    /// Starts `bin serve` with its files in `dir` (named after `name`) and waits (30 s at most)
    /// for its ready line.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        extra_env: &[(String, String)],
    ) -> Result<Server> {
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        let db = dir.join(format!("{name}.db"));
        let secret = format!(
            "abuse-{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut cmd = Command::new(bin);
        cmd.arg("serve");
        // The server's own defaults: nothing inherited may loosen (or tighten) its limits.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TASKFORGE_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("TASKFORGE_LISTEN", "127.0.0.1:0")
            .env(
                "TASKFORGE_DATABASE_URL",
                format!("sqlite://{}", db.display()),
            )
            .env("TASKFORGE_JWT_SECRET", secret);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout_path).context("creating the server's stdout file")?)
            .stderr(File::create(&stderr_path).context("creating the server's stderr file")?);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let mut server = Server {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr_path,
            exit: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
            if let Some(addr) = parse_ready_line(&out) {
                if !addr.ip().is_loopback() {
                    server.stop().await;
                    bail!("the server listens on {addr}, not on loopback");
                }
                server.addr = addr;
                return Ok(server);
            }
            if !server.alive() {
                bail!(
                    "the server exited before it was ready ({}); its stderr ends with:\n{}",
                    server.exit.as_deref().unwrap_or("?"),
                    server.stderr_tail(20)
                );
            }
            if Instant::now() > deadline {
                server.stop().await;
                bail!("the server printed no ready line within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process still runs (records how it ended otherwise).
    pub fn alive(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.exit = Some(status.to_string());
                false
            }
            Err(e) => {
                self.exit = Some(format!("wait failed: {e}"));
                false
            }
        }
    }

    /// How the process ended, if it has.
    pub fn exit(&self) -> Option<&str> {
        self.exit.as_deref()
    }

    /// SIGTERM, then SIGKILL after 15 s (the server drains for up to 10 s).
    pub async fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: kill only sends a signal to our own child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last `n` lines of its stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// WARN and ERROR lines of its log so far, and the first few of them.
    pub fn warnings(&self) -> (u64, Vec<String>) {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let mut n = 0;
        let mut first = Vec::new();
        for l in text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        {
            n += 1;
            if first.len() < 3 {
                first.push(super::net::truncate(l, 300).to_owned());
            }
        }
        (n, first)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Never leave a server behind (an error path skipped `stop`).
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_ready_line() {
        let out = "some banner\ntaskforge listening on http://127.0.0.1:43121\n";
        assert_eq!(
            parse_ready_line(out),
            Some("127.0.0.1:43121".parse().expect("addr"))
        );
        assert_eq!(
            parse_ready_line("taskforge listening on http://127.0.0.1:80/ (dev)"),
            Some("127.0.0.1:80".parse().expect("addr"))
        );
        assert_eq!(parse_ready_line("starting\n"), None);
        assert_eq!(parse_ready_line("listening on http://nonsense"), None);
    }

    #[test]
    fn env_pairs() {
        assert_eq!(
            parse_env_pair("TASKFORGE_LOG=warn"),
            Ok(("TASKFORGE_LOG".into(), "warn".into()))
        );
        assert_eq!(parse_env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env_pair("novalue").is_err());
        assert!(parse_env_pair("=x").is_err());
    }
}
