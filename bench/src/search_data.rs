//! The data of the `search` benchmark: a deterministic generator of teams' tasks (text drawn from
//! a Zipf-like vocabulary, statuses, priorities, assignees, due dates and labels spread), written
//! as SQL for the `sqlite3` shell or as `COPY` data for `psql`, straight into the server's schema.
//!
//! The same seed gives the same tasks on both backends, so their figures compare like for like.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{self, Write};

use uuid::Uuid;

/// SplitMix64: small, fast and good enough for spreading benchmark data; seeded, so a seed gives
/// the same data every time.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: no modulo bias worth speaking of for these sizes.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An index drawn with the given weights (not all zero).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut x = self.below(total.max(1));
        for (i, w) in weights.iter().enumerate() {
            let w = u64::from(*w);
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

/// Words of task trackers, most common first: the head of the vocabulary (the rest is made of
/// syllables). Rank 1 is the most frequent word.
const COMMON_WORDS: &[&str] = &[
    "the",
    "to",
    "and",
    "of",
    "in",
    "for",
    "on",
    "is",
    "when",
    "with",
    "fix",
    "error",
    "user",
    "page",
    "login",
    "not",
    "api",
    "update",
    "add",
    "test",
    "should",
    "after",
    "data",
    "from",
    "server",
    "button",
    "build",
    "release",
    "deploy",
    "be",
    "it",
    "report",
    "check",
    "new",
    "list",
    "crash",
    "issue",
    "team",
    "task",
    "board",
    "search",
    "label",
    "filter",
    "sort",
    "mobile",
    "web",
    "client",
    "admin",
    "email",
    "password",
    "reset",
    "session",
    "token",
    "cache",
    "database",
    "query",
    "index",
    "slow",
    "timeout",
    "retry",
    "upload",
    "download",
    "file",
    "image",
    "export",
    "import",
    "csv",
    "pdf",
    "sync",
    "offline",
    "notification",
    "settings",
    "profile",
    "account",
    "billing",
    "invoice",
    "payment",
    "checkout",
    "cart",
    "order",
    "customer",
    "support",
    "ticket",
    "docs",
    "readme",
    "migration",
    "schema",
    "config",
    "feature",
    "flag",
    "rollout",
    "metrics",
    "dashboard",
    "chart",
    "graph",
    "alert",
    "monitor",
    "log",
    "trace",
    "debug",
    "warning",
    "crashes",
    "broken",
    "missing",
    "wrong",
    "empty",
    "invalid",
    "duplicate",
    "remove",
    "rename",
    "move",
    "refactor",
    "cleanup",
    "improve",
    "support",
    "handle",
    "allow",
    "show",
    "hide",
    "display",
    "render",
    "layout",
    "style",
    "theme",
    "dark",
    "mode",
    "color",
    "font",
    "icon",
    "menu",
    "modal",
    "dialog",
    "form",
    "field",
    "input",
    "validation",
    "message",
    "text",
    "copy",
    "translation",
    "locale",
    "timezone",
    "date",
    "time",
    "calendar",
    "schedule",
    "reminder",
    "due",
    "priority",
    "status",
    "assignee",
    "comment",
    "mention",
    "link",
    "share",
    "permission",
    "role",
    "access",
    "security",
    "audit",
    "review",
    "design",
    "spec",
    "plan",
    "roadmap",
    "sprint",
    "backlog",
    "estimate",
    "blocked",
    "waiting",
    "done",
    "todo",
    "progress",
    "customer",
    "feedback",
    "survey",
    "onboarding",
    "signup",
    "invite",
    "member",
    "owner",
    "workspace",
    "project",
    "milestone",
    "version",
    "changelog",
    "hotfix",
    "patch",
    "regression",
    "performance",
    "memory",
    "leak",
    "cpu",
    "latency",
    "throughput",
    "queue",
    "worker",
    "job",
    "cron",
    "backup",
    "restore",
    "storage",
    "bucket",
    "region",
    "cluster",
    "node",
    "container",
    "image",
    "pipeline",
    "ci",
    "lint",
    "format",
    "compile",
    "dependency",
    "upgrade",
    "library",
    "framework",
    "browser",
    "safari",
    "chrome",
    "firefox",
    "android",
    "ios",
    "tablet",
    "desktop",
    "keyboard",
    "shortcut",
    "scroll",
    "click",
    "drag",
    "drop",
    "resize",
    "zoom",
    "print",
    "preview",
    "draft",
    "publish",
    "archive",
];

const ONSETS: &[&str] = &[
    "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br",
    "cr", "dr", "fl", "gr", "pl", "pr", "st", "tr", "sh", "ch", "th",
];
const NUCLEI: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"];
const CODAS: &[&str] = &["", "", "", "n", "r", "s", "l", "t", "m", "x", "nd", "rt"];

/// `size` distinct lower-case words: `COMMON_WORDS` first, then made-up words of 2–3 syllables.
pub fn vocabulary(size: usize) -> Vec<String> {
    let mut seen: HashSet<String> = HashSet::with_capacity(size);
    let mut words = Vec::with_capacity(size);
    for w in COMMON_WORDS {
        if words.len() < size && seen.insert((*w).to_string()) {
            words.push((*w).to_string());
        }
    }
    let mut rng = Rng::new(0x5EA2_C4B0);
    while words.len() < size {
        let syllables = 2 + rng.below(2);
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(ONSETS[rng.below(ONSETS.len() as u64) as usize]);
            w.push_str(NUCLEI[rng.below(NUCLEI.len() as u64) as usize]);
        }
        w.push_str(CODAS[rng.below(CODAS.len() as u64) as usize]);
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

/// Draws ranks `0..n` with probability proportional to `1 / (rank + 1)^s` (Zipf's law).
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut cumulative = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cumulative.push(total);
        }
        for c in &mut cumulative {
            *c /= total;
        }
        Self { cumulative }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let x = rng.unit();
        self.cumulative
            .partition_point(|c| *c <= x)
            .min(self.cumulative.len() - 1)
    }
}

