//! `taskforge import`: reads a CSV file or a Trello, Jira or GitHub-issues JSON export and sends
//! it to `POST /teams/{teamId}/tasks:batch`, batch after batch, with a progress line.
//!
//! Every row carries an import key made from the source (a Trello card's id, a Jira issue's key,
//! a GitHub issue's number, a CSV row's place and content), so running the same import again,
//! after an interruption or a failure, finds the rows already imported instead of doubling them.
//! Each batch is also sent with an `Idempotency-Key` (this run's id and the batch's hash), so a
//! retry after a lost answer gets the first answer; another run has other keys, so its answer
//! tells what that run found.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use taskforge::domain::import::{BATCH_COMMENTS_MAX, BATCH_TASKS_MAX, valid_import_key};
use taskforge::domain::model::date;
// Text longer than a task, comment or label may hold is cut rather than refusing the row.
use taskforge::domain::rules::{
    COMMENT_MAX, DESCRIPTION_MAX, LABEL_NAME_MAX, LABELS_PER_TASK, TITLE_MAX,
};

use super::remote::Remote;

/// A batch is also cut to keep its body under the server's default 1 MiB.
const BATCH_BYTES_MAX: usize = 900 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Trello,
    Jira,
    Github,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The team to import into.
    #[arg(long)]
    team: uuid::Uuid,
    /// The board the tasks go on (default: the team's default board).
    #[arg(long)]
    board: Option<uuid::Uuid>,
    /// The source's format (default: `csv` for a .csv file, else told by the JSON's shape).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Names the source in every row's import key (1 to 60 visible ASCII characters), so that two
    /// sources with the same ids (two CSV files numbered from 1, two Jira sites) stay apart.
    /// GitHub rows are keyed by their repository, read from the export unless this names it.
    #[arg(long, value_parser = parse_source)]
    source: Option<String>,
    /// Tasks per request (1 to 1000; a batch is also cut to stay under 900 KiB).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=BATCH_TASKS_MAX as i64))]
    batch: u16,
    /// The server (default: that of the most recent login).
    #[arg(long, env = "TASKFORGE_URL")]
    url: Option<String>,
    /// The file to import.
    file: PathBuf,
}

/// One task as read from the source, before it is matched to the team's members and labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub key: String,
    pub title: String,
    pub description: String,
    pub status: Option<&'static str>,
    pub priority: Option<&'static str>,
    pub assignee_email: Option<String>,
    pub due_date: Option<String>,
    pub labels: Vec<String>,
    pub comments: Vec<String>,
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let format = match args.format {
        Some(f) => f,
        None => detect(&args.file, &text)?,
    };
    let mut rows = parse(format, &text, args.source.as_deref())?;
    if rows.is_empty() {
        bail!("{} holds no tasks", args.file.display());
    }
    let mut remote = Remote::open(args.url.as_deref())?;
    let team = remote.get(&format!("/teams/{}", args.team)).await?;
    let board = match args.board {
        Some(b) => b.to_string(),
        None => team["defaultBoardId"]
            .as_str()
            .context("the team has no default board")?
            .to_owned(),
    };
    let members = member_emails(&mut remote, args.team).await?;
    let run = uuid::Uuid::new_v4();
    let labels = ensure_labels(&mut remote, run, args.team, &rows).await?;

    let total = rows.len();
    let mut progress = Progress::new(total);
    let mut unknown_assignees: HashMap<String, usize> = HashMap::new();
    for row in &mut rows {
        if row.comments.len() > BATCH_COMMENTS_MAX {
            eprintln!(
                "warning: {} has {} comments: the first {BATCH_COMMENTS_MAX} are imported",
                row.key,
                row.comments.len()
            );
            row.comments.truncate(BATCH_COMMENTS_MAX);
        }
    }
    let mut tasks: Vec<Value> = Vec::new();
    let mut comments = 0usize;
    let mut bytes = 0usize;
    for row in &rows {
        let task = task_json(row, &members, &labels, &mut unknown_assignees);
        let size = task.to_string().len();
        let full = tasks.len() == usize::from(args.batch)
            || comments + row.comments.len() > BATCH_COMMENTS_MAX
            || bytes + size > BATCH_BYTES_MAX;
        if full && !tasks.is_empty() {
            send(
                &mut remote,
                run,
                args.team,
                &board,
                std::mem::take(&mut tasks),
                &mut progress,
            )
            .await?;
            comments = 0;
            bytes = 0;
        }
        comments += row.comments.len();
        bytes += size;
        tasks.push(task);
    }
    if !tasks.is_empty() {
        send(&mut remote, run, args.team, &board, tasks, &mut progress).await?;
    }
    progress.finish();
    for (email, n) in unknown_assignees {
        eprintln!("warning: {email} is not a member of the team: {n} task(s) imported unassigned");
    }
    Ok(())
}

