//! Where `taskforge login` keeps the session: `$XDG_CONFIG_HOME/taskforge/credentials.json` (else
//! `~/.config/...`), one entry per server URL, readable by the user only (0600, in a 0700 dir).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    /// Server base URL -> session.
    sessions: BTreeMap<String, Session>,
    /// The server of the most recent `login`: where `tail` goes without `--url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latest: Option<String>,
}

pub fn path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?,
        )
        .join(".config"),
    };
    Ok(base.join("taskforge").join("credentials.json"))
}

pub fn key(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

fn read() -> anyhow::Result<File> {
    let p = path()?;
    // The file holds the sessions of every server: one we cannot read is reported and left
    // alone, never replaced by a file with only the new session.
    let unreadable = || {
        format!(
            "{} could not be read, so it was left as it is (it may hold other sessions); \
             repair or remove it, then try again",
            p.display()
        )
    };
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(unreadable),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
        Err(e) => Err(e).with_context(unreadable),
    }
}

/// Fails as `store` would if the credentials file exists but cannot be read: checked before
/// logging in, so that a session the file could not keep is not opened on the server.
pub fn check() -> anyhow::Result<()> {
    read().map(drop)
}

pub fn load(url: &str) -> anyhow::Result<Option<Session>> {
    Ok(read()?.sessions.remove(&key(url)))
}

/// The server of the most recent login and its session: the one saved login, or of several the
/// one logged in to last. `None` when nothing is saved.
pub fn latest() -> anyhow::Result<Option<(String, Session)>> {
    let mut file = read()?;
    if let Some(url) = file.latest.take()
        && let Some(session) = file.sessions.remove(&url)
    {
        return Ok(Some((url, session)));
    }
    match file.sessions.len() {
        0 => Ok(None),
        1 => Ok(file.sessions.pop_first()),
        _ => bail!(
            "sessions are saved for several servers ({}) and none was logged in to last: \
             pass --url, or run `taskforge login` again",
            file.sessions.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Writes the session of a login for `url`, which becomes the server `tail` uses by default;
/// the file is created with mode 0600 and replaced atomically.
pub fn store(url: &str, session: Session) -> anyhow::Result<PathBuf> {
    write(url, session, true)
}

/// Writes a refreshed session for `url`, leaving the default server as it is.
pub fn store_refreshed(url: &str, session: Session) -> anyhow::Result<PathBuf> {
    write(url, session, false)
}

fn write(url: &str, session: Session, latest: bool) -> anyhow::Result<PathBuf> {
    let p = path()?;
    let dir = p.parent().ok_or_else(|| anyhow!("no parent directory"))?;
    create_private_dir(dir)?;
    let mut file = read()?;
    file.sessions.insert(key(url), session);
    if latest {
        file.latest = Some(key(url));
    }
    let tmp = dir.join("credentials.json.tmp");
    write_private(&tmp, &serde_json::to_vec_pretty(&file)?)?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

#[cfg(unix)]
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