/// The vocabulary's size and Zipf exponent.
pub const VOCABULARY: usize = 4000;
pub const ZIPF_S: f64 = 1.0;

/// One team as the server created it (over HTTP): its id, boards (the default one first), labels
/// and members (user ids; the owner first).
pub struct TeamShape {
    pub id: Uuid,
    pub boards: Vec<Uuid>,
    pub labels: Vec<Uuid>,
    pub members: Vec<Uuid>,
}

pub const STATUSES: [&str; 4] = ["todo", "in_progress", "done", "canceled"];
const STATUS_WEIGHTS: [u32; 4] = [35, 15, 40, 10];
/// In rank order: `priority_rank` is the index.
pub const PRIORITIES: [&str; 5] = ["none", "low", "medium", "high", "urgent"];
const PRIORITY_WEIGHTS: [u32; 5] = [30, 20, 25, 18, 7];
/// How many labels a task carries: 0, 1, 2 or 3.
const LABEL_COUNT_WEIGHTS: [u32; 4] = [40, 30, 20, 10];
/// Share of the team's tasks on each board, the default board first.
const BOARD_WEIGHTS: [u32; 4] = [40, 25, 20, 15];

const DAY_MS: i64 = 86_400_000;
/// Tasks were created over this many days before the seed time.
pub const HISTORY_DAYS: i64 = 730;

pub struct SeedPlan<'a> {
    pub teams: &'a [TeamShape],
    pub tasks_per_team: u64,
    pub seed: u64,
    /// Milliseconds since the epoch: the newest task is created just before it.
    pub now_ms: i64,
}

/// One generated task, in the server's terms.
pub struct TaskRow<'a> {
    pub id: Uuid,
    pub team: &'a TeamShape,
    pub board: Uuid,
    pub title: String,
    pub description: String,
    pub status: &'static str,
    pub priority_rank: usize,
    pub assignee: Option<Uuid>,
    pub due_date: Option<String>,
    pub position: f64,
    pub created_by: Uuid,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
    /// Ascending (the order of `tasks.label_ids`)
    pub labels: Vec<Uuid>,
}

impl TaskRow<'_> {
    pub fn label_ids_text(&self) -> String {
        let mut s = String::with_capacity(self.labels.len() * 37);
        for (i, l) in self.labels.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&l.hyphenated().to_string());
        }
        s
    }
}