/// A task of the batch body: members by email, labels by name, over-long text cut.
fn task_json(
    row: &Row,
    members: &HashMap<String, String>,
    labels: &HashMap<String, String>,
    unknown: &mut HashMap<String, usize>,
) -> Value {
    let mut t = json!({
        "importKey": row.key,
        "title": cut(if row.title.trim().is_empty() { "(untitled)" } else { &row.title }, TITLE_MAX),
        "description": cut(&row.description, DESCRIPTION_MAX),
    });
    if let Some(s) = row.status {
        t["status"] = json!(s);
    }
    if let Some(p) = row.priority {
        t["priority"] = json!(p);
    }
    if let Some(d) = &row.due_date {
        t["dueDate"] = json!(d);
    }
    if let Some(email) = &row.assignee_email {
        match members.get(&email.to_lowercase()) {
            Some(id) => t["assigneeUserId"] = json!(id),
            None => *unknown.entry(email.clone()).or_default() += 1,
        }
    }
    let mut ids: Vec<&String> = row
        .labels
        .iter()
        .filter_map(|l| labels.get(&label_key(l)))
        .collect();
    ids.sort();
    ids.dedup();
    ids.truncate(LABELS_PER_TASK);
    if !ids.is_empty() {
        t["labelIds"] = json!(ids);
    }
    let comments: Vec<Value> = row
        .comments
        .iter()
        .filter(|c| !c.trim().is_empty())
        .map(|c| json!({ "body": cut(c, COMMENT_MAX) }))
        .collect();
    if !comments.is_empty() {
        t["comments"] = json!(comments);
    }
    t
}

/// Sends one batch; a lost answer, a timeout or a passing refusal (5xx, 429, 409) is retried
/// with the same body and key, so it is applied once.
async fn send(
    remote: &mut Remote,
    run: uuid::Uuid,
    team: uuid::Uuid,
    board: &str,
    tasks: Vec<Value>,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let n = tasks.len();
    let body = json!({ "boardId": board, "tasks": tasks });
    let bytes = serde_json::to_vec(&body).context("encoding a batch")?;
    let key = format!("import-{run}-{}", hex(&Sha256::digest(&bytes)[..16]));
    let answer = remote
        .post_keyed(&format!("/teams/{team}/tasks:batch"), bytes, &key, true)
        .await?;
    let items = answer["items"].as_array().map_or(&[][..], Vec::as_slice);
    if items.len() != n {
        bail!(
            "the server answered {} tasks for a batch of {n}",
            items.len()
        );
    }
    let created = items.iter().filter(|i| i["created"] == true).count();
    progress.add(created, n - created);
    Ok(())
}

/// The team's members, lower-case email to user id.
async fn member_emails(
    remote: &mut Remote,
    team: uuid::Uuid,
) -> anyhow::Result<HashMap<String, String>> {
    let members = remote.get_all(&format!("/teams/{team}/members")).await?;
    Ok(members
        .iter()
        .filter_map(|m| {
            let email = m["user"]["email"].as_str()?;
            let id = m["user"]["id"].as_str()?;
            Some((email.to_lowercase(), id.to_owned()))
        })
        .collect())
}

