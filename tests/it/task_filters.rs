//! Filters and sorts of `GET /teams/{teamId}/tasks` against a model of the data (seeded;
//! `TASKFORGE_TEST_SEED` replays): random tasks and edits over HTTP, then random filter + sort
//! combinations paged through with random limits; the ids concatenated must be the model's
//! answer in the model's order. Also: another team's tasks never appear, a cursor is bound to
//! its sort, bad values name their parameter, and writes between pages neither repeat nor skip a
//! task that did not change.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(
    filters_and_sorts_against_a_model,
    filter_parameters_rejected,
    writes_between_pages_skip_nothing,
);

/// Words that prefix one another, in several cases, with and without diacritics.
pub(crate) const VOCAB: &[&str] = &[
    "deploy",
    "deployment",
    "Deployed",
    "fail",
    "failed",
    "FAILURE",
    "login",
    "logout",
    "log",
    "page",
    "pager",
    "cache",
    "cached",
    "éclair",
    "Éclat",
    "zebra",
    "api",
    "apiary",
];
/// Separators the contract's word splitting must see through (no hyphens or dots between
/// letters: PostgreSQL's parser reads `a-b` and `a.b` as compound tokens).
pub(crate) const SEPARATORS: &[&str] = &[" ", ", ", ". ", "; ", " / ", " (", ") "];
const STATUSES: &[&str] = &["todo", "in_progress", "done", "canceled"];
const PRIORITIES: &[&str] = &["none", "low", "medium", "high", "urgent"];
const SORTS: &[&str] = &[
    "createdAt",
    "-createdAt",
    "updatedAt",
    "-updatedAt",
    "dueDate",
    "-dueDate",
    "priority",
    "-priority",
    "position",
    "-position",
];

// ---------------------------------------------------------------------------------------------
// The contract's rules, as a model
// ---------------------------------------------------------------------------------------------

/// Words as the contract splits them: runs of Unicode letters and digits, lower case.
pub(crate) fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The words of a query as used: at most 10, each cut to its first 50 characters.
pub(crate) fn query_words(q: &str) -> Vec<String> {
    words(q)
        .into_iter()
        .take(10)
        .map(|w| w.chars().take(50).collect())
        .collect()
}

/// Every word of `q` begins some word of the title or the description.
pub(crate) fn text_matches(task: &Value, q: &str) -> bool {
    let mut tw = words(task["title"].as_str().unwrap_or_default());
    tw.extend(words(task["description"].as_str().unwrap_or_default()));
    query_words(q)
        .iter()
        .all(|qw| tw.iter().any(|w| w.starts_with(qw.as_str())))
}

fn id_of(t: &Value) -> Uuid {
    t["id"].as_str().unwrap().parse().unwrap()
}

fn rank(t: &Value) -> usize {
    let p = t["priority"].as_str().unwrap();
    PRIORITIES.iter().position(|x| *x == p).unwrap()
}

/// The order of `sort`: its key, then the id, both in the sort's direction; tasks without a due
/// date last in both directions.
fn compare(sort: &str, a: &Value, b: &Value) -> Ordering {
    let (key, desc) = match sort.strip_prefix('-') {
        Some(k) => (k, true),
        None => (sort, false),
    };
    let by_key = match key {
        "createdAt" => Ordering::Equal,
        "updatedAt" => a["updatedAt"]
            .as_str()
            .unwrap()
            .cmp(b["updatedAt"].as_str().unwrap()),
        "priority" => rank(a).cmp(&rank(b)),
        "position" => a["position"]
            .as_f64()
            .unwrap()
            .total_cmp(&b["position"].as_f64().unwrap()),
        "dueDate" => match (a["dueDate"].as_str(), b["dueDate"].as_str()) {
            (None, Some(_)) => return Ordering::Greater,
            (Some(_), None) => return Ordering::Less,
            (x, y) => x.cmp(&y),
        },
        other => panic!("no sort {other}"),
    };
    let o = by_key.then(id_of(a).cmp(&id_of(b)));
    if desc { o.reverse() } else { o }
}

