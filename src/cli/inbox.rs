//! `taskforge tail --inbox`: the logged-in user's notifications on the terminal. The recent ones
//! come first (from `GET /me/notifications`), then every event of the inbox stream as it happens,
//! resuming with the stream's `since` after every disconnect so nothing is missed or printed twice.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use taskforge::realtime::protocol::ErrorCode;
use tokio_tungstenite::tungstenite::Message;

use super::remote::Remote;
use super::tail::{End, Follower, MIN_BACKOFF, Socket, TailArgs, closed, connect, put_line, show};

/// How many recent notifications are printed first unless `--recent` says otherwise.
const RECENT: u32 = 10;

struct Inbox {
    remote: Remote,
    json: bool,
    /// The last inbox seq printed (or the start point).
    cursor: Option<i64>,
}

pub async fn run(args: TailArgs, remote: Remote) -> anyhow::Result<()> {
    let mut inbox = Inbox {
        remote,
        json: args.json,
        cursor: args.since,
    };
    // With `--since` the subscription replays what came after it, which is the context asked for.
    if args.since.is_none() {
        inbox.print_recent(args.recent.unwrap_or(RECENT)).await?;
    }
    super::tail::follow(&mut inbox).await
}

/// `{"type":"subscribe","inbox":true}`, resuming after `since` if given.
fn subscribe(since: Option<i64>) -> String {
    let mut msg = json!({"type": "subscribe", "inbox": true});
    if let Some(s) = since {
        msg["since"] = json!(s);
    }
    msg.to_string()
}