/// The team's labels by name (any case), with the ones the rows name and the team lacks created.
async fn ensure_labels(
    remote: &mut Remote,
    run: uuid::Uuid,
    team: uuid::Uuid,
    rows: &[Row],
) -> anyhow::Result<HashMap<String, String>> {
    let mut by_name: HashMap<String, String> = HashMap::new();
    let existing = remote.get_all(&format!("/teams/{team}/labels")).await?;
    for l in &existing {
        if let (Some(name), Some(id)) = (l["name"].as_str(), l["id"].as_str()) {
            by_name.insert(label_key(name), id.to_owned());
        }
    }
    let mut wanted: Vec<String> = Vec::new();
    for name in rows.iter().flat_map(|r| r.labels.iter()) {
        let key = label_key(name);
        if !key.is_empty()
            && !by_name.contains_key(&key)
            && !wanted.iter().any(|w| label_key(w) == key)
        {
            wanted.push(cut(name.trim(), LABEL_NAME_MAX));
        }
    }
    for name in wanted {
        let body = serde_json::to_vec(&json!({ "name": name, "color": color_of(&name) }))
            .context("encoding a label")?;
        let digest = Sha256::digest(label_key(&name).as_bytes());
        let key = format!("import-{run}-label-{}", hex(&digest[..16]));
        let label = remote
            .post_keyed(&format!("/teams/{team}/labels"), body, &key, false)
            .await
            .with_context(|| format!("creating the label {name:?}"))?;
        if let Some(id) = label["id"].as_str() {
            by_name.insert(label_key(&name), id.to_owned());
        }
    }
    Ok(by_name)
}

fn label_key(name: &str) -> String {
    cut(name.trim(), LABEL_NAME_MAX).to_lowercase()
}

/// A colour for a new label, the same for the same name.
fn color_of(name: &str) -> &'static str {
    const PALETTE: [&str; 8] = [
        "#e5484d", "#f76b15", "#ffc53d", "#46a758", "#12a594", "#0090ff", "#8e4ec6", "#8d8d8d",
    ];
    let h = Sha256::digest(name.to_lowercase().as_bytes());
    PALETTE[usize::from(h[0]) % PALETTE.len()]
}

fn cut(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts and shows the rows sent: one line rewritten on a terminal, a line per batch elsewhere.
struct Progress {
    total: usize,
    created: usize,
    found: usize,
    started: Instant,
    last: Instant,
    terminal: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            created: 0,
            found: 0,
            started: Instant::now(),
            last: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn add(&mut self, created: usize, found: usize) {
        self.created += created;
        self.found += found;
        if !self.terminal || self.last.elapsed() >= Duration::from_millis(200) {
            self.show();
            self.last = Instant::now();
        }
    }

    fn show(&self) {
        let done = self.created + self.found;
        let width = 30;
        let filled = (done * width)
            .checked_div(self.total)
            .unwrap_or(width)
            .min(width);
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "[{}{}] {done}/{} tasks ({} created, {} imported before) {rate:.0}/s",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.total,
            self.created,
            self.found,
        );
        if self.terminal {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        self.show();
        if self.terminal {
            eprintln!();
        }
        println!(
            "imported {} tasks: {} created, {} imported before, in {:.1} s",
            self.total,
            self.created,
            self.found,
            self.started.elapsed().as_secs_f64()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

/// The format of a file the user did not name: by extension, then by the JSON's shape.
fn detect(path: &std::path::Path, text: &str) -> anyhow::Result<Format> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        return Ok(Format::Csv);
    }
    let v: Value = serde_json::from_str(text)
        .context("not JSON, and not a .csv file: name the format with --format")?;
    if v.get("cards").is_some() {
        Ok(Format::Trello)
    } else if v.get("issues").is_some() {
        Ok(Format::Jira)
    } else if v.is_array() {
        Ok(Format::Github)
    } else {
        bail!("cannot tell the export's format: name it with --format")
    }
}

/// The rows of a source; `source` (see `--source`) goes into every key.
pub fn parse(format: Format, text: &str, source: Option<&str>) -> anyhow::Result<Vec<Row>> {
    let mut rows = match format {
        Format::Csv => parse_csv(text)?,
        Format::Trello => parse_trello(&json_of(text)?)?,
        Format::Jira => parse_jira(&json_of(text)?)?,
        Format::Github => parse_github(&json_of(text)?, source)?,
    };
    if let Some(source) = source
        && format != Format::Github
    {
        for row in &mut rows {
            if let Some((kind, id)) = row.key.split_once(':') {
                row.key = format!("{kind}:{source}:{id}");
            }
        }
    }
    Ok(rows)
}

fn parse_source(s: &str) -> Result<String, String> {
    if (1..=60).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err("must be 1 to 60 visible ASCII characters".to_owned())
    }
}

/// An import key of a source's own id: kept as it is when it is a valid key part (visible ASCII,
/// short enough), else replaced by its hash, so that any id gives a valid, distinct key.
fn id_key(kind: &str, id: &str) -> String {
    if id.len() <= 120 && valid_import_key(id) {
        format!("{kind}:{id}")
    } else {
        format!("{kind}:h:{}", hex(&Sha256::digest(id.as_bytes())[..16]))
    }
}

fn json_of(text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).context("the export is not valid JSON")
}