/// A UUIDv7 for the millisecond `ms` with random bits from `rng`.
pub fn uuid_v7(ms: i64, rng: &mut Rng) -> Uuid {
    let ms = ms.max(0) as u64;
    let r1 = rng.next_u64();
    let r2 = rng.next_u64();
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..8]);
    b[6] = 0x70 | (r1 as u8 & 0x0f);
    b[7] = (r1 >> 8) as u8;
    b[8] = 0x80 | ((r1 >> 16) as u8 & 0x3f);
    b[9..16].copy_from_slice(&r2.to_be_bytes()[..7]);
    Uuid::from_bytes(b)
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD` of a day count since the epoch.
pub fn date_text(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 with milliseconds and `Z`, as the server writes timestamps on SQLite.
pub fn timestamp_text(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let in_day = ms.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

fn sentence_case(words: &[&str]) -> String {
    let mut s = String::with_capacity(words.len() * 8);
    for (i, w) in words.iter().enumerate() {
        if i == 0 {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                s.extend(f.to_uppercase());
                s.push_str(c.as_str());
            }
        } else {
            s.push(' ');
            s.push_str(w);
        }
    }
    s
}

/// Generates every team's tasks in creation (id) order, teams interleaved as they would be on a
/// shared server, and hands each to `emit`.
pub fn generate(
    plan: &SeedPlan<'_>,
    mut emit: impl FnMut(&TaskRow<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let words = vocabulary(VOCABULARY);
    let zipf = Zipf::new(words.len(), ZIPF_S);
    let mut rng = Rng::new(plan.seed);
    let teams = plan.teams.len() as u64;
    let total = plan.tasks_per_team * teams;
    if total == 0 {
        return Ok(());
    }
    let start_ms = plan.now_ms - HISTORY_DAYS * DAY_MS;
    let step = (HISTORY_DAYS * DAY_MS) as f64 / total as f64;
    // Positions grow per column (board, status), as the server appends to a column's end.
    let mut positions: Vec<Vec<[f64; 4]>> = plan
        .teams
        .iter()
        .map(|t| vec![[0.0; 4]; t.boards.len()])
        .collect();
    // Some labels are on many tasks, most on few.
    let label_zipf: Vec<Zipf> = plan
        .teams
        .iter()
        .map(|t| Zipf::new(t.labels.len().max(1), 0.8))
        .collect();
    let mut title_words: Vec<&str> = Vec::with_capacity(8);
    let mut desc_words: Vec<&str> = Vec::with_capacity(64);
    for g in 0..total {
        let ti = (g % teams) as usize;
        let team = &plan.teams[ti];
        let created_ms = start_ms + (g as f64 * step) as i64;
        let id = uuid_v7(created_ms, &mut rng);

        title_words.clear();
        for _ in 0..3 + rng.below(6) {
            title_words.push(&words[zipf.sample(&mut rng)]);
        }
        desc_words.clear();
        let n_desc = 10 + rng.below(51);
        let mut description = String::with_capacity(n_desc as usize * 8);
        // Sentences of 5–14 words.
        let mut left = n_desc;
        while left > 0 {
            let n = (5 + rng.below(10)).min(left);
            desc_words.clear();
            for _ in 0..n {
                desc_words.push(&words[zipf.sample(&mut rng)]);
            }
            if !description.is_empty() {
                description.push(' ');
            }
            description.push_str(&sentence_case(&desc_words));
            description.push('.');
            left -= n;
        }

        let bi = rng.weighted(&BOARD_WEIGHTS[..team.boards.len().min(BOARD_WEIGHTS.len())]);
        let si = rng.weighted(&STATUS_WEIGHTS);
        let priority_rank = rng.weighted(&PRIORITY_WEIGHTS);
        let members = team.members.len() as u64;
        // 20% unassigned; assignees skewed towards the first members (a few people do most work).
        let assignee = if rng.below(5) == 0 || members == 0 {
            None
        } else {
            let k = (rng.unit() * rng.unit() * members as f64) as usize;
            team.members.get(k).copied()
        };
        let created_by = team.members[rng.below(members.max(1)) as usize % team.members.len()];
        let created_day = created_ms.div_euclid(DAY_MS);
        // 60% have a due date, from a week before to three months after creation.
        let due_date =
            (rng.below(10) < 6).then(|| date_text(created_day - 7 + rng.below(98) as i64));
        let age = plan.now_ms - created_ms;
        // Most tasks were edited after creation, within 30 days (never after now).
        let (updated_ms, version) = if rng.below(10) < 7 {
            let later = (rng.below(30 * DAY_MS as u64) as i64).min(age.max(0));
            (created_ms + later, 2 + rng.below(6))
        } else {
            (created_ms, 1)
        };
        let mut labels = Vec::new();
        if !team.labels.is_empty() {
            let want = rng.weighted(&LABEL_COUNT_WEIGHTS).min(team.labels.len());
            while labels.len() < want {
                let l = team.labels[label_zipf[ti].sample(&mut rng)];
                if !labels.contains(&l) {
                    labels.push(l);
                }
            }
            labels.sort();
        }
        let column = &mut positions[ti][bi][si];
        *column += 1.0;
        let row = TaskRow {
            id,
            team,
            board: team.boards[bi],
            title: sentence_case(&title_words),
            description,
            status: STATUSES[si],
            priority_rank,
            assignee,
            due_date,
            position: *column,
            created_by,
            created_at: timestamp_text(created_ms),
            updated_at: timestamp_text(updated_ms),
            version,
            labels,
        };
        emit(&row)?;
    }
    Ok(())
}

fn blob(id: &Uuid) -> String {
    format!("X'{}'", id.simple())
}

/// Rows per multi-row INSERT on SQLite.
const SQLITE_BATCH: usize = 500;

/// SQL for the `sqlite3` shell: every task and its `task_labels` rows, in one transaction. The
/// FTS5 index follows through the schema's triggers.
pub fn write_sqlite(plan: &SeedPlan<'_>, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "BEGIN;")?;
    let mut tasks = String::with_capacity(1 << 20);
    let mut links = String::with_capacity(1 << 16);
    let mut in_batch = 0usize;
    let mut links_in_batch = 0usize;
    let flush = |tasks: &mut String, links: &mut String, out: &mut dyn Write| -> io::Result<()> {
        if !tasks.is_empty() {
            tasks.push_str(";\n");
            out.write_all(tasks.as_bytes())?;
            tasks.clear();
        }
        if !links.is_empty() {
            links.push_str(";\n");
            out.write_all(links.as_bytes())?;
            links.clear();
        }
        Ok(())
    };
    generate(plan, |t| {
        if in_batch == 0 {
            tasks.push_str(
                "INSERT INTO tasks (id, team_id, board_id, title, description, status, priority, \
                 assignee_user_id, due_date, position, created_by, created_at, updated_at, version, \
                 label_ids, priority_rank) VALUES\n",
            );
        } else {
            tasks.push_str(",\n");
        }
        let _ = write!(
            tasks,
            "({},{},{},'{}','{}','{}','{}',{},{},{:?},{},'{}','{}',{},'{}',{})",
            blob(&t.id),
            blob(&t.team.id),
            blob(&t.board),
            t.title.replace('\'', "''"),
            t.description.replace('\'', "''"),
            t.status,
            PRIORITIES[t.priority_rank],
            t.assignee.as_ref().map_or("NULL".to_string(), blob),
            t.due_date
                .as_ref()
                .map_or("NULL".to_string(), |d| format!("'{d}'")),
            t.position,
            blob(&t.created_by),
            t.created_at,
            t.updated_at,
            t.version,
            t.label_ids_text(),
            t.priority_rank,
        );
        in_batch += 1;
        for l in &t.labels {
            if links_in_batch == 0 {
                links.push_str("INSERT INTO task_labels (label_id, task_id) VALUES\n");
            } else {
                links.push_str(",\n");
            }
            let _ = write!(links, "({},{})", blob(l), blob(&t.id));
            links_in_batch += 1;
        }
        if in_batch >= SQLITE_BATCH {
            flush(&mut tasks, &mut links, out)?;
            in_batch = 0;
            links_in_batch = 0;
        }
        Ok(())
    })?;
    flush(&mut tasks, &mut links, out)?;
    writeln!(out, "COMMIT;")?;
    Ok(())
}

/// Input for `psql`: `COPY ... FROM STDIN` blocks for the tasks (the `search` column is generated)
/// and then their `task_labels` rows.
pub fn write_postgres(plan: &SeedPlan<'_>, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "COPY tasks (id, team_id, board_id, title, description, status, priority, \
         assignee_user_id, due_date, position, created_by, created_at, updated_at, version, \
         label_ids, priority_rank) FROM STDIN;"
    )?;
    // The links are few (about one per task): kept in memory until the tasks are in.
    let mut links: Vec<(Uuid, Uuid)> = Vec::new();
    let mut line = String::with_capacity(1024);
    generate(plan, |t| {
        line.clear();
        // COPY's text format: tabs between columns, \N for NULL; the text has no tab, newline or
        // backslash to escape.
        let _ = writeln!(
            line,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:?}\t{}\t{}\t{}\t{}\t{}\t{}",
            t.id.hyphenated(),
            t.team.id.hyphenated(),
            t.board.hyphenated(),
            t.title,
            t.description,
            t.status,
            PRIORITIES[t.priority_rank],
            t.assignee
                .map_or("\\N".to_string(), |a| a.hyphenated().to_string()),
            t.due_date.as_deref().unwrap_or("\\N"),
            t.position,
            t.created_by.hyphenated(),
            t.created_at,
            t.updated_at,
            t.version,
            t.label_ids_text(),
            t.priority_rank,
        );
        out.write_all(line.as_bytes())?;
        for l in &t.labels {
            links.push((*l, t.id));
        }
        Ok(())
    })?;
    writeln!(out, "\\.")?;
    writeln!(out, "COPY task_labels (label_id, task_id) FROM STDIN;")?;
    for (l, t) in &links {
        writeln!(out, "{}\t{}", l.hyphenated(), t.hyphenated())?;
    }
    writeln!(out, "\\.")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(date_text(0), "1970-01-01");
        assert_eq!(date_text(20_792), "2026-12-05");
        assert_eq!(
            timestamp_text(1_796_491_555_545),
            "2026-12-05T17:25:55.545Z"
        );
        assert_eq!(date_text(-1), "1969-12-31");
        assert_eq!(date_text(11_016), "2000-02-29");
    }

    #[test]
    fn uuid_v7_orders_by_time_and_has_its_version() {
        let mut rng = Rng::new(1);
        let a = uuid_v7(1_000, &mut rng);
        let b = uuid_v7(1_001, &mut rng);
        assert!(a < b);
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a.as_bytes()[8] & 0xc0, 0x80);
    }

    #[test]
    fn vocabulary_is_distinct_and_zipf_favours_the_head() {
        let words = vocabulary(VOCABULARY);
        assert_eq!(words.len(), VOCABULARY);
        assert_eq!(words.iter().collect::<HashSet<_>>().len(), VOCABULARY);
        assert!(
            words
                .iter()
                .all(|w| w.chars().all(|c| c.is_ascii_lowercase()))
        );
        let zipf = Zipf::new(words.len(), ZIPF_S);
        let mut rng = Rng::new(7);
        let mut head = 0;
        for _ in 0..10_000 {
            if zipf.sample(&mut rng) < 10 {
                head += 1;
            }
        }
        // The first 10 of 4000 ranks carry about a third of the mass at s = 1.
        assert!((2_500..4_000).contains(&head), "{head}");
    }

    #[test]
    fn tasks_follow_the_schema_rules() {
        let mut rng = Rng::new(3);
        let team = TeamShape {
            id: uuid_v7(1, &mut rng),
            boards: (0..4).map(|_| uuid_v7(2, &mut rng)).collect(),
            labels: (0..20).map(|k| uuid_v7(3 + k, &mut rng)).collect(),
            members: (0..20).map(|_| uuid_v7(4, &mut rng)).collect(),
        };
        let teams = [team];
        let plan = SeedPlan {
            teams: &teams,
            tasks_per_team: 2_000,
            seed: 9,
            now_ms: 1_796_491_555_545,
        };
        let mut last = Uuid::nil();
        let (mut unassigned, mut due, mut n) = (0, 0, 0);
        generate(&plan, |t| {
            n += 1;
            assert!(t.id > last, "ids ascend");
            last = t.id;
            let tw = t.title.split(' ').count();
            assert!((3..=8).contains(&tw), "{}", t.title);
            let dw = t.description.split(' ').count();
            assert!((10..=60).contains(&dw), "{}", t.description);
            assert!(t.labels.len() <= 3);
            assert!(t.labels.windows(2).all(|w| w[0] < w[1]));
            assert!(t.updated_at >= t.created_at);
            unassigned += usize::from(t.assignee.is_none());
            due += usize::from(t.due_date.is_some());
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2_000);
        assert!((300..500).contains(&unassigned), "{unassigned}");
        assert!((1_100..1_300).contains(&due), "{due}");
    }
}