impl Inbox {
    /// Prints the `n` newest notifications, oldest first, and starts the stream at the seq the
    /// page was read at: what happens after the read is replayed on subscribing.
    async fn print_recent(&mut self, n: u32) -> anyhow::Result<()> {
        // The seq is needed even when nothing is to be printed; the smallest page gives it.
        let page = self
            .remote
            .get(&format!("/me/notifications?limit={}", n.max(1)))
            .await?;
        let seq = page["seq"]
            .as_i64()
            .context("the server's inbox page has no seq")?;
        let items = page["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let shown = usize::try_from(n).unwrap_or(usize::MAX).min(items.len());
        // Newest first on the wire; a terminal reads best with the latest at the bottom.
        for item in items[..shown].iter().rev() {
            // The shape a replay would have, so that `--json` lines are the same either way.
            let event = json!({
                "type": "notification.created",
                "seq": item["seq"],
                "notification": item,
            });
            self.print(&event);
        }
        self.cursor = Some(seq);
        Ok(())
    }

    /// An event of the stream: printed once, in seq order.
    fn on_event(&mut self, event: &Value) {
        let seq = event["seq"].as_i64();
        // A resume may repeat what was printed before the drop.
        if let (Some(seq), Some(c)) = (seq, self.cursor)
            && seq <= c
        {
            return;
        }
        self.print(event);
    }

    fn print(&mut self, event: &Value) {
        if let Some(seq) = event["seq"].as_i64() {
            self.cursor = Some(seq);
        }
        let line = if self.json {
            event.to_string()
        } else {
            human(event)
        };
        put_line(&line);
    }

    /// One connection: authenticate, subscribe to the inbox (resuming after the cursor), print
    /// until it ends.
    async fn stream(&mut self, backoff: &mut Duration) -> anyhow::Result<End> {
        let mut ws: Socket = match connect(&self.remote).await? {
            Ok(ws) => ws,
            Err(end) => return Ok(end),
        };
        if ws
            .send(Message::text(subscribe(self.cursor)))
            .await
            .is_err()
        {
            return Ok(End::Dropped("could not send".into()));
        }
        while let Some(msg) = ws.next().await {
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(frame)) => return Ok(closed(frame.as_ref())),
                Ok(_) => continue,
                Err(e) => return Ok(End::Dropped(e.to_string())),
            };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            // Activities of the user's own room reach every socket of theirs: not asked for here.
            let about_inbox = frame["inbox"].as_bool() == Some(true);
            match frame["type"].as_str() {
                Some("subscribed") if about_inbox => {
                    *backoff = MIN_BACKOFF;
                    if self.cursor.is_none() {
                        self.cursor = frame["seq"].as_i64();
                    }
                }
                Some("notification.created" | "notification.read") => self.on_event(&frame),
                Some("unsubscribed") if about_inbox => bail!(
                    "the server ended the inbox subscription: {}",
                    frame["reason"].as_str().unwrap_or("unsubscribed")
                ),
                Some("error") => match frame["code"].as_str().map(|c| (c, ErrorCode::parse(c))) {
                    Some((_, Some(ErrorCode::ResumeUnavailable))) => {
                        // The stream has not reached the cursor: a server whose database was
                        // replaced, or a `--since` from elsewhere.
                        eprintln!(
                            "warning: the inbox has no seq {} yet; continuing live from its latest",
                            show(self.cursor)
                        );
                        self.cursor = None;
                        if ws.send(Message::text(subscribe(None))).await.is_err() {
                            return Ok(End::Dropped("could not send".into()));
                        }
                    }
                    Some((_, Some(ErrorCode::TokenExpired | ErrorCode::Unauthorized))) => {
                        return Ok(End::TokenRejected);
                    }
                    // The server could not read the inbox: it asks for a retry.
                    Some((_, Some(ErrorCode::Unavailable))) if about_inbox => {
                        return Ok(End::Dropped(format!(
                            "the server is unavailable: {}",
                            frame["message"].as_str().unwrap_or("")
                        )));
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

impl Follower for Inbox {
    async fn stream(&mut self, backoff: &mut Duration) -> anyhow::Result<End> {
        Inbox::stream(self, backoff).await
    }
    fn remote(&mut self) -> &mut Remote {
        &mut self.remote
    }
    fn cursor(&self) -> Option<i64> {
        self.cursor
    }
}

/// One inbox event as a line: a notification, unread ones marked with `*`,
/// `* #12 2026-12-05T10:00:00.000Z Ann mentioned you and commented on "Fix it": "look, @Bob"`,
/// or a mark-read, `  #13 marked read: 2 notifications; 4 unread`.
fn human(event: &Value) -> String {
    let seq = event["seq"]
        .as_i64()
        .map_or_else(|| "-".into(), |s| format!("#{s}"));
    if event["type"] == "notification.read" {
        let which = match (event["ids"].as_array(), event["upto"].as_i64()) {
            (Some(ids), _) if ids.len() == 1 => "1 notification".to_owned(),
            (Some(ids), _) => format!("{} notifications", ids.len()),
            (None, Some(upto)) => format!("up to #{upto}"),
            (None, None) => "some".to_owned(),
        };
        let unread = event["unreadCount"]
            .as_i64()
            .map_or_else(String::new, |n| format!("; {n} unread"));
        return format!("  {seq} marked read: {which}{unread}");
    }
    let n = &event["notification"];
    let mark = if n["readAt"].is_null() { '*' } else { ' ' };
    let reasons: Vec<&str> = n["reasons"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let excerpt = n["excerpt"]
        .as_str()
        .map(|e| format!(": {e:?}"))
        .unwrap_or_default();
    format!(
        "{mark} {seq} {} {} {} {:?}{excerpt}",
        n["createdAt"].as_str().unwrap_or(""),
        n["actorDisplayName"].as_str().unwrap_or("someone"),
        in_words(&reasons),
        n["taskTitle"].as_str().unwrap_or(""),
    )
}

/// The reasons as what the actor did, ending with the word that leads to the task's title:
/// `["mentioned", "commented"]` is "mentioned you and commented on".
fn in_words(reasons: &[&str]) -> String {
    let phrase = |reason: &str| -> (String, &'static str) {
        match reason {
            "assigned" => ("assigned you".into(), "to"),
            "mentioned" => ("mentioned you".into(), "in"),
            "commented" => ("commented".into(), "on"),
            "status_changed" => ("changed the status".into(), "of"),
            "task_deleted" => ("deleted".into(), ""),
            // A reason newer than this client: its name says enough.
            other => (other.replace('_', " "), "on"),
        }
    };
    let phrases: Vec<(String, &str)> = reasons.iter().map(|r| phrase(r)).collect();
    let Some(((_, to), first)) = phrases.split_last() else {
        return "notified you about".into();
    };
    let verbs: Vec<&str> = phrases.iter().map(|(v, _)| v.as_str()).collect();
    let mut words = match first.len() {
        0 => verbs.concat(),
        n => format!("{} and {}", verbs[..n].join(", "), verbs[n]),
    };
    if !to.is_empty() {
        words.push(' ');
        words.push_str(to);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_a_sentence() {
        assert_eq!(in_words(&["assigned"]), "assigned you to");
        assert_eq!(
            in_words(&["mentioned", "commented"]),
            "mentioned you and commented on"
        );
        assert_eq!(
            in_words(&["assigned", "mentioned", "status_changed"]),
            "assigned you, mentioned you and changed the status of"
        );
        assert_eq!(in_words(&["task_deleted"]), "deleted");
        assert_eq!(in_words(&["new_thing"]), "new thing on");
        assert_eq!(in_words(&[]), "notified you about");
    }

    #[test]
    fn a_notification_line_names_the_actor_the_task_and_marks_unread() {
        let n = |read_at: Value| {
            json!({"type": "notification.created", "seq": 12, "notification": {
                "seq": 12, "taskTitle": "Fix it", "reasons": ["mentioned", "commented"],
                "actorDisplayName": "Ann", "excerpt": "look, @Bob\nnow",
                "createdAt": "2026-12-05T10:00:00.000Z", "readAt": read_at,
            }})
        };
        let expected = " #12 2026-12-05T10:00:00.000Z Ann mentioned you and commented on \
                        \"Fix it\": \"look, @Bob\\nnow\"";
        assert_eq!(human(&n(Value::Null)), format!("*{expected}"));
        assert_eq!(
            human(&n(json!("2026-12-05T10:01:00.000Z"))),
            format!(" {expected}")
        );
        let deleted = json!({"type": "notification.created", "seq": 3, "notification": {
            "taskTitle": "Gone", "reasons": ["task_deleted"], "actorDisplayName": "Bo",
            "createdAt": "t", "readAt": null,
        }});
        assert_eq!(human(&deleted), "* #3 t Bo deleted \"Gone\"");
    }

    #[test]
    fn a_mark_read_line_says_what_was_read() {
        let by_ids = json!({"type": "notification.read", "seq": 13, "ids": ["a", "b"],
            "upto": null, "unreadCount": 4});
        assert_eq!(
            human(&by_ids),
            "  #13 marked read: 2 notifications; 4 unread"
        );
        let upto = json!({"type": "notification.read", "seq": 14, "ids": null, "upto": 12,
            "unreadCount": 0});
        assert_eq!(human(&upto), "  #14 marked read: up to #12; 0 unread");
    }
}