/// A status from another tracker's words (`Done`, `In progress`, `closed`, `won't do`...).
fn status_of(s: &str) -> Option<&'static str> {
    let s = s.trim().to_lowercase().replace(['-', ' '], "_");
    Some(match s.as_str() {
        "" => return None,
        "todo" | "to_do" | "open" | "new" | "backlog" | "selected_for_development" => "todo",
        "in_progress" | "doing" | "in_review" | "review" | "indeterminate" | "started" => {
            "in_progress"
        }
        "done" | "closed" | "complete" | "completed" | "resolved" | "fixed" => "done",
        "canceled" | "cancelled" | "won't_do" | "wont_do" | "not_planned" | "duplicate" => {
            "canceled"
        }
        _ if s.contains("progress") || s.contains("doing") => "in_progress",
        _ if s.contains("done") || s.contains("complete") => "done",
        _ => "todo",
    })
}

fn priority_of(s: &str) -> Option<&'static str> {
    Some(match s.trim().to_lowercase().as_str() {
        "" => return None,
        "urgent" | "highest" | "blocker" | "critical" | "p0" => "urgent",
        "high" | "major" | "p1" => "high",
        "medium" | "normal" | "p2" => "medium",
        "low" | "lowest" | "minor" | "trivial" | "p3" | "p4" => "low",
        _ => "none",
    })
}

/// `YYYY-MM-DD` from a date or a timestamp that starts with one; a day that does not exist
/// (`2027-02-30`) is no date.
fn date_of(s: &str) -> Option<String> {
    let d = s.trim().get(..10)?;
    date::parse(d).map(|_| d.to_owned())
}

/// CSV with a header row: `title` (required), `description`, `status`, `priority`, `assignee`
/// (an email), `due` (`YYYY-MM-DD`), `labels` (separated by `;`), `comments` (separated by a
/// line holding `---`), `id` (the source's id, kept as the import key). Names in any case.
fn parse_csv(text: &str) -> anyhow::Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .context("reading the CSV header")?
        .iter()
        .map(|h| h.trim().to_lowercase().replace([' ', '-'], "_"))
        .collect();
    let col = |names: &[&str]| headers.iter().position(|h| names.contains(&h.as_str()));
    let title = col(&["title", "name", "summary"]).context("the CSV has no `title` column")?;
    let description = col(&["description", "desc", "body"]);
    let status = col(&["status", "state"]);
    let priority = col(&["priority"]);
    let assignee = col(&["assignee", "assignee_email", "email"]);
    let due = col(&["due", "due_date", "duedate"]);
    let labels = col(&["labels", "label", "tags"]);
    let comments = col(&["comments", "comment"]);
    let id = col(&["id", "key", "import_key"]);
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("reading CSV row {}", i + 2))?;
        let get = |c: Option<usize>| c.and_then(|c| record.get(c)).unwrap_or("").trim();
        let key = match get(id) {
            "" => {
                // The row's place and content: the same file gives the same keys.
                let digest =
                    Sha256::digest(record.iter().collect::<Vec<_>>().join("\u{1f}").as_bytes());
                format!("csv:{}:{}", i + 2, hex(&digest[..8]))
            }
            id => id_key("csv", id),
        };
        rows.push(Row {
            key,
            title: get(Some(title)).to_owned(),
            description: get(description).to_owned(),
            status: status_of(get(status)),
            priority: priority_of(get(priority)),
            assignee_email: Some(get(assignee))
                .filter(|e| !e.is_empty())
                .map(str::to_owned),
            due_date: date_of(get(due)),
            labels: split(get(labels), ';'),
            comments: get(comments)
                .split("\n---\n")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
        });
    }
    Ok(rows)
}

