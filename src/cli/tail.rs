//! `taskforge tail`: one team's (or board's, or task's) activities on the terminal, resuming with
//! `since` after every disconnect so nothing is missed or printed twice. `--inbox` follows the
//! user's notifications instead (`super::inbox`), through the same reconnect loop.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use taskforge::domain::{BoardId, TaskId, TeamId};
use taskforge::realtime::protocol::ErrorCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

use super::remote::Remote;

#[derive(Debug, clap::Args)]
// A team to follow, or the inbox: exactly one.
#[command(group(clap::ArgGroup::new("stream").required(true).args(["team", "inbox"])))]
pub struct TailArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080; default: the server of the most recent
    /// `taskforge login`.
    #[arg(long, env = "TASKFORGE_URL")]
    pub url: Option<String>,
    /// The team to follow: its id, or its name (case-insensitive, among your teams).
    #[arg(long)]
    pub team: Option<String>,
    /// Only this board's activities (a board of the team).
    #[arg(long, conflicts_with_all = ["task", "all"])]
    pub board: Option<BoardId>,
    /// Only this task's activities (a task of the team).
    #[arg(long, conflicts_with = "all")]
    pub task: Option<TaskId>,
    /// Everything of the team: its room, every board's and every task's (so task edits and
    /// comments too), each activity once, in seq order.
    #[arg(long)]
    pub all: bool,
    /// Start after this seq (replays what came after it); with `--inbox`, a seq of your inbox.
    #[arg(long)]
    pub since: Option<i64>,
    /// One JSON activity per line instead of the human-readable form (with `--inbox`, one inbox
    /// event per line, as the socket carries it).
    #[arg(long)]
    pub json: bool,
    /// Your notifications instead of a team's activities: the recent ones, then each new one.
    #[arg(long, conflicts_with_all = ["board", "task", "all"])]
    pub inbox: bool,
    /// With `--inbox`: how many recent notifications to print first (0 to 200; default 10).
    #[arg(
        long,
        requires = "inbox",
        conflicts_with_all = ["since", "team"],
        value_parser = clap::value_parser!(u32).range(0..=200)
    )]
    pub recent: Option<u32>,
}

/// Why one connection ended.
pub(super) enum End {
    /// Reconnect and resume.
    Dropped(String),
    /// The access token is no longer accepted: refresh it, then resume.
    TokenRejected,
}

pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Subscribes sent at once before pacing (the server allows bursts of 200 messages, 100 a second).
const SUBSCRIBE_BURST: usize = 100;
const SUBSCRIBE_PACE: Duration = Duration::from_millis(20);
/// With `--all`, how often the log is read when some task rooms could not be joined.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// A room: the subscribe (and unsubscribe) message's id field and value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Scope {
    field: &'static str,
    id: String,
}

impl Scope {
    fn team(id: TeamId) -> Self {
        Scope {
            field: "teamId",
            id: id.to_string(),
        }
    }
    fn board(id: &str) -> Self {
        Scope {
            field: "boardId",
            id: id.to_owned(),
        }
    }
    fn task(id: &str) -> Self {
        Scope {
            field: "taskId",
            id: id.to_owned(),
        }
    }
    /// The room an `error` or `unsubscribed` frame names, if any.
    fn of_frame(frame: &Value) -> Option<Self> {
        ["teamId", "boardId", "taskId"]
            .into_iter()
            .find_map(|field| {
                frame[field].as_str().map(|id| Scope {
                    field,
                    id: id.to_owned(),
                })
            })
    }
    fn frame(&self, kind: &str, since: Option<i64>) -> String {
        let mut msg = json!({"type": kind, self.field: self.id});
        if let Some(s) = since {
            msg["since"] = json!(s);
        }
        msg.to_string()
    }
}

pub(super) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Tail {
    args: TailArgs,
    remote: Remote,
    team: TeamId,
    /// The last seq printed (or the start point).
    cursor: Option<i64>,
    /// User id -> display name, for the human-readable form.
    names: HashMap<String, String>,
    /// With `--all`: the rooms this connection is in (or asked for).
    joined: HashSet<Scope>,
    /// With `--all`: the server refused more rooms, so the log is also read every `POLL_EVERY`.
    poll: bool,
    /// With `--all`: rooms that printed activities announced or ended, whichever way the
    /// activity came (a room or the log).
    changes: Vec<RoomChange>,
}