#[derive(Debug, Default, Clone)]
struct Filter {
    board: Option<Uuid>,
    statuses: Vec<&'static str>,
    priorities: Vec<&'static str>,
    /// `Some(None)`: `assigneeUserId=none`.
    assignee: Option<Option<Uuid>>,
    labels: Vec<Uuid>,
    due_after: Option<String>,
    due_before: Option<String>,
    q: Option<String>,
    sort: Option<&'static str>,
}

impl Filter {
    fn query(&self) -> String {
        let mut p: Vec<String> = Vec::new();
        if let Some(b) = self.board {
            p.push(format!("boardId={b}"));
        }
        p.extend(self.statuses.iter().map(|s| format!("status={s}")));
        p.extend(self.priorities.iter().map(|s| format!("priority={s}")));
        match self.assignee {
            Some(Some(u)) => p.push(format!("assigneeUserId={u}")),
            Some(None) => p.push("assigneeUserId=none".into()),
            None => {}
        }
        p.extend(self.labels.iter().map(|l| format!("labelId={l}")));
        if let Some(d) = &self.due_after {
            p.push(format!("dueAfter={d}"));
        }
        if let Some(d) = &self.due_before {
            p.push(format!("dueBefore={d}"));
        }
        if let Some(q) = &self.q {
            p.push(format!("q={}", urlencode(q)));
        }
        if let Some(s) = self.sort {
            p.push(format!("sort={}", urlencode(s)));
        }
        p.join("&")
    }

    fn matches(&self, t: &Value) -> bool {
        let s = |k: &str| t[k].as_str();
        self.board
            .is_none_or(|b| s("boardId") == Some(b.to_string().as_str()))
            && (self.statuses.is_empty() || self.statuses.contains(&s("status").unwrap()))
            && (self.priorities.is_empty() || self.priorities.contains(&s("priority").unwrap()))
            && self
                .assignee
                .is_none_or(|a| s("assigneeUserId").map(|x| x.parse::<Uuid>().unwrap()) == a)
            && self.labels.iter().all(|l| {
                t["labelIds"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(l.to_string()))
            })
            && self
                .due_after
                .as_deref()
                .is_none_or(|d| s("dueDate").is_some_and(|x| x >= d))
            && self
                .due_before
                .as_deref()
                .is_none_or(|d| s("dueDate").is_some_and(|x| x <= d))
            && self.q.as_deref().is_none_or(|q| text_matches(t, q))
    }

    /// The model's answer: matching tasks in the sort's order.
    fn expected(&self, model: &BTreeMap<Uuid, Value>) -> Vec<Uuid> {
        let mut hits: Vec<&Value> = model.values().filter(|t| self.matches(t)).collect();
        let sort = self.sort.unwrap_or("createdAt");
        hits.sort_by(|a, b| compare(sort, a, b));
        hits.into_iter().map(id_of).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The data
// ---------------------------------------------------------------------------------------------

struct Fixture {
    _srv: TestServer,
    api: Api,
    owner: AuthResponse,
    team: Team,
    boards: Vec<Uuid>,
    /// The owner and two members: the assignees.
    users: Vec<Uuid>,
    labels: Vec<Uuid>,
    other: Team,
    other_board: Uuid,
    other_label: Uuid,
    /// The team's tasks as last served by a write (the model).
    model: BTreeMap<Uuid, Value>,
    /// The other team's tasks.
    other_tasks: HashSet<Uuid>,
    rng: Rng,
    seed: u64,
}

fn tasks_path(team: Uuid) -> String {
    format!("/api/v1/teams/{team}/tasks")
}

pub(crate) fn random_text(rng: &mut Rng, min: usize, max: usize) -> String {
    let n = min + rng.below(max - min + 1);
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            let piece: &str = rng.pick::<&str>(SEPARATORS);
            s.push_str(piece);
        }
        let piece: &str = rng.pick::<&str>(VOCAB);
        s.push_str(piece);
    }
    s
}

