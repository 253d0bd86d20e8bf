//! Scenario `search`: latency of the task list's filters and sorts and of full-text search on a
//! large team (`GET /api/v1/teams/{teamId}/tasks?...` and `GET /api/v1/teams/{teamId}/search`).
//!
//! Four steps, which `bench/search.sh` chains per backend:
//! - `setup` (over HTTP, against a server on a fresh database): one owner creates the teams; per
//!   team extra boards, labels and members (registered users, added by id). Writes the ids to a
//!   fixture file (JSON).
//! - `seed`: from the fixture, the tasks as SQL (`sqlite3`) or `COPY` data (`psql`) on stdout, to
//!   write straight into the stopped server's database (see `search_data`).
//! - `run`: logs in as a member of the first team and sends every query kind `--requests` times,
//!   one at a time (or over `--concurrency` connections), after `--warmup` requests; prints per
//!   kind the rows returned and p50/p95/p99/max against the 20 ms p99 target.
//! - `explain`: the SQL the server runs for each query kind, wrapped in the backend's EXPLAIN,
//!   for `sqlite3`/`psql` (see `search_sql`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Method, Request};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::http_writes::{Client, Target, parse_url, post_api};
use crate::search_data::{self, SeedPlan, TeamShape};
use crate::search_sql;

#[derive(clap::Args, Debug, Clone)]
pub struct SearchArgs {
    #[command(subcommand)]
    pub step: Step,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Step {
    /// Creates the teams, boards, labels and members over HTTP; writes the fixture file
    Setup(SetupArgs),
    /// Prints the tasks of the fixture's teams as SQL for sqlite3 or COPY input for psql
    Seed(SeedArgs),
    /// Measures every query kind over HTTP and prints the table
    Run(RunArgs),
    /// Prints each query kind's SQL under EXPLAIN, for sqlite3 or psql
    Explain(ExplainArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct SetupArgs {
    /// Base URL of the server, plain HTTP on loopback
    #[arg(long)]
    pub url: String,
    /// Where the fixture (JSON) goes
    #[arg(long)]
    pub fixture: PathBuf,
    #[arg(long, default_value_t = 11)]
    pub teams: usize,
    /// Members per team, the owner included
    #[arg(long, default_value_t = 20)]
    pub members: usize,
    /// Boards per team, the default one included
    #[arg(long, default_value_t = 4)]
    pub boards: usize,
    #[arg(long, default_value_t = 20)]
    pub labels: usize,
    /// Per-request timeout, seconds
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SeedArgs {
    #[arg(long)]
    pub fixture: PathBuf,
    #[arg(long, value_enum)]
    pub backend: Backend,
    #[arg(long, default_value_t = 100_000)]
    pub tasks_per_team: u64,
    /// Seed of the generator: the same seed gives the same tasks on both backends
    #[arg(long, default_value_t = 20_261_205)]
    pub seed: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub fixture: PathBuf,
    /// Measured requests per query kind
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// Unmeasured requests per query kind before its measured ones
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Connections sending at once (each sequentially); 1 = one client, one request at a time
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// At most this many seconds per query kind (its measured requests stop there)
    #[arg(long, default_value_t = 60.0)]
    pub max_secs_per_query: f64,
    /// The p99 target, milliseconds
    #[arg(long, default_value_t = 20.0)]
    pub target_ms: f64,
    /// Per-request timeout, seconds
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Only the query kinds whose name contains one of these (comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Free-form label printed with the table (e.g. the backend)
    #[arg(long)]
    pub label: Option<String>,
    /// Also write the report as JSON to this file
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    #[arg(long)]
    pub fixture: PathBuf,
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// Also count each query's matching tasks (no limit)
    #[arg(long)]
    pub count: bool,
    /// Only the query kinds whose name contains one of these (comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct FixtureUser {
    pub id: String,
    pub email: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct FixtureTeam {
    pub id: String,
    /// The default board first
    pub boards: Vec<String>,
    /// In creation (id) order
    pub labels: Vec<String>,
    /// The owner first, then members (role `member`)
    pub members: Vec<FixtureUser>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Fixture {
    pub password: String,
    pub teams: Vec<FixtureTeam>,
}

const PASSWORD: &str = "bench-search-password-1";

fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).with_context(|| format!("not a UUID in the fixture: {s:?}"))
}

impl Fixture {
    fn read(path: &PathBuf) -> Result<Self> {
        let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
    }

    fn shapes(&self) -> Result<Vec<TeamShape>> {
        self.teams
            .iter()
            .map(|t| {
                Ok(TeamShape {
                    id: uuid(&t.id)?,
                    boards: t.boards.iter().map(|b| uuid(b)).collect::<Result<_>>()?,
                    labels: t.labels.iter().map(|l| uuid(l)).collect::<Result<_>>()?,
                    members: t
                        .members
                        .iter()
                        .map(|m| uuid(&m.id))
                        .collect::<Result<_>>()?,
                })
            })
            .collect()
    }
}

fn str_field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str> {
    v[key]
        .as_str()
        .ok_or_else(|| anyhow!("{what} response has no {key}: {v}"))
}

pub async fn setup(args: &SetupArgs) -> Result<Fixture> {
    ensure!(
        args.teams > 0 && args.members > 0 && args.boards > 0,
        "--teams, --members and --boards must be positive"
    );
    let target = parse_url(&args.url)?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut client = Client::new(target.addr.as_str().into());
    let unique = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let register = async |client: &mut Client, who: String| -> Result<FixtureUser> {
        let email = format!("search-{unique}-{who}@example.com");
        let auth = post_api(
            client,
            &target,
            "/api/v1/auth/register",
            None,
            json!({"email": email, "password": PASSWORD, "displayName": format!("Search {who}")}),
            timeout,
        )
        .await?;
        Ok(FixtureUser {
            id: str_field(&auth["user"], "id", "register")?.to_string(),
            email,
        })
    };
    let owner = register(&mut client, "owner".into()).await?;
    let owner_bearer = login(&mut client, &target, &owner.email, timeout).await?;
    let mut teams = Vec::with_capacity(args.teams);
    for t in 0..args.teams {
        let team = post_api(
            &mut client,
            &target,
            "/api/v1/teams",
            Some(&owner_bearer),
            json!({"name": format!("Search team {t}")}),
            timeout,
        )
        .await?;
        let team_id = str_field(&team, "id", "team")?.to_string();
        let mut boards = vec![str_field(&team, "defaultBoardId", "team")?.to_string()];
        for b in 1..args.boards {
            let board = post_api(
                &mut client,
                &target,
                &format!("/api/v1/teams/{team_id}/boards"),
                Some(&owner_bearer),
                json!({"name": format!("Board {b}")}),
                timeout,
            )
            .await?;
            boards.push(str_field(&board, "id", "board")?.to_string());
        }
        let mut labels = Vec::with_capacity(args.labels);
        for l in 0..args.labels {
            let label = post_api(
                &mut client,
                &target,
                &format!("/api/v1/teams/{team_id}/labels"),
                Some(&owner_bearer),
                json!({"name": format!("label-{l}"), "color": format!("#{:06x}", (l * 0x0a3b5f) & 0xff_ffff)}),
                timeout,
            )
            .await?;
            labels.push(str_field(&label, "id", "label")?.to_string());
        }
        let mut members = vec![owner.clone()];
        for m in 1..args.members {
            let user = register(&mut client, format!("t{t}-m{m}")).await?;
            post_api(
                &mut client,
                &target,
                &format!("/api/v1/teams/{team_id}/members"),
                Some(&owner_bearer),
                json!({"userId": user.id, "role": "member"}),
                timeout,
            )
            .await?;
            members.push(user);
        }
        eprintln!(
            "search setup: team {t} {team_id}: {} boards, {} labels, {} members",
            boards.len(),
            labels.len(),
            members.len()
        );
        teams.push(FixtureTeam {
            id: team_id,
            boards,
            labels,
            members,
        });
    }
    let fixture = Fixture {
        password: PASSWORD.into(),
        teams,
    };
    std::fs::write(&args.fixture, serde_json::to_vec_pretty(&fixture)?)
        .with_context(|| format!("write {}", args.fixture.display()))?;
    Ok(fixture)
}

async fn login(
    client: &mut Client,
    target: &Target,
    email: &str,
    timeout: Duration,
) -> Result<HeaderValue> {
    let auth = post_api(
        client,
        target,
        "/api/v1/auth/login",
        None,
        json!({"email": email, "password": PASSWORD}),
        timeout,
    )
    .await?;
    Ok(HeaderValue::from_str(&format!(
        "Bearer {}",
        str_field(&auth, "accessToken", "login")?
    ))?)
}

pub fn seed(args: &SeedArgs) -> Result<()> {
    let fixture = Fixture::read(&args.fixture)?;
    let shapes = fixture.shapes()?;
    let plan = SeedPlan {
        teams: &shapes,
        tasks_per_team: args.tasks_per_team,
        seed: args.seed,
        now_ms: now_ms(),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    match args.backend {
        Backend::Sqlite => search_data::write_sqlite(&plan, &mut out),
        Backend::Postgres => search_data::write_postgres(&plan, &mut out),
    }
    .and_then(|()| std::io::Write::flush(&mut out))
    .context("write the seed to stdout")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The sorts of the task list, in the API's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    CreatedAt,
    UpdatedAt,
    DueDate,
    Priority,
    Position,
}

impl Sort {
    pub fn api(self) -> &'static str {
        match self {
            Sort::CreatedAt => "createdAt",
            Sort::UpdatedAt => "updatedAt",
            Sort::DueDate => "dueDate",
            Sort::Priority => "priority",
            Sort::Position => "position",
        }
    }
}

/// One query of the task list (or of search, with `search`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub board: Option<Uuid>,
    pub statuses: Vec<&'static str>,
    pub priorities: Vec<&'static str>,
    /// `Some(None)`: unassigned
    pub assignee: Option<Option<Uuid>>,
    pub labels: Vec<Uuid>,
    pub due_after: Option<String>,
    pub due_before: Option<String>,
    pub q: Option<String>,
    /// `None`: the default (createdAt); `Some((sort, descending))`
    pub sort: Option<(Sort, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Tasks,
    /// `GET /teams/{teamId}/search`
    Search,
}

#[derive(Debug, Clone)]
pub struct QueryKind {
    pub name: String,
    pub endpoint: Endpoint,
    pub filter: Filter,
    /// Ask for the second page (with the first page's cursor)
    pub page2: bool,
}

/// Percent-encodes a query-string value (everything but unreserved characters).
fn encode(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

impl QueryKind {
    /// The path and query string below the API base (without the cursor).
    pub fn path(&self, team: &str) -> String {
        let f = &self.filter;
        let mut params: Vec<(&str, String)> = Vec::new();
        if self.endpoint == Endpoint::Search {
            if let Some(q) = &f.q {
                params.push(("q", q.clone()));
            }
            return format!("/api/v1/teams/{team}/search?{}", join(&params));
        }
        if let Some(b) = f.board {
            params.push(("boardId", b.hyphenated().to_string()));
        }
        for s in &f.statuses {
            params.push(("status", (*s).to_string()));
        }
        for p in &f.priorities {
            params.push(("priority", (*p).to_string()));
        }
        match f.assignee {
            Some(Some(a)) => params.push(("assigneeUserId", a.hyphenated().to_string())),
            Some(None) => params.push(("assigneeUserId", "none".into())),
            None => {}
        }
        for l in &f.labels {
            params.push(("labelId", l.hyphenated().to_string()));
        }
        if let Some(d) = &f.due_after {
            params.push(("dueAfter", d.clone()));
        }
        if let Some(d) = &f.due_before {
            params.push(("dueBefore", d.clone()));
        }
        if let Some(q) = &f.q {
            params.push(("q", q.clone()));
        }
        if let Some((sort, desc)) = f.sort {
            params.push((
                "sort",
                format!("{}{}", if desc { "-" } else { "" }, sort.api()),
            ));
        }
        if params.is_empty() {
            format!("/api/v1/teams/{team}/tasks")
        } else {
            format!("/api/v1/teams/{team}/tasks?{}", join(&params))
        }
    }
}

fn join(params: &[(&str, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The words the text queries use, from the generator's vocabulary (rank = frequency order).
pub struct Words {
    pub common: String,
    pub second: String,
    pub rare: String,
    pub prefix2: String,
}

impl Words {
    pub fn pick() -> Self {
        let vocab = search_data::vocabulary(search_data::VOCABULARY);
        let find = |w: &str| -> String {
            vocab
                .iter()
                .find(|v| v.as_str() == w)
                .cloned()
                .unwrap_or_else(|| vocab[11].clone())
        };
        // A made-up word far down the ranks: in about 0.1% of the tasks.
        let rare = vocab[search_data::VOCABULARY * 7 / 8].clone();
        Self {
            common: find("error"),
            second: find("login"),
            rare,
            prefix2: "de".into(),
        }
    }
}

/// Every query kind of the benchmark, on the fixture's first team.
pub fn query_kinds(team: &TeamShape, now_ms: i64) -> Vec<QueryKind> {
    let words = Words::pick();
    let today = now_ms.div_euclid(86_400_000);
    let board = team.boards.get(1).or(team.boards.first()).copied();
    let member = team.members.get(3).or(team.members.last()).copied();
    let label = team.labels.first().copied();
    let label2 = team.labels.get(5).or(team.labels.last()).copied();
    let mut kinds = Vec::new();
    let mut add = |name: &str, endpoint: Endpoint, filter: Filter, page2: bool| {
        kinds.push(QueryKind {
            name: name.to_string(),
            endpoint,
            filter,
            page2,
        });
    };
    let list = Endpoint::Tasks;
    add("no filter (createdAt)", list, Filter::default(), false);
    add(
        "boardId",
        list,
        Filter {
            board,
            ..Filter::default()
        },
        false,
    );
    add(
        "status=in_progress",
        list,
        Filter {
            statuses: vec!["in_progress"],
            ..Filter::default()
        },
        false,
    );
    add(
        "status=todo,in_progress",
        list,
        Filter {
            statuses: vec!["todo", "in_progress"],
            ..Filter::default()
        },
        false,
    );
    add(
        "priority=urgent",
        list,
        Filter {
            priorities: vec!["urgent"],
            ..Filter::default()
        },
        false,
    );
    add(
        "assigneeUserId",
        list,
        Filter {
            assignee: Some(member),
            ..Filter::default()
        },
        false,
    );
    add(
        "assigneeUserId=none",
        list,
        Filter {
            assignee: Some(None),
            ..Filter::default()
        },
        false,
    );
    add(
        "labelId",
        list,
        Filter {
            labels: label.into_iter().collect(),
            ..Filter::default()
        },
        false,
    );
    add(
        "labelId x2",
        list,
        Filter {
            labels: label.into_iter().chain(label2).collect(),
            ..Filter::default()
        },
        false,
    );
    add(
        "dueAfter+dueBefore (31 days)",
        list,
        Filter {
            due_after: Some(search_data::date_text(today - 120)),
            due_before: Some(search_data::date_text(today - 90)),
            ..Filter::default()
        },
        false,
    );
    let q = |q: &str| Filter {
        q: Some(q.to_string()),
        ..Filter::default()
    };
    add(
        &format!("q={} (common)", words.common),
        list,
        q(&words.common),
        false,
    );
    add(
        &format!("q={} (rare)", words.rare),
        list,
        q(&words.rare),
        false,
    );
    add(
        &format!("q={} (2-letter prefix)", words.prefix2),
        list,
        q(&words.prefix2),
        false,
    );
    let two = format!("{} {}", words.second, words.common);
    add(&format!("q={two} (two words)"), list, q(&two), false);
    for sort in [
        Sort::CreatedAt,
        Sort::UpdatedAt,
        Sort::DueDate,
        Sort::Priority,
        Sort::Position,
    ] {
        for desc in [false, true] {
            add(
                &format!("sort={}{}", if desc { "-" } else { "" }, sort.api()),
                list,
                Filter {
                    sort: Some((sort, desc)),
                    ..Filter::default()
                },
                false,
            );
        }
    }
    add(
        "sort=dueDate page 2",
        list,
        Filter {
            sort: Some((Sort::DueDate, false)),
            ..Filter::default()
        },
        true,
    );
    add(
        "combined: status x2, priority x2, labelId, sort=-dueDate",
        list,
        Filter {
            statuses: vec!["todo", "in_progress"],
            priorities: vec!["high", "urgent"],
            labels: label.into_iter().collect(),
            sort: Some((Sort::DueDate, true)),
            ..Filter::default()
        },
        false,
    );
    add(
        &format!(
            "combined: boardId, status=todo, q={}, sort=-updatedAt",
            words.common
        ),
        list,
        Filter {
            board,
            statuses: vec!["todo"],
            q: Some(words.common.clone()),
            sort: Some((Sort::UpdatedAt, true)),
            ..Filter::default()
        },
        false,
    );
    add(
        &format!("search q={} (common)", words.common),
        Endpoint::Search,
        q(&words.common),
        false,
    );
    add(
        &format!("search q={} (rare)", words.rare),
        Endpoint::Search,
        q(&words.rare),
        false,
    );
    add(
        &format!("search q={two} (two words)"),
        Endpoint::Search,
        q(&two),
        false,
    );
    kinds
}

/// Whether an answer is what the query asks for: every item of the team matches every filter
/// (the `q` words begin words of the title or description) and the items come in the sort's
/// order. A server that ignored a parameter would be measured doing less than asked.
pub fn check_answer(kind: &QueryKind, team: &Uuid, answer: &Value) -> Result<(), String> {
    let items = answer["items"]
        .as_array()
        .ok_or_else(|| "no items array".to_string())?;
    let tasks: Vec<&Value> = match kind.endpoint {
        Endpoint::Tasks => items.iter().collect(),
        Endpoint::Search => items.iter().map(|i| &i["task"]).collect(),
    };
    let f = &kind.filter;
    let text = |t: &Value, k: &str| t[k].as_str().unwrap_or("").to_string();
    for t in &tasks {
        let id = text(t, "id");
        let fail = |what: &str| Err(format!("task {id} does not match {what}"));
        if text(t, "teamId") != team.hyphenated().to_string() {
            return fail("the team");
        }
        if let Some(b) = &f.board
            && text(t, "boardId") != b.hyphenated().to_string()
        {
            return fail("boardId");
        }
        if !f.statuses.is_empty() && !f.statuses.contains(&text(t, "status").as_str()) {
            return fail("status");
        }
        if !f.priorities.is_empty() && !f.priorities.contains(&text(t, "priority").as_str()) {
            return fail("priority");
        }
        match &f.assignee {
            Some(Some(a)) if text(t, "assigneeUserId") != a.hyphenated().to_string() => {
                return fail("assigneeUserId");
            }
            Some(None) if !t["assigneeUserId"].is_null() => return fail("assigneeUserId=none"),
            _ => {}
        }
        let labels: Vec<&str> = t["labelIds"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if f.labels
            .iter()
            .any(|l| !labels.contains(&l.hyphenated().to_string().as_str()))
        {
            return fail("labelId");
        }
        let due = t["dueDate"].as_str();
        if let Some(after) = &f.due_after
            && due.is_none_or(|d| d < after.as_str())
        {
            return fail("dueAfter");
        }
        if let Some(before) = &f.due_before
            && due.is_none_or(|d| d > before.as_str())
        {
            return fail("dueBefore");
        }
        if let Some(q) = &f.q {
            let haystack =
                format!("{} {}", text(t, "title"), text(t, "description")).to_lowercase();
            let words: Vec<&str> = haystack
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect();
            for w in search_sql::words(q) {
                if !words.iter().any(|x| x.starts_with(w.as_str())) {
                    return fail(&format!("q word {w:?}"));
                }
            }
        }
    }
    if kind.endpoint == Endpoint::Tasks {
        let (sort, desc) = f.sort.unwrap_or((Sort::CreatedAt, false));
        let key = |t: &Value| -> (u8, String, f64, String) {
            let id = text(t, "id");
            match sort {
                Sort::CreatedAt => (0, String::new(), 0.0, id),
                Sort::UpdatedAt => (0, text(t, "updatedAt"), 0.0, id),
                Sort::DueDate => match t["dueDate"].as_str() {
                    Some(d) => (0, d.to_string(), 0.0, id),
                    None => (1, String::new(), 0.0, id),
                },
                Sort::Priority => {
                    let rank = search_data::PRIORITIES
                        .iter()
                        .position(|p| *p == text(t, "priority"))
                        .unwrap_or(0);
                    (0, String::new(), rank as f64, id)
                }
                Sort::Position => (0, String::new(), t["position"].as_f64().unwrap_or(0.0), id),
            }
        };
        for pair in tasks.windows(2) {
            let (a, b) = (key(pair[0]), key(pair[1]));
            // Tasks without a due date come last in both directions.
            let ordered = if a.0 != b.0 {
                a.0 < b.0
            } else {
                let cmp = a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)).then(a.3.cmp(&b.3));
                if desc { cmp.is_gt() } else { cmp.is_lt() }
            };
            if !ordered {
                return Err(format!(
                    "tasks {} and {} are out of the sort's order",
                    a.3, b.3
                ));
            }
        }
    }
    Ok(())
}

fn selected(name: &str, only: &[String]) -> bool {
    only.is_empty() || only.iter().any(|o| name.contains(o.as_str()))
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    pub name: String,
    pub path: String,
    /// Items in the (first measured) answer
    pub rows: Option<u64>,
    pub requests: u64,
    /// Non-2xx answers and failed requests
    pub failures: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub pass: bool,
    /// Why the kind could not be measured (its first request failed), or what is wrong with its
    /// answer (then it was measured but fails)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub label: Option<String>,
    pub url: String,
    pub teams: usize,
    pub concurrency: usize,
    pub requests: usize,
    pub warmup: usize,
    pub target_ms: f64,
    pub queries: Vec<QueryResult>,
}

/// The value at quantile `q` of sorted samples (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn get(target: &Target, path: &str, bearer: &HeaderValue) -> Result<Request<Full<Bytes>>> {
    Ok(Request::builder()
        .method(Method::GET)
        .uri(format!("{}{path}", target.prefix))
        .header(HOST, target.host_header.clone())
        .header(AUTHORIZATION, bearer.clone())
        .body(Full::new(Bytes::new()))?)
}

/// One GET whose answer must be 2xx JSON.
async fn get_json(
    client: &mut Client,
    target: &Target,
    path: &str,
    bearer: &HeaderValue,
    timeout: Duration,
) -> Result<Value> {
    let (status, body) = client
        .exchange(get(target, path, bearer)?, timeout, true)
        .await
        .map_err(|e| anyhow!("GET {path}: {e}"))?;
    ensure!(
        status.is_success(),
        "GET {path}: HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).with_context(|| format!("GET {path}: not JSON"))
}

/// Sends `count` GETs of `path` one after the other on `client`, until `deadline`; returns the
/// latencies of the 2xx answers and the number of failures.
async fn send_many(
    client: &mut Client,
    target: &Target,
    path: &str,
    bearer: &HeaderValue,
    count: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Vec<Duration>, u64)> {
    let mut times = Vec::with_capacity(count);
    let mut failures = 0;
    for _ in 0..count {
        if Instant::now() >= deadline {
            break;
        }
        let req = get(target, path, bearer)?;
        let start = Instant::now();
        match client.exchange(req, timeout, false).await {
            Ok((status, _)) if status.is_success() => times.push(start.elapsed()),
            _ => failures += 1,
        }
    }
    Ok((times, failures))
}

/// Warm-up and measured requests of one query kind.
async fn measure(
    args: &RunArgs,
    target: &Target,
    clients: &mut [Client],
    bearer: &HeaderValue,
    team_id: &str,
    kind: &QueryKind,
) -> Result<QueryResult> {
    let concurrency = clients.len();
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut path = kind.path(team_id);
    if kind.page2 {
        let first = get_json(&mut clients[0], target, &path, bearer, timeout).await?;
        let cursor = first["nextCursor"]
            .as_str()
            .ok_or_else(|| anyhow!("the first page has no nextCursor"))?;
        path = format!(
            "{path}{}cursor={}",
            if path.contains('?') { '&' } else { '?' },
            encode(cursor)
        );
    }
    // The rows of one answer (the same every time: nothing writes meanwhile).
    let answer = get_json(&mut clients[0], target, &path, bearer, timeout).await?;
    let rows = answer["items"].as_array().map(|a| a.len() as u64);
    let team = Uuid::parse_str(team_id)?;
    let check = check_answer(kind, &team, &answer).err();
    let deadline = Instant::now() + Duration::from_secs_f64(args.max_secs_per_query);
    for c in clients.iter_mut() {
        send_many(
            c,
            target,
            &path,
            bearer,
            args.warmup.div_ceil(concurrency),
            deadline,
            timeout,
        )
        .await?;
    }
    let share = args.requests.div_ceil(concurrency);
    let outcomes = futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|c| send_many(c, target, &path, bearer, share, deadline, timeout)),
    )
    .await;
    let mut times = Vec::with_capacity(args.requests);
    let mut failures = 0;
    for o in outcomes {
        let (t, f) = o?;
        times.extend(t);
        failures += f;
    }
    times.sort();
    let p99_ms = quantile(&times, 0.99);
    Ok(QueryResult {
        name: kind.name.clone(),
        path: path.replacen(&format!("/api/v1/teams/{team_id}"), "", 1),
        rows,
        requests: times.len() as u64,
        failures,
        p50_ms: quantile(&times, 0.50),
        p95_ms: quantile(&times, 0.95),
        p99_ms,
        max_ms: quantile(&times, 1.0),
        pass: failures == 0 && !times.is_empty() && p99_ms <= args.target_ms && check.is_none(),
        error: check.map(|e| format!("wrong answer: {e}")),
    })
}

pub async fn run(args: &RunArgs) -> Result<RunReport> {
    ensure!(args.requests > 0, "--requests must be positive");
    let concurrency = args.concurrency.max(1);
    let fixture = Fixture::read(&args.fixture)?;
    let shapes = fixture.shapes()?;
    let team = shapes
        .first()
        .ok_or_else(|| anyhow!("the fixture has no team"))?;
    let team_id = team.id.hyphenated().to_string();
    let member = fixture.teams[0]
        .members
        .get(1)
        .or(fixture.teams[0].members.first())
        .ok_or_else(|| anyhow!("the fixture's first team has no member"))?;
    let target = parse_url(&args.url)?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut clients: Vec<Client> = (0..concurrency)
        .map(|_| Client::new(target.addr.as_str().into()))
        .collect();
    let bearer = login(&mut clients[0], &target, &member.email, timeout).await?;
    let kinds = query_kinds(team, now_ms());
    let mut results = Vec::new();
    for kind in kinds.iter().filter(|k| selected(&k.name, &args.only)) {
        let r = match measure(args, &target, &mut clients, &bearer, &team_id, kind).await {
            Ok(r) => r,
            // A query kind the server refuses (or fails) is a row of the table, not the end.
            Err(e) => QueryResult {
                name: kind.name.clone(),
                path: kind
                    .path(&team_id)
                    .replacen(&format!("/api/v1/teams/{team_id}"), "", 1),
                rows: None,
                requests: 0,
                failures: 1,
                p50_ms: 0.0,
                p95_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
                pass: false,
                error: Some(format!("{e:#}")),
            },
        };
        match &r.error {
            Some(e) if r.requests == 0 => eprintln!("search run: {:<58} {e}", r.name),
            _ => eprintln!(
                "search run: {:<58} rows {:>3}  p50 {:>7.2}  p99 {:>7.2} ms",
                r.name,
                r.rows.map_or("-".into(), |n| n.to_string()),
                r.p50_ms,
                r.p99_ms
            ),
        }
        results.push(r);
    }
    let report = RunReport {
        label: args.label.clone(),
        url: args.url.clone(),
        teams: shapes.len(),
        concurrency,
        requests: args.requests,
        warmup: args.warmup,
        target_ms: args.target_ms,
        queries: results,
    };
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(report)
}

pub fn print_table(r: &RunReport) {
    println!(
        "{}: {} requests per query after {} warm-up, {} connection(s) ({}), p99 target {} ms",
        r.label.as_deref().unwrap_or("search"),
        r.requests,
        r.warmup,
        r.concurrency,
        if r.concurrency == 1 {
            "one request at a time"
        } else {
            "each one request at a time"
        },
        r.target_ms
    );
    println!(
        "{:<58} {:>4} {:>7} {:>7} {:>7} {:>7}  p99 target",
        "query", "rows", "p50", "p95", "p99", "max"
    );
    for q in &r.queries {
        let verdict = if q.pass {
            "PASS".to_string()
        } else if let Some(e) = &q.error {
            format!("FAIL: {}", e.chars().take(200).collect::<String>())
        } else if q.failures > 0 {
            format!("FAIL ({} failed requests)", q.failures)
        } else {
            "FAIL".to_string()
        };
        println!(
            "{:<58} {:>4} {:>7.2} {:>7.2} {:>7.2} {:>7.2}  {}",
            q.name,
            q.rows.map_or("-".into(), |n| n.to_string()),
            q.p50_ms,
            q.p95_ms,
            q.p99_ms,
            q.max_ms,
            verdict
        );
    }
    let passed = r.queries.iter().filter(|q| q.pass).count();
    println!(
        "{passed} of {} query kinds within p99 <= {} ms",
        r.queries.len(),
        r.target_ms
    );
}

pub fn explain(args: &ExplainArgs) -> Result<()> {
    let fixture = Fixture::read(&args.fixture)?;
    let shapes = fixture.shapes()?;
    let Some(team) = shapes.first() else {
        bail!("the fixture has no team");
    };
    let mut out = String::new();
    for kind in query_kinds(team, now_ms())
        .iter()
        .filter(|k| selected(&k.name, &args.only))
    {
        out.push_str(&search_sql::explain(args.backend, team, kind, args.count));
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=300).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), 150.0);
        assert_eq!(quantile(&v, 0.99), 297.0);
        assert_eq!(quantile(&v, 1.0), 300.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
    }

    #[test]
    fn paths_carry_every_filter() {
        let team = TeamShape {
            id: Uuid::nil(),
            boards: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
            labels: (10..30).map(Uuid::from_u128).collect(),
            members: (40..60).map(Uuid::from_u128).collect(),
        };
        let kinds = query_kinds(&team, 1_796_491_555_545);
        let by = |n: &str| {
            kinds
                .iter()
                .find(|k| k.name.starts_with(n))
                .map(|k| k.path("T"))
                .unwrap()
        };
        assert_eq!(by("no filter"), "/api/v1/teams/T/tasks");
        assert_eq!(
            by("assigneeUserId=none"),
            "/api/v1/teams/T/tasks?assigneeUserId=none"
        );
        assert_eq!(
            by("status=todo,in_progress"),
            "/api/v1/teams/T/tasks?status=todo&status=in_progress"
        );
        assert_eq!(
            by("dueAfter"),
            "/api/v1/teams/T/tasks?dueAfter=2026-08-07&dueBefore=2026-09-06"
        );
        assert_eq!(by("sort=-dueDate"), "/api/v1/teams/T/tasks?sort=-dueDate");
        assert!(by("q=login error").ends_with("?q=login%20error"));
        assert!(by("search q=error").starts_with("/api/v1/teams/T/search?q=error"));
        assert!(by("labelId x2").contains("labelId=00000000-0000-0000-0000-00000000000a&labelId="));
    }

    #[test]
    fn answers_are_checked_against_filter_and_order() {
        let team = Uuid::from_u128(1);
        let task = |id: &str, status: &str, due: Value, title: &str| {
            json!({"id": id, "teamId": team.hyphenated().to_string(), "status": status,
                   "priority": "none", "dueDate": due, "title": title, "description": "",
                   "labelIds": [], "assigneeUserId": null})
        };
        let kind = |filter: Filter| QueryKind {
            name: "k".into(),
            endpoint: Endpoint::Tasks,
            filter,
            page2: false,
        };
        let by_due = kind(Filter {
            statuses: vec!["todo"],
            sort: Some((Sort::DueDate, true)),
            ..Filter::default()
        });
        let good = json!({"items": [
            task("b", "todo", json!("2026-02-01"), "x"),
            task("a", "todo", json!("2026-01-01"), "x"),
            task("c", "todo", Value::Null, "x"),
        ]});
        assert_eq!(check_answer(&by_due, &team, &good), Ok(()));
        let misordered = json!({"items": [
            task("c", "todo", Value::Null, "x"),
            task("b", "todo", json!("2026-02-01"), "x"),
        ]});
        assert!(check_answer(&by_due, &team, &misordered).is_err());
        let wrong_status = json!({"items": [task("a", "done", Value::Null, "x")]});
        assert!(check_answer(&by_due, &team, &wrong_status).is_err());
        let q = kind(Filter {
            q: Some("dep FAI".into()),
            ..Filter::default()
        });
        let hit = json!({"items": [task("a", "todo", Value::Null, "Deploy failed")]});
        assert_eq!(check_answer(&q, &team, &hit), Ok(()));
        let miss = json!({"items": [task("a", "todo", Value::Null, "Deploy")]});
        assert!(check_answer(&q, &team, &miss).is_err());
    }
}
