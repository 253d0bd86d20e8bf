//! `taskforge tail`: one team's (or board's, or task's) activities on the terminal, resuming with
//! `since` after every disconnect so nothing is missed or printed twice.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use taskforge::domain::{BoardId, TaskId, TeamId};
use taskforge::realtime::protocol::ErrorCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

use super::credentials::{self, Session};

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "TASKFORGE_URL")]
    pub url: String,
    /// The team to follow.
    #[arg(long)]
    pub team: TeamId,
    /// Only this board's activities (a board of the team).
    #[arg(long, conflicts_with = "task")]
    pub board: Option<BoardId>,
    /// Only this task's activities (a task of the team).
    #[arg(long)]
    pub task: Option<TaskId>,
    /// Start after this seq (replays what came after it).
    #[arg(long)]
    pub since: Option<i64>,
    /// One JSON activity per line instead of the human-readable form.
    #[arg(long)]
    pub json: bool,
}

/// Why one connection ended.
enum End {
    /// Reconnect and resume.
    Dropped(String),
    /// The access token is no longer accepted: refresh it, then resume.
    TokenRejected,
}

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    super::install_tls_provider();
    let mut session = credentials::load(&args.url)?.with_context(|| {
        format!(
            "not logged in to {}: run `taskforge login --url {} --email ...` first",
            args.url, args.url
        )
    })?;
    let mut cursor = args.since;
    let mut backoff = MIN_BACKOFF;
    loop {
        match stream(&args, &session.access_token, &mut cursor, &mut backoff).await? {
            End::TokenRejected => {
                session = renew(&args.url, &session).await?;
                continue;
            }
            End::Dropped(why) => {
                eprintln!("disconnected ({why}); resuming after seq {}", show(cursor));
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn show(cursor: Option<i64>) -> String {
    cursor.map_or_else(|| "(none)".into(), |s| s.to_string())
}

/// Full jitter on the upper half: reconnecting clients do not arrive together.
fn jittered(d: Duration) -> Duration {
    let half = d / 2;
    let spread = u64::try_from(half.as_millis()).unwrap_or(0).max(1);
    let r = u64::try_from(Uuid::new_v4().as_u128() % u128::from(spread)).unwrap_or(0);
    half + Duration::from_millis(r)
}

async fn renew(url: &str, session: &Session) -> anyhow::Result<Session> {
    let fresh = super::refresh(url, &session.refresh_token)
        .await
        .context("the session expired and could not be refreshed: run `taskforge login` again")?;
    let renewed = Session {
        email: session.email.clone(),
        access_token: fresh.access_token,
        refresh_token: fresh.refresh_token,
    };
    credentials::store(url, renewed.clone())?;
    Ok(renewed)
}

fn realtime_url(base: &str) -> anyhow::Result<String> {
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

fn subscribe_frame(args: &TailArgs, since: Option<i64>) -> String {
    let mut msg = match (args.board, args.task) {
        (Some(board), _) => json!({"type": "subscribe", "boardId": board}),
        (_, Some(task)) => json!({"type": "subscribe", "taskId": task}),
        _ => json!({"type": "subscribe", "teamId": args.team}),
    };
    if let Some(s) = since {
        msg["since"] = json!(s);
    }
    msg.to_string()
}

/// One connection: authenticate (in a message, so the token is in no URL), subscribe (resuming
/// after `cursor`), print until it ends.
async fn stream(
    args: &TailArgs,
    token: &str,
    cursor: &mut Option<i64>,
    backoff: &mut Duration,
) -> anyhow::Result<End> {
    let url = realtime_url(&args.url)?;
    let (mut ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(c) => c,
        Err(e) => return Ok(End::Dropped(e.to_string())),
    };
    let auth = json!({"type": "auth", "token": token}).to_string();
    if ws.send(Message::text(auth)).await.is_err()
        || ws
            .send(Message::text(subscribe_frame(args, *cursor)))
            .await
            .is_err()
    {
        return Ok(End::Dropped("could not send".into()));
    }
    let mut out = std::io::stdout().lock();
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(frame)) => {
                let code = frame.as_ref().map(|f| f.code);
                return Ok(match code {
                    Some(CloseCode::Library(4001)) => End::TokenRejected,
                    _ => End::Dropped(format!(
                        "closed {}",
                        code.map_or_else(|| "without a code".into(), |c| u16::from(c).to_string())
                    )),
                });
            }
            Ok(_) => continue,
            Err(e) => return Ok(End::Dropped(e.to_string())),
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match frame["type"].as_str() {
            Some("authenticated") => {}
            Some("subscribed") => {
                *backoff = MIN_BACKOFF;
                if cursor.is_none() {
                    *cursor = frame["seq"].as_i64();
                }
            }
            Some("activity") | Some("presence") => {
                let activity = &frame["activity"];
                // The user's own sockets also get their activities of other teams.
                if activity["teamId"].as_str() != Some(args.team.to_string().as_str()) {
                    continue;
                }
                if let Some(seq) = activity["seq"].as_i64() {
                    // A resume may repeat what was printed before the drop.
                    if cursor.is_some_and(|c| seq <= c) {
                        continue;
                    }
                    *cursor = Some(seq);
                }
                let line = if args.json {
                    activity.to_string()
                } else {
                    human(activity)
                };
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    std::process::exit(0); // the reader went away (e.g. `| head`)
                }
            }
            Some("unsubscribed") => {
                bail!(
                    "the server ended the subscription: {}",
                    frame["reason"].as_str().unwrap_or("unsubscribed")
                )
            }
            Some("error") => match frame["code"].as_str().map(|c| (c, ErrorCode::parse(c))) {
                Some((_, Some(ErrorCode::ResumeUnavailable))) => {
                    eprintln!(
                        "warning: activities after seq {} are no longer in the log; continuing live (refetch to catch up)",
                        show(*cursor)
                    );
                    *cursor = None;
                    if ws
                        .send(Message::text(subscribe_frame(args, None)))
                        .await
                        .is_err()
                    {
                        return Ok(End::Dropped("could not send".into()));
                    }
                }
                Some((_, Some(ErrorCode::Forbidden))) => {
                    bail!("not a member of that team, or no such board or task")
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

/// `#42 2026-11-25T19:03:04.123Z task.created by 0193… "title"`.
fn human(a: &Value) -> String {
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
        .unwrap_or_default();
    let actor = a["actorUserId"].as_str().unwrap_or("?");
    format!(
        "{seq} {} {} by {actor}{what}",
        a["ts"].as_str().unwrap_or(""),
        a["type"].as_str().unwrap_or("?")
    )
}