fn random_date(rng: &mut Rng) -> String {
    format!("2027-03-{:02}", 1 + rng.below(20))
}

impl Fixture {
    async fn new(b: Backend, name: &str) -> Fixture {
        let seed = Rng::seed_from_env();
        eprintln!("{name} ({b:?}) seed = {seed} (set TASKFORGE_TEST_SEED={seed} to replay)");
        let srv = TestServer::start(b).await;
        let api = srv.client();
        let owner = api.new_user("Owner").await;
        let tok = owner.token();
        let team = api.create_team(tok, "Filters").await;
        let m1 = api.member(tok, team.id, "M1", "member").await;
        let m2 = api.member(tok, team.id, "M2", "member").await;
        let b2 = api.create_board(tok, team.id, "Second").await.id;
        let mut labels = Vec::new();
        for i in 0..6 {
            labels.push(
                api.create_label(tok, team.id, &format!("label {i}"), "#000000")
                    .await
                    .id,
            );
        }
        // Another team of the same user, with the same words, labels and dates.
        let other = api.create_team(tok, "Other").await;
        let other_label = api
            .create_label(tok, other.id, "label 0", "#000000")
            .await
            .id;
        Fixture {
            _srv: srv,
            api,
            users: vec![owner.id(), m1.id(), m2.id()],
            owner,
            boards: vec![team.default_board_id, b2],
            team,
            labels,
            other_board: other.default_board_id,
            other,
            other_label,
            model: BTreeMap::new(),
            other_tasks: HashSet::new(),
            rng: Rng::new(seed),
            seed,
        }
    }

    fn tok(&self) -> String {
        self.owner.token().to_owned()
    }

    fn random_task_body(&mut self) -> Value {
        let rng = &mut self.rng;
        let mut body = json!({"title": random_text(rng, 1, 4)});
        match rng.below(10) {
            0..=2 => {}
            3 => body["description"] = json!(""),
            _ => body["description"] = json!(random_text(rng, 1, 10)),
        }
        if rng.chance(80) {
            body["status"] = json!(*rng.pick(STATUSES));
        }
        if rng.chance(80) {
            body["priority"] = json!(*rng.pick(PRIORITIES));
        }
        if rng.chance(75) {
            body["assigneeUserId"] = json!(rng.pick(&self.users));
        }
        if rng.chance(70) {
            body["dueDate"] = json!(random_date(rng));
        }
        if rng.chance(30) {
            body["boardId"] = json!(self.boards[1]);
        }
        if rng.chance(25) {
            // Ties: the id decides.
            body["position"] = json!(rng.pick(&[1.0, 2.0, 2.5, 10.0]));
        }
        let labels: Vec<Uuid> = self
            .labels
            .iter()
            .copied()
            .filter(|_| rng.chance(30))
            .collect();
        if !labels.is_empty() || rng.chance(50) {
            body["labelIds"] = json!(labels);
        }
        body
    }

    async fn create_random(&mut self) -> Uuid {
        let body = self.random_task_body();
        let r = self
            .api
            .post(&tasks_path(self.team.id), &self.tok(), body)
            .await;
        let t = r.ok(201).clone();
        let id = id_of(&t);
        self.model.insert(id, t);
        id
    }