enum RoomChange {
    /// A new board or task: join its room, replaying after the announcement's seq.
    Join(Scope, Option<i64>),
    /// A deleted board or task: leave its room.
    Leave(Scope),
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    super::install_tls_provider();
    let remote = Remote::open(args.url.as_deref())?;
    realtime_url(&remote.url)?;
    if args.inbox {
        return super::inbox::run(args, remote).await;
    }
    let mut tail = Tail {
        cursor: args.since,
        args,
        remote,
        // Resolved right below, over HTTP with this session.
        team: TeamId::from(Uuid::nil()),
        names: HashMap::new(),
        joined: HashSet::new(),
        poll: false,
        changes: Vec::new(),
    };
    tail.team = tail.resolve_team().await?;
    if !tail.args.json {
        tail.load_names().await?;
    }
    follow(&mut tail).await
}

/// One way of following a stream: `follow` reconnects it and resumes after its cursor.
pub(super) trait Follower {
    /// One connection, until it ends.
    async fn stream(&mut self, backoff: &mut Duration) -> anyhow::Result<End>;
    fn remote(&mut self) -> &mut Remote;
    /// The last seq printed, which the next connection resumes after.
    fn cursor(&self) -> Option<i64>;
}

/// Runs connections one after the other, refreshing the session when the token is refused and
/// backing off (with jitter) after a drop; returns only with an error.
pub(super) async fn follow(f: &mut impl Follower) -> anyhow::Result<()> {
    let mut backoff = MIN_BACKOFF;
    loop {
        match f.stream(&mut backoff).await? {
            End::TokenRejected => {
                f.remote().renew().await?;
                continue;
            }
            End::Dropped(why) => {
                eprintln!(
                    "disconnected ({why}); resuming after seq {}",
                    show(f.cursor())
                );
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Opens `/realtime` and authenticates in a message, so the token is in no URL.
pub(super) async fn connect(remote: &Remote) -> anyhow::Result<Result<Socket, End>> {
    let url = realtime_url(&remote.url)?;
    let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok((ws, _)) => ws,
        Err(e) => return Ok(Err(End::Dropped(e.to_string()))),
    };
    let auth = json!({"type": "auth", "token": remote.session.access_token}).to_string();
    if ws.send(Message::text(auth)).await.is_err() {
        return Ok(Err(End::Dropped("could not send".into())));
    }
    Ok(Ok(ws))
}

/// How a close frame from the server ends the connection.
pub(super) fn closed(frame: Option<&CloseFrame>) -> End {
    match frame.map(|f| f.code) {
        Some(CloseCode::Library(4001)) => End::TokenRejected,
        code => End::Dropped(format!(
            "closed {}",
            code.map_or_else(|| "without a code".into(), |c| u16::from(c).to_string())
        )),
    }
}

/// Writes one line to stdout at once; exits quietly when the reader went away (`| head`).
pub(super) fn put_line(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

pub(super) fn show(cursor: Option<i64>) -> String {
    cursor.map_or_else(|| "(none)".into(), |s| s.to_string())
}

/// Full jitter on the upper half: reconnecting clients do not arrive together.
fn jittered(d: Duration) -> Duration {
    let half = d / 2;
    let spread = u64::try_from(half.as_millis()).unwrap_or(0).max(1);
    let r = u64::try_from(Uuid::new_v4().as_u128() % u128::from(spread)).unwrap_or(0);
    half + Duration::from_millis(r)
}

pub(super) fn realtime_url(base: &str) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        bail!("--url must start with http:// or https://")
    };
    Ok(format!("{ws}/realtime"))
}

impl Tail {
    /// `--team` as given: an id, or the name of exactly one of the user's teams.
    async fn resolve_team(&mut self) -> anyhow::Result<TeamId> {
        let given = self
            .args
            .team
            .as_deref()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if let Ok(id) = given.parse::<TeamId>() {
            return Ok(id);
        }
        if given.is_empty() {
            bail!("--team needs a team's id or name");
        }
        let me = self.remote.get("/me").await?;
        let teams: Vec<(String, String)> = me["teams"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|t| {
                Some((
                    t["team"]["name"].as_str()?.to_owned(),
                    t["team"]["id"].as_str()?.to_owned(),
                ))
            })
            .collect();
        let wanted = given.to_lowercase();
        let matches: Vec<&(String, String)> = teams
            .iter()
            .filter(|(name, _)| name.to_lowercase() == wanted)
            .collect();
        let list = |teams: &[&(String, String)]| {
            teams
                .iter()
                .map(|(name, id)| format!("  {name:?} {id}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        match matches.as_slice() {
            [(_, id)] => id
                .parse()
                .with_context(|| format!("the server gave the team id {id:?}")),
            [] if teams.is_empty() => {
                bail!("no team named {given:?}: you are not a member of any team")
            }
            [] => bail!(
                "no team named {given:?} among yours; your teams are:\n{}",
                list(&teams.iter().collect::<Vec<_>>())
            ),
            several => bail!(
                "{} of your teams are named {given:?}; pass --team with one of their ids:\n{}",
                several.len(),
                list(several)
            ),
        }
    }

    /// The team's members' display names, for printing actors.
    async fn load_names(&mut self) -> anyhow::Result<()> {
        let members = self
            .remote
            .get_all(&format!("/teams/{}/members", self.team))
            .await?;
        for m in &members {
            self.learn_name(&m["user"]);
        }
        Ok(())
    }

    fn learn_name(&mut self, user: &Value) {
        if let (Some(id), Some(name)) = (user["id"].as_str(), user["displayName"].as_str()) {
            self.names.insert(id.to_owned(), name.to_owned());
        }
    }

    /// The room `tail` follows besides (with `--all`) the boards' and tasks'.
    fn main_scope(&self) -> Scope {
        match (self.args.board, self.args.task) {
            (Some(board), _) => Scope::board(&board.to_string()),
            (_, Some(task)) => Scope::task(&task.to_string()),
            _ => Scope::team(self.team),
        }
    }

    /// Joins `scope` unless this connection is in it already.
    async fn join(&mut self, ws: &mut Socket, scope: Scope, since: Option<i64>) -> bool {
        if self.joined.contains(&scope) {
            return true;
        }
        let frame = scope.frame("subscribe", since);
        self.joined.insert(scope);
        ws.send(Message::text(frame)).await.is_ok()
    }

    async fn leave(&mut self, ws: &mut Socket, scope: Scope) -> bool {
        if !self.joined.remove(&scope) {
            return true;
        }
        ws.send(Message::text(scope.frame("unsubscribe", None)))
            .await
            .is_ok()
    }

    /// With `--all`: joins every board and task room of the team, as listed now.
    async fn join_all(&mut self, ws: &mut Socket) -> anyhow::Result<bool> {
        let boards = self
            .remote
            .get_all(&format!("/teams/{}/boards", self.team))
            .await?;
        let tasks = self
            .remote
            .get_all(&format!("/teams/{}/tasks", self.team))
            .await?;
        let scopes: Vec<Scope> = boards
            .iter()
            .filter_map(|b| b["id"].as_str().map(Scope::board))
            .chain(
                tasks
                    .iter()
                    .filter_map(|t| t["id"].as_str().map(Scope::task)),
            )
            .collect();
        for (i, scope) in scopes.into_iter().enumerate() {
            if self.poll && scope.field == "taskId" {
                break;
            }
            if i >= SUBSCRIBE_BURST {
                tokio::time::sleep(SUBSCRIBE_PACE).await;
            }
            let since = self.cursor;
            if !self.join(ws, scope, since).await {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// With `--all`: prints what the log holds after the cursor (what some room has not
    /// delivered yet), so that the output keeps the team's seq order without a gap.
    async fn catch_up(&mut self) -> anyhow::Result<()> {
        let Some(since) = self.cursor else {
            return Ok(());
        };
        let entries = self
            .remote
            .get_all(&format!("/teams/{}/activity?since={since}", self.team))
            .await?;
        for a in &entries {
            if a["seq"]
                .as_i64()
                .is_some_and(|s| s > self.cursor.unwrap_or(0))
            {
                self.print(a);
            }
        }
        Ok(())
    }

    fn print(&mut self, activity: &Value) {
        let seq = activity["seq"].as_i64();
        if seq.is_some() {
            self.cursor = seq;
        }
        if self.args.all {
            // New rooms of the team: joined from their announcement; gone ones: left.
            let change = match activity["type"].as_str() {
                Some("board.created") => activity["data"]["board"]["id"]
                    .as_str()
                    .map(|id| RoomChange::Join(Scope::board(id), seq)),
                Some("task.created") if !self.poll => activity["taskId"]
                    .as_str()
                    .map(|id| RoomChange::Join(Scope::task(id), seq)),
                Some("task.deleted") => activity["taskId"]
                    .as_str()
                    .map(|id| RoomChange::Leave(Scope::task(id))),
                Some("board.deleted") => activity["data"]["boardId"]
                    .as_str()
                    .map(|id| RoomChange::Leave(Scope::board(id))),
                _ => None,
            };
            self.changes.extend(change);
            // A bulk import names its tasks: their rooms carry their comments from now on.
            if activity["type"] == "task.imported" && !self.poll {
                let ids = activity["data"]["taskIds"].as_array().into_iter().flatten();
                self.changes.extend(
                    ids.filter_map(Value::as_str)
                        .map(|id| RoomChange::Join(Scope::task(id), seq)),
                );
            }
        }
        if matches!(
            activity["type"].as_str(),
            Some("member.added" | "member.updated")
        ) {
            self.learn_name(&activity["data"]["member"]["user"]);
        }
        let line = if self.args.json {
            activity.to_string()
        } else {
            human(activity, &self.names)
        };
        put_line(&line);
    }

    /// Joins and leaves the rooms that printed activities announced; false if a send failed.
    async fn apply_changes(&mut self, ws: &mut Socket) -> anyhow::Result<bool> {
        for (i, change) in std::mem::take(&mut self.changes).into_iter().enumerate() {
            // An import announces up to 1,000 rooms at once: paced like the first joins.
            if i >= SUBSCRIBE_BURST {
                tokio::time::sleep(SUBSCRIBE_PACE).await;
            }
            let sent = match change {
                RoomChange::Join(scope, since) => self.join(ws, scope, since).await,
                RoomChange::Leave(scope) => self.leave(ws, scope).await,
            };
            if !sent {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// An activity from any room: printed once, in seq order.
    async fn on_activity(&mut self, ws: &mut Socket, activity: &Value) -> anyhow::Result<bool> {
        // The user's own sockets also get their activities of other teams.
        if activity["teamId"].as_str() != Some(self.team.to_string().as_str()) {
            return Ok(true);
        }
        let seq = activity["seq"].as_i64();
        // A resume may repeat what was printed before the drop, and with `--all` one activity
        // reaches several rooms.
        if let (Some(seq), Some(c)) = (seq, self.cursor)
            && seq <= c
        {
            return Ok(true);
        }
        if self.args.all {
            if let (Some(seq), Some(c)) = (seq, self.cursor)
                && seq > c + 1
            {
                // Another room has not delivered what came between (yet): take it from the log.
                if let Err(e) = self.catch_up().await {
                    eprintln!("warning: could not read the log after seq {c}: {e:#}");
                }
            }
            let printed = matches!((seq, self.cursor), (Some(seq), Some(c)) if seq <= c);
            if !printed {
                self.print(activity);
            }
            return self.apply_changes(ws).await;
        }
        self.print(activity);
        Ok(true)
    }

    /// One connection: authenticate, subscribe (resuming after the cursor), print until it
    /// ends.
    async fn stream(&mut self, backoff: &mut Duration) -> anyhow::Result<End> {
        let mut ws = match connect(&self.remote).await? {
            Ok(ws) => ws,
            Err(end) => return Ok(end),
        };
        self.joined.clear();
        self.changes.clear();
        let main = self.main_scope();
        let since = self.cursor;
        if !self.join(&mut ws, main, since).await {
            return Ok(End::Dropped("could not send".into()));
        }
        // Listed after the team room is joined: a room created later is announced there.
        if self.args.all && !self.join_all(&mut ws).await? {
            return Ok(End::Dropped("could not send".into()));
        }
        loop {
            let next = if self.args.all && self.poll {
                match tokio::time::timeout(POLL_EVERY, ws.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        if let Err(e) = self.catch_up().await {
                            eprintln!("warning: could not read the log: {e:#}");
                        }
                        if !self.apply_changes(&mut ws).await? {
                            return Ok(End::Dropped("could not send".into()));
                        }
                        continue;
                    }
                }
            } else {
                ws.next().await
            };
            let Some(msg) = next else { break };
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(frame)) => return Ok(closed(frame.as_ref())),
                Ok(_) => continue,
                Err(e) => return Ok(End::Dropped(e.to_string())),
            };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let scope = Scope::of_frame(&frame);
            // Only the room followed without `--all` (the team's with it) ends the tail; a
            // board or task room of `--all` ends when its board or task is deleted.
            let essential = !self.args.all || scope.as_ref().is_none_or(|s| s.field == "teamId");
            match frame["type"].as_str() {
                Some("authenticated") => {}
                Some("subscribed") => {
                    *backoff = MIN_BACKOFF;
                    if self.cursor.is_none() {
                        self.cursor = frame["seq"].as_i64();
                    }
                }
                Some("activity") => {
                    let sent = self.on_activity(&mut ws, &frame["activity"]).await?;
                    if !sent {
                        return Ok(End::Dropped("could not send".into()));
                    }
                }
                Some("unsubscribed") if essential => {
                    bail!(
                        "the server ended the subscription: {}",
                        frame["reason"].as_str().unwrap_or("unsubscribed")
                    )
                }
                Some("unsubscribed") => {
                    if let Some(s) = scope {
                        self.joined.remove(&s);
                    }
                }
                Some("error") => match frame["code"].as_str().map(|c| (c, ErrorCode::parse(c))) {
                    Some((_, Some(ErrorCode::ResumeUnavailable))) => {
                        let scope = scope.unwrap_or_else(|| self.main_scope());
                        if essential {
                            eprintln!(
                                "warning: activities after seq {} are no longer in the log; continuing live (refetch to catch up)",
                                show(self.cursor)
                            );
                            self.cursor = None;
                        }
                        self.joined.remove(&scope);
                        if !self.join(&mut ws, scope, None).await {
                            return Ok(End::Dropped("could not send".into()));
                        }
                    }
                    Some((_, Some(ErrorCode::Forbidden))) if essential => {
                        bail!("not a member of that team, or no such board or task")
                    }
                    Some((_, Some(ErrorCode::Forbidden))) => {
                        // The board or task went away meanwhile.
                        if let Some(s) = scope {
                            self.joined.remove(&s);
                        }
                    }
                    Some((_, Some(ErrorCode::TooManySubscriptions))) if self.args.all => {
                        if let Some(s) = scope {
                            self.joined.remove(&s);
                        }
                        if !self.poll {
                            eprintln!(
                                "warning: the server allows no more rooms on one connection; comments on the tasks not joined are read from the log every {} s",
                                POLL_EVERY.as_secs()
                            );
                            self.poll = true;
                        }
                    }
                    Some((_, Some(ErrorCode::TokenExpired | ErrorCode::Unauthorized))) => {
                        return Ok(End::TokenRejected);
                    }
                    Some((code, _)) => eprintln!(
                        "server error {code}: {}",
                        frame["message"].as_str().unwrap_or("")
                    ),
                    None => {}
                },
                _ => {}
            }
        }
        Ok(End::Dropped("connection ended".into()))
    }
}

impl Follower for Tail {
    async fn stream(&mut self, backoff: &mut Duration) -> anyhow::Result<End> {
        Tail::stream(self, backoff).await
    }
    fn remote(&mut self) -> &mut Remote {
        &mut self.remote
    }
    fn cursor(&self) -> Option<i64> {
        self.cursor
    }
}

/// `#42 2026-11-25T19:03:04.123Z task.created by Ann "title"`.
fn human(a: &Value, names: &HashMap<String, String>) -> String {
    let seq = a["seq"]
        .as_i64()
        .map_or_else(|| "-".into(), |s| format!("#{s}"));
    let data = &a["data"];
    // The most telling text of the activity: a task's title, a comment's body, a name.
    let objects = [
        data,
        &data["task"],
        &data["comment"],
        &data["board"],
        &data["team"],
        &data["member"],
    ];
    let what = objects
        .iter()
        .flat_map(|o| ["title", "body", "name", "displayName"].map(|k| o[k].as_str()))
        .flatten()
        .next()
        .map(|s| format!(" {s:?}"))
        .or_else(|| {
            let tasks = data["taskIds"].as_array()?.len();
            let comments = data["commentCount"].as_u64().unwrap_or(0);
            Some(format!(" ({tasks} tasks, {comments} comments)"))
        })
        .unwrap_or_default();
    let actor = a["actorUserId"].as_str().unwrap_or("?");
    // Unknown ids (say, of a user who left before the tail started) stay as they are.
    let actor = names.get(actor).map_or(actor, String::as_str);
    format!(
        "{seq} {} {} by {actor}{what}",
        a["ts"].as_str().unwrap_or(""),
        a["type"].as_str().unwrap_or("?")
    )
}