fn split(s: &str, sep: char) -> Vec<String> {
    s.split(sep)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// A Trello board export: cards (archived ones are done), their list as status, labels by name,
/// `commentCard` actions as comments, oldest first. Trello exports carry no member emails.
fn parse_trello(v: &Value) -> anyhow::Result<Vec<Row>> {
    let cards = v["cards"]
        .as_array()
        .context("a Trello export has `cards`")?;
    let lists: HashMap<&str, &str> = v["lists"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["id"].as_str()?, l["name"].as_str()?)))
        .collect();
    let labels: HashMap<&str, &str> = v["labels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some((
                l["id"].as_str()?,
                l["name"].as_str().filter(|n| !n.is_empty())?,
            ))
        })
        .collect();
    let mut comments: HashMap<&str, Vec<(String, String)>> = HashMap::new();
    for a in v["actions"].as_array().into_iter().flatten() {
        if a["type"] == "commentCard" {
            let card = str_at(a, &["data", "card", "id"]);
            let text = str_at(a, &["data", "text"]);
            let date = str_at(a, &["date"]).to_owned();
            comments
                .entry(card)
                .or_default()
                .push((date, text.to_owned()));
        }
    }
    let mut rows = Vec::new();
    for c in cards {
        let id = c["id"].as_str().context("a Trello card without an id")?;
        let mut notes = comments.remove(id).unwrap_or_default();
        notes.sort();
        let status = if c["closed"] == true {
            Some("done")
        } else {
            status_of(lists.get(str_at(c, &["idList"])).copied().unwrap_or(""))
        };
        rows.push(Row {
            key: id_key("trello", id),
            title: str_at(c, &["name"]).to_owned(),
            description: str_at(c, &["desc"]).to_owned(),
            status,
            priority: None,
            assignee_email: None,
            due_date: date_of(str_at(c, &["due"])),
            labels: c["idLabels"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| labels.get(l.as_str()?).map(|n| (*n).to_owned()))
                .collect(),
            comments: notes.into_iter().map(|(_, t)| t).collect(),
        });
    }
    Ok(rows)
}