    /// A PATCH of a few random fields of a random task.
    async fn patch_random(&mut self) -> Uuid {
        let ids: Vec<Uuid> = self.model.keys().copied().collect();
        let id = *self.rng.pick(&ids);
        let rng = &mut self.rng;
        let mut body = json!({});
        while body.as_object().unwrap().is_empty() {
            if rng.chance(30) {
                body["status"] = json!(*rng.pick(STATUSES));
            }
            if rng.chance(30) {
                body["priority"] = json!(*rng.pick(PRIORITIES));
            }
            if rng.chance(20) {
                body["assigneeUserId"] = match rng.below(4) {
                    0 => Value::Null,
                    i => json!(self.users[i - 1]),
                };
            }
            if rng.chance(20) {
                body["dueDate"] = if rng.chance(30) {
                    Value::Null
                } else {
                    json!(random_date(rng))
                };
            }
            if rng.chance(20) {
                body["title"] = json!(random_text(rng, 1, 4));
            }
            if rng.chance(15) {
                body["description"] = json!(random_text(rng, 0, 8));
            }
            if rng.chance(20) {
                body["position"] = json!(rng.pick(&[0.5, 1.0, 2.0, 7.25, 10.0]));
            }
            if rng.chance(10) {
                body["boardId"] = json!(rng.pick(&self.boards));
            }
            if rng.chance(25) {
                let l: Vec<Uuid> = self
                    .labels
                    .iter()
                    .copied()
                    .filter(|_| rng.chance(30))
                    .collect();
                body["labelIds"] = json!(l);
            }
        }
        let r = self.api.patch_task(&self.tok(), id, body).await;
        self.model.insert(id, r.ok(200).clone());
        id
    }

    async fn delete_random(&mut self) -> Uuid {
        let ids: Vec<Uuid> = self.model.keys().copied().collect();
        let id = *self.rng.pick(&ids);
        self.api
            .delete(&format!("/api/v1/tasks/{id}"), &self.tok())
            .await
            .ok(204);
        self.model.remove(&id);
        id
    }

    /// `n` tasks, then edits and a few deletes; the other team gets tasks of the same words.
    async fn populate(&mut self, n: usize) {
        for _ in 0..n {
            self.create_random().await;
        }
        for _ in 0..(n / 3 + self.rng.below(n / 3 + 1)) {
            self.patch_random().await;
        }
        for _ in 0..3 {
            self.delete_random().await;
        }
        for i in 0..25 {
            let mut body = self.random_task_body();
            // The other team's own labels and board; the same assignee (the owner) and words.
            body["labelIds"] = if i % 2 == 0 {
                json!([self.other_label])
            } else {
                json!([])
            };
            body["assigneeUserId"] = json!(self.users[0]);
            body["boardId"] = json!(self.other_board);
            let t = self
                .api
                .post(&tasks_path(self.other.id), &self.tok(), body)
                .await
                .ok(201)
                .clone();
            self.other_tasks.insert(id_of(&t));
        }
        // The model is what the server serves.
        let served = self
            .api
            .all_pages(
                &self.tok(),
                &format!("{}?limit=200", tasks_path(self.team.id)),
            )
            .await;
        assert_eq!(served.len(), self.model.len(), "seed {}", self.seed);
        for t in &served {
            assert_eq!(
                Some(t),
                self.model.get(&id_of(t)),
                "seed {}: the list serves the task as its last write answered",
                self.seed
            );
        }
    }

    fn random_query_word(&mut self) -> String {
        let rng = &mut self.rng;
        if rng.chance(5) {
            return "xyzzy".into();
        }
        let w: Vec<char> = (*rng.pick(VOCAB)).chars().collect();
        let n = if rng.chance(50) {
            w.len()
        } else {
            1 + rng.below(w.len())
        };
        let w: String = w[..n].iter().collect();
        match rng.below(3) {
            0 => w.to_uppercase(),
            1 => w.to_lowercase(),
            _ => w,
        }
    }

    fn random_filter(&mut self) -> Filter {
        let mut f = Filter::default();
        if self.rng.chance(25) {
            f.board = Some(*self.rng.pick(&self.boards));
        }
        if self.rng.chance(30) {
            let n = 1 + self.rng.below(2);
            f.statuses = self.distinct(STATUSES, n);
        }
        if self.rng.chance(30) {
            let n = 1 + self.rng.below(2);
            f.priorities = self.distinct(PRIORITIES, n);
        }
        if self.rng.chance(25) {
            f.assignee = Some(match self.rng.below(4) {
                0 => None,
                i => Some(self.users[i - 1]),
            });
        }
        if self.rng.chance(25) {
            let n = 1 + self.rng.below(2);
            let labels = self.labels.clone();
            f.labels = self.distinct(&labels, n);
        }
        if self.rng.chance(20) {
            f.due_after = Some(random_date(&mut self.rng));
        }
        if self.rng.chance(20) {
            f.due_before = Some(random_date(&mut self.rng));
        }
        // An inverted range is not a filter the contract defines an answer for.
        if let (Some(a), Some(b)) = (&f.due_after, &f.due_before)
            && a > b
        {
            std::mem::swap(&mut f.due_after, &mut f.due_before);
        }
        if self.rng.chance(30) {
            let n = 1 + self.rng.below(2);
            let mut q = String::new();
            for i in 0..n {
                if i > 0 {
                    let piece: &str = self.rng.pick::<&str>(&[" ", "  ", ",", " - "]);
                    q.push_str(piece);
                }
                q.push_str(&self.random_query_word());
            }
            f.q = Some(q);
        }
        if self.rng.chance(85) {
            f.sort = Some(*self.rng.pick(SORTS));
        }
        f
    }

    fn distinct<T: Copy + PartialEq>(&mut self, from: &[T], n: usize) -> Vec<T> {
        let mut out: Vec<T> = Vec::new();
        while out.len() < n.min(from.len()) {
            let x = *self.rng.pick(from);
            if !out.contains(&x) {
                out.push(x);
            }
        }
        out
    }
}

/// One page: asserts 200, the seq header and the page's shape; returns (items, nextCursor).
async fn page(api: &Api, tok: &str, url: &str, limit: usize) -> (Vec<Value>, Option<String>) {
    let r = api.get(url, tok).await;
    let body = r.ok(200);
    r.seq();
    let items = body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{url}: no items: {}", r.text))
        .clone();
    assert!(items.len() <= limit, "{url}: {} items", items.len());
    let next = match &body["nextCursor"] {
        Value::Null => None,
        Value::String(c) => {
            assert_eq!(
                items.len(),
                limit,
                "{url}: a page before the last must be full"
            );
            Some(c.clone())
        }
        other => panic!("{url}: nextCursor {other}"),
    };
    (items, next)
}

fn with_cursor(base: &str, cursor: &Option<String>) -> String {
    match cursor {
        Some(c) => format!("{base}&cursor={}", urlencode(c)),
        None => base.to_owned(),
    }
}