/// Jira's search API answer (`{"issues": [...]}`): summary, description (text or a document),
/// status by its category, priority, assignee's email, due date, labels, comments.
fn parse_jira(v: &Value) -> anyhow::Result<Vec<Row>> {
    let issues = v["issues"]
        .as_array()
        .context("a Jira export has `issues`")?;
    let mut rows = Vec::new();
    for issue in issues {
        let key = issue["key"]
            .as_str()
            .context("a Jira issue without a key")?;
        let f = &issue["fields"];
        let category = str_at(f, &["status", "statusCategory", "key"]);
        let status = match category {
            "new" => Some("todo"),
            "indeterminate" => Some("in_progress"),
            "done" => status_of(str_at(f, &["status", "name"]))
                .filter(|s| *s == "canceled")
                .or(Some("done")),
            _ => status_of(str_at(f, &["status", "name"])),
        };
        rows.push(Row {
            key: id_key("jira", key),
            title: str_at(f, &["summary"]).to_owned(),
            description: jira_text(&f["description"]),
            status,
            priority: priority_of(str_at(f, &["priority", "name"])),
            assignee_email: Some(str_at(f, &["assignee", "emailAddress"]))
                .filter(|e| !e.is_empty())
                .map(str::to_owned),
            due_date: date_of(str_at(f, &["duedate"])),
            labels: f["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect(),
            comments: f["comment"]["comments"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| jira_text(&c["body"]))
                .collect(),
        });
    }
    Ok(rows)
}

/// Jira text: a plain string (API v2) or an Atlassian document (v3), whose text nodes are joined
/// (a paragraph per line).
fn jira_text(v: &Value) -> String {
    fn walk(v: &Value, out: &mut String) {
        if let Some(t) = v["text"].as_str() {
            out.push_str(t);
        }
        for child in v["content"].as_array().into_iter().flatten() {
            walk(child, out);
        }
        if v["type"] == "paragraph" && !out.ends_with('\n') {
            out.push('\n');
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Object(_) => {
            let mut out = String::new();
            walk(v, &mut out);
            out.trim_end().to_owned()
        }
        _ => String::new(),
    }
}

/// GitHub issues, as the REST API or `gh issue list --json ...` gives them: closed ones are done
/// (or canceled when closed as not planned), labels by name, the milestone's due date,
/// comments when the export holds their bodies. GitHub gives no emails: no assignee. Keys are
/// `github:owner/repo#7`: the repository from each issue's URL, or `source`.
fn parse_github(v: &Value, source: Option<&str>) -> anyhow::Result<Vec<Row>> {
    let issues = v
        .as_array()
        .context("a GitHub export is an array of issues")?;
    let mut rows = Vec::new();
    for issue in issues {
        if issue.get("pull_request").is_some() {
            continue; // the REST API lists pull requests among issues
        }
        let number = issue["number"]
            .as_u64()
            .context("a GitHub issue without a number")?;
        let repo = match source {
            Some(s) => s.to_owned(),
            None => github_repo(issue).with_context(|| {
                format!(
                    "issue #{number} names no repository (no url in the export): \
                     name it with --source owner/repo"
                )
            })?,
        };
        let state = str_at(issue, &["state"]).to_lowercase();
        let reason = str_at(issue, &["state_reason"]).to_lowercase();
        let reason = if reason.is_empty() {
            str_at(issue, &["stateReason"]).to_lowercase()
        } else {
            reason
        };
        let status = match (state.as_str(), reason.as_str()) {
            ("closed", "not_planned") => "canceled",
            ("closed", _) => "done",
            _ => "todo",
        };
        let due = issue["milestone"]["due_on"]
            .as_str()
            .or_else(|| issue["milestone"]["dueOn"].as_str())
            .unwrap_or("");
        rows.push(Row {
            key: id_key("github", &format!("{repo}#{number}")),
            title: str_at(issue, &["title"]).to_owned(),
            description: str_at(issue, &["body"]).to_owned(),
            status: Some(status),
            priority: None,
            assignee_email: None,
            due_date: date_of(due),
            labels: issue["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str().or_else(|| l["name"].as_str()).map(str::to_owned))
                .collect(),
            comments: issue["comments"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["body"].as_str().map(str::to_owned))
                .collect(),
        });
    }
    Ok(rows)
}

/// `owner/repo` from an issue's `repository_url` (REST API) or its `html_url` / `url`.
fn github_repo(issue: &Value) -> Option<String> {
    if let Some(api) = issue["repository_url"].as_str() {
        let (_, repo) = api.split_once("/repos/")?;
        return Some(repo.trim_end_matches('/').to_owned());
    }
    let url = issue["html_url"]
        .as_str()
        .or_else(|| issue["url"].as_str())?;
    let path = url.split_once("://").map_or(url, |(_, rest)| rest);
    let mut parts = path.split('/').skip(1);
    let (owner, repo) = (parts.next()?, parts.next()?);
    (!owner.is_empty() && !repo.is_empty()).then(|| format!("{owner}/{repo}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_take_their_columns_in_any_order_and_case() {
        let text = "Labels,Title,Status,Due Date,Assignee,Priority,Comments\n\
                    bug; ui ,Fix login,In Progress,2027-01-31T10:00:00Z,Ann@Example.com,High,\"one\n---\ntwo\"\n\
                    ,\"Quoted, title\",,,,,\n";
        let rows = parse(Format::Csv, text, None).expect("parses");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].title, "Fix login");
        assert_eq!(rows[0].status, Some("in_progress"));
        assert_eq!(rows[0].priority, Some("high"));
        assert_eq!(rows[0].due_date.as_deref(), Some("2027-01-31"));
        assert_eq!(rows[0].assignee_email.as_deref(), Some("Ann@Example.com"));
        assert_eq!(rows[0].labels, ["bug", "ui"]);
        assert_eq!(rows[0].comments, ["one", "two"]);
        assert_eq!(rows[1].title, "Quoted, title");
        assert_eq!(rows[1].status, None);
        // The same file gives the same keys; another row's content another key.
        let again = parse(Format::Csv, text, None).expect("parses");
        assert_eq!(rows[0].key, again[0].key);
        assert_ne!(rows[0].key, rows[1].key);
        assert!(parse(Format::Csv, "name_only_wrong,x\n1,2\n", None).is_err());
    }

    #[test]
    fn ids_become_valid_distinct_keys_and_a_source_sets_them_apart() {
        let text = "id,title,due\n1,a,2027-02-30\nhas space,b,2027-02-28\n\"\u{e9}t\u{e9}\",c,\n";
        let rows = parse(Format::Csv, text, None).expect("parses");
        assert_eq!(rows[0].key, "csv:1");
        assert_eq!(rows[0].due_date, None, "February has no 30th");
        assert_eq!(rows[1].due_date.as_deref(), Some("2027-02-28"));
        for row in &rows {
            assert!(
                valid_import_key(&row.key),
                "{} is not a valid import key",
                row.key
            );
        }
        assert_ne!(rows[1].key, rows[2].key);
        assert!(rows[1].key.starts_with("csv:h:"), "{}", rows[1].key);
        let other = parse(Format::Csv, text, Some("crm-2026")).expect("parses");
        assert_eq!(other[0].key, "csv:crm-2026:1");
        let long = "x".repeat(500);
        assert!(valid_import_key(&id_key("csv", &long)));
        assert_ne!(id_key("csv", &long), id_key("csv", &"x".repeat(501)));
    }

    #[test]
    fn trello_cards_take_their_list_labels_and_comments() {
        let v = json!({
            "lists": [{"id": "l1", "name": "Doing"}, {"id": "l2", "name": "Backlog"}],
            "labels": [{"id": "b1", "name": "bug"}, {"id": "b2", "name": ""}],
            "cards": [
                {"id": "c1", "name": "Card", "desc": "d", "idList": "l1", "closed": false,
                 "due": "2027-02-01T12:00:00.000Z", "idLabels": ["b1", "b2"]},
                {"id": "c2", "name": "Old", "idList": "l2", "closed": true},
            ],
            "actions": [
                {"type": "commentCard", "date": "2026-02-01", "data": {"card": {"id": "c1"}, "text": "later"}},
                {"type": "commentCard", "date": "2026-01-01", "data": {"card": {"id": "c1"}, "text": "earlier"}},
                {"type": "updateCard", "data": {"card": {"id": "c1"}}},
            ],
        });
        let rows = parse_trello(&v).expect("parses");
        assert_eq!(rows[0].key, "trello:c1");
        assert_eq!(rows[0].status, Some("in_progress"));
        assert_eq!(rows[0].due_date.as_deref(), Some("2027-02-01"));
        assert_eq!(rows[0].labels, ["bug"]);
        assert_eq!(rows[0].comments, ["earlier", "later"]);
        assert_eq!(rows[1].status, Some("done"));
    }

    #[test]
    fn jira_issues_and_github_issues() {
        let jira = json!({"issues": [{"key": "P-1", "fields": {
            "summary": "S", "status": {"name": "In Review", "statusCategory": {"key": "indeterminate"}},
            "priority": {"name": "Highest"}, "assignee": {"emailAddress": "a@x.io"},
            "duedate": "2027-03-01", "labels": ["x"],
            "description": {"type": "doc", "content": [
                {"type": "paragraph", "content": [{"type": "text", "text": "one"}]},
                {"type": "paragraph", "content": [{"type": "text", "text": "two"}]}]},
            "comment": {"comments": [{"body": "c"}]}}}]});
        let rows = parse_jira(&jira).expect("parses");
        assert_eq!(rows[0].key, "jira:P-1");
        assert_eq!(rows[0].status, Some("in_progress"));
        assert_eq!(rows[0].priority, Some("urgent"));
        assert_eq!(rows[0].description, "one\ntwo");
        assert_eq!(rows[0].comments, ["c"]);
        assert_eq!(rows[0].assignee_email.as_deref(), Some("a@x.io"));

        let gh = json!([
            {"number": 7, "title": "T", "body": "B", "state": "closed", "state_reason": "not_planned",
             "repository_url": "https://api.github.com/repos/acme/app",
             "labels": [{"name": "bug"}], "milestone": {"due_on": "2027-04-01T07:00:00Z"}},
            {"number": 8, "title": "PR", "state": "open", "pull_request": {}},
            {"number": 9, "title": "U", "state": "OPEN", "labels": ["ui"], "comments": [{"body": "hi"}],
             "url": "https://github.com/acme/web/issues/9"},
        ]);
        let rows = parse_github(&gh, None).expect("parses");
        assert_eq!(rows.len(), 2, "pull requests are skipped");
        assert_eq!(rows[0].key, "github:acme/app#7");
        assert_eq!(rows[0].status, Some("canceled"));
        assert_eq!(rows[0].due_date.as_deref(), Some("2027-04-01"));
        assert_eq!(
            rows[1].key, "github:acme/web#9",
            "two repositories' #9 stay apart"
        );
        assert_eq!(rows[1].labels, ["ui"]);
        assert_eq!(rows[1].comments, ["hi"]);
        let bare = json!([{"number": 1, "title": "no url", "state": "open"}]);
        assert!(parse_github(&bare, None).is_err(), "no repository, no key");
        let named = parse(Format::Github, &bare.to_string(), Some("acme/cli")).expect("parses");
        assert_eq!(named[0].key, "github:acme/cli#1");
    }
}