/// Every page of `query` with `limit`, concatenated.
async fn walk(api: &Api, tok: &str, team: Uuid, query: &str, limit: usize) -> Vec<Value> {
    let base = format!("{}?{query}&limit={limit}", tasks_path(team));
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..2_000 {
        let (items, next) = page(api, tok, &with_cursor(&base, &cursor), limit).await;
        out.extend(items);
        match next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
    panic!("{base}: more than 2,000 pages");
}

/// The first place two id lists differ, for failure messages.
fn first_difference(want: &[Uuid], got: &[Uuid]) -> String {
    let i = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    format!(
        "expected {} ids, got {}; first difference at {i}: expected {:?}, got {:?}",
        want.len(),
        got.len(),
        want.get(i),
        got.get(i)
    )
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

async fn filters_and_sorts_against_a_model(b: Backend) {
    let mut fx = Fixture::new(b, "filters_and_sorts_against_a_model").await;
    let n = 120 + fx.rng.below(81);
    fx.populate(n).await;
    let tok = fx.tok();
    let started = Instant::now();

    // Every sort over everything first, then random combinations.
    let mut filters: Vec<Filter> = SORTS
        .iter()
        .map(|s| Filter {
            sort: Some(s),
            ..Filter::default()
        })
        .collect();
    for _ in 0..250 {
        filters.push(fx.random_filter());
    }
    let mut nonempty = 0;
    let mut walked = 0;
    for f in &filters {
        // Bounded in time as well as in count (a slow CI machine walks fewer).
        if walked >= SORTS.len() && started.elapsed() > Duration::from_secs(120) {
            break;
        }
        let limit = 1 + fx.rng.below(7);
        let query = f.query();
        let got = walk(&fx.api, &tok, fx.team.id, &query, limit).await;
        let got_ids: Vec<Uuid> = got.iter().map(id_of).collect();
        let want = f.expected(&fx.model);
        assert!(
            got_ids == want,
            "seed {}: GET tasks?{query}&limit={limit}: {}\n  filter {f:?}\n  got (first 40): {}",
            fx.seed,
            first_difference(&want, &got_ids),
            got.iter()
                .take(40)
                .map(|t| format!(
                    "{} {} {} due={} pos={} upd={} {:?}",
                    t["id"],
                    t["status"],
                    t["priority"],
                    t["dueDate"],
                    t["position"],
                    t["updatedAt"],
                    t["title"]
                ))
                .collect::<Vec<_>>()
                .join("\n    ")
        );
        for t in &got {
            assert_eq!(Some(t), fx.model.get(&id_of(t)), "seed {}", fx.seed);
        }
        if !want.is_empty() {
            nonempty += 1;
        }
        walked += 1;
    }
    eprintln!(
        "seed {}: {n} tasks, {walked} filter walks ({nonempty} non-empty) in {:?}",
        fx.seed,
        started.elapsed()
    );
    assert!(
        nonempty * 3 >= walked,
        "seed {}: too few walks found anything ({nonempty} of {walked}): the test proves little",
        fx.seed
    );

    // The other team's tasks never appear, whatever names them.
    let team_path = tasks_path(fx.team.id);
    for q in [
        format!("boardId={}", fx.other_board),
        format!("labelId={}", fx.other_label),
        format!("labelId={}&labelId={}", fx.labels[0], fx.other_label),
    ] {
        let r = fx.api.get(&format!("{team_path}?{q}"), &tok).await;
        if r.status == 200 {
            assert_eq!(
                r.json["items"],
                json!([]),
                "another team's board or label in a filter: {q}"
            );
        } else {
            assert!(
                r.status == 400 || r.status == 422,
                "{q}: {} {}",
                r.status,
                r.text
            );
        }
    }
    let everything = fx
        .api
        .all_pages(&tok, &format!("{team_path}?limit=200&q=a"))
        .await;
    assert!(
        everything
            .iter()
            .all(|t| !fx.other_tasks.contains(&id_of(t))),
        "another team's task in the list"
    );
    // And the other team's list has only its own.
    let theirs = fx
        .api
        .all_pages(&tok, &format!("{}?limit=200", tasks_path(fx.other.id)))
        .await;
    let theirs: HashSet<Uuid> = theirs.iter().map(id_of).collect();
    assert_eq!(theirs, fx.other_tasks);
}

/// Asserts a 422 problem that names `name` (in `errors` or in `detail`), as the contract says
/// for every malformed parameter of a task list.
#[track_caller]
pub(crate) fn assert_names_param(r: &Resp, name: &str) {
    assert!(
        r.status == 422,
        "{} {}: expected 422 naming {name}, got {}: {}",
        r.method,
        r.path,
        r.status,
        r.text
    );
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/problem+json"),
        "{} {}: content-type {ct}",
        r.method,
        r.path
    );
    let in_errors = r.json["errors"]
        .as_array()
        .is_some_and(|e| e.iter().any(|e| e["field"] == name));
    let in_detail = r.json["detail"].as_str().is_some_and(|d| d.contains(name));
    assert!(
        in_errors || in_detail,
        "{} {}: the problem does not name {name}: {}",
        r.method,
        r.path,
        r.text
    );
}

async fn filter_parameters_rejected(b: Backend) {
    let mut fx = Fixture::new(b, "filter_parameters_rejected").await;
    for _ in 0..6 {
        fx.create_random().await;
    }
    let tok = fx.tok();
    let path = tasks_path(fx.team.id);
    let label = fx.labels[0];
    let many_labels: String = (0..21)
        .map(|_| format!("labelId={}", Uuid::new_v4()))
        .collect::<Vec<_>>()
        .join("&");
    let long_q = "a".repeat(201);
    let cases: Vec<(String, &str)> = vec![
        ("status=bogus".into(), "status"),
        ("status=todo&status=nope".into(), "status"),
        ("priority=bogus".into(), "priority"),
        ("priority=HIGH".into(), "priority"),
        ("sort=bogus".into(), "sort"),
        ("sort=-bogus".into(), "sort"),
        ("sort=--createdAt".into(), "sort"),
        ("sort=created_at".into(), "sort"),
        ("sort=".into(), "sort"),
        ("assigneeUserId=nope".into(), "assigneeUserId"),
        ("boardId=nope".into(), "boardId"),
        ("labelId=nope".into(), "labelId"),
        (format!("labelId={label}&labelId=x"), "labelId"),
        (many_labels, "labelId"),
        ("dueAfter=2027-02-30".into(), "dueAfter"),
        ("dueAfter=2027-1-05".into(), "dueAfter"),
        ("dueAfter=tomorrow".into(), "dueAfter"),
        ("dueBefore=27-01-01".into(), "dueBefore"),
        ("dueBefore=2027-01-01T00:00:00Z".into(), "dueBefore"),
        ("q=".into(), "q"),
        (format!("q={long_q}"), "q"),
        ("limit=0".into(), "limit"),
        ("limit=-1".into(), "limit"),
        ("limit=x".into(), "limit"),
        ("cursor=garbage!!".into(), "cursor"),
    ];
    for (q, name) in &cases {
        let r = fx.api.get(&format!("{path}?{q}"), &tok).await;
        assert_names_param(&r, name);
    }
    // The edges that are fine.
    fx.api
        .get(&format!("{path}?limit=200&q={}", "a".repeat(200)), &tok)
        .await
        .ok(200);
    let all_six: String = fx
        .labels
        .iter()
        .map(|l| format!("labelId={l}"))
        .collect::<Vec<_>>()
        .join("&");
    fx.api.get(&format!("{path}?{all_six}"), &tok).await.ok(200);
    // An inverted range of days is refused, naming its lower bound.
    let r = fx
        .api
        .get(
            &format!("{path}?dueAfter=2027-03-02&dueBefore=2027-03-01"),
            &tok,
        )
        .await;
    assert_names_param(&r, "dueAfter");
    // Past the maximum, the limit is clamped to 200 (as before filters existed).
    fx.api.get(&format!("{path}?limit=201"), &tok).await.ok(200);

    // A cursor is only valid with the sort it was issued for.
    for (issued, used) in [
        ("priority", Some("updatedAt")),
        ("priority", None),
        ("priority", Some("-priority")),
        ("-createdAt", Some("createdAt")),
        ("createdAt", Some("dueDate")),
        ("dueDate", Some("position")),
    ] {
        let r = fx
            .api
            .get(&format!("{path}?sort={issued}&limit=1"), &tok)
            .await;
        let cursor = r.ok(200)["nextCursor"]
            .as_str()
            .unwrap_or_else(|| panic!("sort={issued}&limit=1 of 6 tasks: no nextCursor"))
            .to_owned();
        let url = match used {
            Some(s) => format!("{path}?sort={s}&limit=1&cursor={}", urlencode(&cursor)),
            None => format!("{path}?limit=1&cursor={}", urlencode(&cursor)),
        };
        let r = fx.api.get(&url, &tok).await;
        assert_names_param(&r, "cursor");
        // With its own sort it works.
        fx.api
            .get(
                &format!("{path}?sort={issued}&limit=1&cursor={}", urlencode(&cursor)),
                &tok,
            )
            .await
            .ok(200);
    }

    // Words: each used up to its first 50 characters; the first 10 are used.
    let long_word = format!("{}{}", "k".repeat(50), "x".repeat(10));
    let t = fx
        .api
        .create_task(
            &tok,
            fx.team.id,
            json!({"title": format!("lw {long_word}")}),
        )
        .await;
    let q = format!("{}{}", "k".repeat(50), "y".repeat(10));
    let got = fx.api.all_pages(&tok, &format!("{path}?q={q}")).await;
    assert_eq!(
        got.iter().map(id_of).collect::<Vec<_>>(),
        [t.id],
        "a query word is cut to its first 50 characters"
    );
    // Eleven words, of which the last begins no word of any task.
    let eleven = format!("lw {} a b c d e f g h xyzzy", "k".repeat(5));
    let t2 = fx
        .api
        .create_task(
            &tok,
            fx.team.id,
            json!({"title": "lw kkkkk", "description": "alpha beta cat dog eel fox gnu hen"}),
        )
        .await;
    let r = fx
        .api
        .get(&format!("{path}?q={}", urlencode(&eleven)), &tok)
        .await;
    {
        assert_eq!(
            r.json["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(id_of)
                .collect::<Vec<_>>(),
            [t2.id],
            "only the first 10 words of q are used: {}",
            r.text
        );
    }

    // A non-member: 404, whatever the parameters.
    let stranger = fx.api.new_user("Stranger").await;
    fx.api
        .get(
            &format!("{path}?status=todo&sort=-priority"),
            stranger.token(),
        )
        .await
        .problem(404, "not_found");
}

/// Key-set pages: while writes land between pages (edits that move tasks in the sort, new
/// tasks, deletes), every task that did not change appears exactly once, in the sort's order.
async fn writes_between_pages_skip_nothing(b: Backend) {
    let mut fx = Fixture::new(b, "writes_between_pages_skip_nothing").await;
    fx.populate(60).await;
    let tok = fx.tok();
    let mut sorts: Vec<Filter> = SORTS
        .iter()
        .map(|s| Filter {
            sort: Some(s),
            ..Filter::default()
        })
        .collect();
    sorts.push(Filter {
        statuses: vec!["todo", "in_progress"],
        sort: Some("-dueDate"),
        ..Filter::default()
    });
    for f in sorts {
        let before = fx.model.clone();
        let limit = 2 + fx.rng.below(4);
        let query = f.query();
        let base = format!("{}?{query}&limit={limit}", tasks_path(fx.team.id));
        let mut got: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut touched: HashSet<Uuid> = HashSet::new();
        for _ in 0..500 {
            let (items, next) = page(&fx.api, &tok, &with_cursor(&base, &cursor), limit).await;
            got.extend(items);
            let Some(c) = next else { break };
            cursor = Some(c);
            // 1-2 writes between pages.
            for _ in 0..1 + fx.rng.below(2) {
                let id = match fx.rng.below(10) {
                    0..=5 => fx.patch_random().await,
                    6..=8 => fx.create_random().await,
                    _ => fx.delete_random().await,
                };
                touched.insert(id);
            }
        }
        // Unchanged: in the model before and after, with the same JSON as served now.
        let now: HashMap<Uuid, Value> = fx
            .api
            .all_pages(&tok, &format!("{}?limit=200", tasks_path(fx.team.id)))
            .await
            .into_iter()
            .map(|t| (id_of(&t), t))
            .collect();
        let unchanged: BTreeMap<Uuid, Value> = before
            .into_iter()
            .filter(|(id, t)| !touched.contains(id) && now.get(id) == Some(t))
            .collect();
        let want = f.expected(&unchanged);
        let unchanged_got: Vec<Uuid> = got
            .iter()
            .map(id_of)
            .filter(|id| unchanged.contains_key(id))
            .collect();
        assert!(
            unchanged_got == want,
            "seed {}: {query} limit {limit} with writes between pages: the unchanged tasks \
             must each come once, in order: {}",
            fx.seed,
            first_difference(&want, &unchanged_got)
        );
        let mut seen = HashSet::new();
        for t in &got {
            let id = id_of(t);
            assert!(
                seen.insert(id) || touched.contains(&id),
                "seed {}: {query}: an unchanged task {id} came twice",
                fx.seed
            );
            assert!(
                !fx.other_tasks.contains(&id),
                "another team's task {id} in the list"
            );
        }
    }
}
