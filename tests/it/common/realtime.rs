//! A realtime client over the deployment's transport ([`RtClient`]), so that a test of routing,
//! resume or revocation is written once and runs over WebSocket and SSE (`every_transport!`).
//!
//! What the tests share: open a connection in a set of scopes (on a socket: connect, then
//! subscribe to each; over SSE: open the stream with them in the query; no scope at all is a
//! connection in no room, which over SSE is a stream of the inbox only), with `since` or resuming
//! from where an earlier client stopped ([`Resume`]: on a socket, `since` per scope from the
//! frames it received; over SSE, the last event id, sent as the browser's reconnect sends it),
//! then read frames ([`FrameReader`]). What differs (close codes, subscribing mid-connection,
//! how a resume outside the log ends) a test branches on with [`RtClient::transport`].

use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

use super::*;

/// Where the scopes of a new connection start.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    /// Live from now (no replay).
    Now,
    /// After this seq, every scope (`since` on each subscribe, or the stream's `since=`).
    Since(i64),
    /// Where an earlier client stopped.
    Resume(&'a Resume),
}

/// What to open.
#[derive(Clone, Copy, Debug)]
pub struct Opening<'a> {
    pub token: &'a str,
    pub label: &'a str,
    pub scopes: &'a [Scope],
    pub start: Start<'a>,
    /// The token in `Authorization: Bearer` instead of `?token=`.
    pub header_auth: bool,
}

impl<'a> Opening<'a> {
    pub fn new(token: &'a str, label: &'a str, scopes: &'a [Scope]) -> Opening<'a> {
        Opening {
            token,
            label,
            scopes,
            start: Start::Now,
            header_auth: false,
        }
    }
}

/// Where a client stopped: enough to open another one that goes on from there.
#[derive(Clone, Debug)]
pub struct Resume {
    token: String,
    scopes: Vec<Scope>,
    at: At,
}

#[derive(Clone, Debug)]
enum At {
    /// A socket's: per scope, the seq it has everything up to (`None`: never subscribed).
    Since(Vec<(Scope, Option<i64>)>),
    /// A stream's last event id.
    EventId(Option<String>),
}

impl Resume {
    /// The seq `scope` (a scope of `team`) resumes after.
    pub fn since_of(&self, scope: Scope, team: Uuid) -> Option<i64> {
        match &self.at {
            At::Since(v) => v.iter().find(|(s, _)| *s == scope).and_then(|(_, n)| *n),
            At::EventId(id) => id
                .as_deref()
                .and_then(|id| seq_in_event_id(id, &team.to_string())),
        }
    }
}

enum Conn {
    Ws(WsClient),
    Sse(SseClient),
}

pub struct RtClient {
    conn: Conn,
    scopes: Vec<Scope>,
    token: String,
    /// The scopes joined when the connection opened, in the order their `subscribed` came.
    pub subscribed: Vec<(Scope, Subscribed)>,
    /// The `error` frames that answered the opening (forbidden scopes, resume_unavailable...).
    pub errors: Vec<Value>,
    /// A socket's resume point: the team of each scope as far as known (a team scope's own; a
    /// board's or task's from an activity naming it), and per team the highest seq received.
    teams: HashMap<Scope, Uuid>,
    seen: HashMap<Uuid, i64>,
}

impl Deployment {
    /// Opens a realtime client of instance `i` over the deployment's transport; `Err` when the
    /// server refuses it with an HTTP answer (an SSE stream of forbidden scopes, a bad token...).
    pub async fn try_open(&self, i: usize, o: Opening<'_>) -> Result<RtClient, Resp> {
        let label = format!("{}@{}", o.label, self.name(i));
        let node = self.node(i);
        let mut rt = match self.transport {
            Transport::WebSocket => {
                let auth = if o.header_auth {
                    WsAuth::Header(o.token)
                } else {
                    WsAuth::Query(o.token)
                };
                let ws = node
                    .ws_connect(auth, None)
                    .await
                    .map_err(|(status, text)| Resp {
                        method: "GET".into(),
                        path: "/realtime".into(),
                        status,
                        headers: Default::default(),
                        json: Value::Null,
                        text,
                    })?;
                RtClient::new(Conn::Ws(ws.labeled(&label)), o)
            }
            Transport::Sse => {
                let mut req = SseRequest::new(o.token).scopes(o.scopes);
                req.inbox = o.scopes.is_empty();
                req.token_in_header = o.header_auth;
                match o.start {
                    Start::Now => {}
                    Start::Since(n) => req.since = Some(n),
                    Start::Resume(r) => match &r.at {
                        At::EventId(id) => req.last_event_id.clone_from(id),
                        At::Since(_) => panic!("{label}: an SSE stream resumes from a stream"),
                    },
                }
                let sse = node.sse_open(&req).await?;
                RtClient::new(Conn::Sse(sse.labeled(&label)), o)
            }
        };
        rt.join(o.start).await;
        Ok(rt)
    }

    /// Opens a client of instance `i` in `scopes`, live from now; panics unless every scope is
    /// joined without an error.
    pub async fn open(&self, i: usize, token: &str, label: &str, scopes: &[Scope]) -> RtClient {
        self.open_at(i, Opening::new(token, label, scopes)).await
    }

    /// [`Deployment::open`] with every scope resuming after `since`.
    pub async fn open_since(
        &self,
        i: usize,
        token: &str,
        label: &str,
        scopes: &[Scope],
        since: i64,
    ) -> RtClient {
        self.open_at(
            i,
            Opening {
                start: Start::Since(since),
                ..Opening::new(token, label, scopes)
            },
        )
        .await
    }

    /// Opens a client of instance `i` that goes on where `from` stopped (same user and scopes);
    /// panics unless every scope is joined without an error.
    pub async fn resume(&self, i: usize, from: &Resume, label: &str) -> RtClient {
        self.open_at(
            i,
            Opening {
                start: Start::Resume(from),
                ..Opening::new(&from.token, label, &from.scopes)
            },
        )
        .await
    }

    /// [`Deployment::resume`], answering what the server said.
    pub async fn try_resume(&self, i: usize, from: &Resume, label: &str) -> Result<RtClient, Resp> {
        self.try_open(
            i,
            Opening {
                start: Start::Resume(from),
                ..Opening::new(&from.token, label, &from.scopes)
            },
        )
        .await
    }

    async fn open_at(&self, i: usize, o: Opening<'_>) -> RtClient {
        let rt = self.try_open(i, o).await.unwrap_or_else(|r| {
            panic!(
                "{}@{} ({self}): {} {} answered {} {}",
                o.label,
                self.name(i),
                r.method,
                r.path,
                r.status,
                r.text
            )
        });
        let joined: Vec<Scope> = rt.subscribed.iter().map(|(s, _)| *s).collect();
        assert!(
            rt.errors.is_empty() && o.scopes.iter().all(|s| joined.contains(s)),
            "{} ({self}): opening {:?} ({:?}) answered errors {:?}, joined {joined:?}",
            rt.label(),
            o.scopes,
            o.start,
            rt.errors
        );
        rt
    }
}

impl RtClient {
    fn new(conn: Conn, o: Opening<'_>) -> RtClient {
        RtClient {
            conn,
            scopes: o.scopes.to_vec(),
            token: o.token.to_owned(),
            subscribed: Vec::new(),
            errors: Vec::new(),
            teams: o
                .scopes
                .iter()
                .filter_map(|s| match s {
                    Scope::Team(t) => Some((*s, *t)),
                    _ => None,
                })
                .collect(),
            seen: HashMap::new(),
        }
    }

    pub fn transport(&self) -> Transport {
        match self.conn {
            Conn::Ws(_) => Transport::WebSocket,
            Conn::Sse(_) => Transport::Sse,
        }
    }

    /// The socket (panics over SSE): for what only a socket does.
    pub fn ws(&mut self) -> &mut WsClient {
        match &mut self.conn {
            Conn::Ws(ws) => ws,
            Conn::Sse(sse) => panic!("{}: not a WebSocket client", sse.label),
        }
    }

    /// The `subscribed` of `scope` when the connection opened.
    pub fn subscribed(&self, scope: Scope) -> &Subscribed {
        self.subscribed
            .iter()
            .find(|(s, _)| *s == scope)
            .map(|(_, sub)| sub)
            .unwrap_or_else(|| panic!("{}: {scope:?} was not joined", self.label()))
    }

    /// Forgets the frames received so far (what [`FrameReader::frames`] returns).
    pub fn clear_frames(&mut self) {
        match &mut self.conn {
            Conn::Ws(ws) => ws.frames.clear(),
            Conn::Sse(sse) => sse.frames.clear(),
        }
    }

    /// A barrier that tolerates the end of the connection: every frame received before the `pong`
    /// and `true`; or, when the connection ended (or ends meanwhile: an SSE stream that a
    /// revocation closes), every frame up to the end and `false`.
    pub async fn settle(&mut self) -> (Vec<Value>, bool) {
        let open = match &mut self.conn {
            Conn::Ws(ws) => return (ws.barrier().await, true),
            Conn::Sse(sse) if sse.ended.is_some() => false,
            Conn::Sse(sse) => {
                let r = sse.post(serde_json::json!({"type": "ping"})).await;
                match r.status {
                    202 => true,
                    404 => false,
                    other => panic!("{}: POST ping: {other} {}", sse.label, r.text),
                }
            }
        };
        let mut out = Vec::new();
        loop {
            match self.recv_timeout(WS_RECV_TIMEOUT).await {
                Some(Frame::Json(v)) if open && v["type"] == "pong" => return (out, true),
                Some(Frame::Json(v)) => out.push(v),
                Some(f) if f.is_end() => return (out, false),
                Some(_) => {}
                None => panic!(
                    "{}: neither a pong nor the end within {WS_RECV_TIMEOUT:?}: {out:?}",
                    self.label()
                ),
            }
        }
    }

    /// Where this client stands: for another to go on from here.
    pub fn resume_point(&self) -> Resume {
        let at = match &self.conn {
            Conn::Sse(sse) => At::EventId(sse.last_event_id.clone()),
            Conn::Ws(_) => At::Since(
                self.scopes
                    .iter()
                    .map(|&scope| {
                        let joined = self
                            .subscribed
                            .iter()
                            .find(|(s, _)| *s == scope)
                            .map(|(_, sub)| sub.seq);
                        let seen = self.teams.get(&scope).and_then(|t| self.seen.get(t));
                        (scope, joined.map(|j| seen.map_or(j, |s| j.max(*s))))
                    })
                    .collect(),
            ),
        };
        Resume {
            token: self.token.clone(),
            scopes: self.scopes.clone(),
            at,
        }
    }

    /// Closes the connection (a close handshake on a socket; over SSE the response is dropped).
    pub async fn close(self) {
        match self.conn {
            Conn::Ws(ws) => ws.close().await,
            Conn::Sse(sse) => drop(sse),
        }
    }

    /// Joins the scopes: subscribes to each on a socket; over SSE, reads until every scope (and
    /// the inbox of a stream without scopes) was answered.
    async fn join(&mut self, start: Start<'_>) {
        let scopes = self.scopes.clone();
        if let Conn::Ws(ws) = &mut self.conn {
            for &scope in &scopes {
                let since = match start {
                    Start::Now => None,
                    Start::Since(n) => Some(n),
                    Start::Resume(r) => match &r.at {
                        At::Since(v) => v.iter().find(|(s, _)| *s == scope).and_then(|(_, n)| *n),
                        At::EventId(_) => panic!("{}: a socket resumes from a socket", ws.label),
                    },
                };
                match ws.try_subscribe(scope, since).await {
                    Ok(sub) => self.subscribed.push((scope, sub)),
                    Err(e) => self.errors.push(e),
                }
            }
            let frames = ws.frames.clone();
            for v in &frames {
                self.note(v);
            }
            return;
        }
        let mut waiting = scopes;
        let mut inbox = waiting.is_empty();
        let mut before = Vec::new();
        while !waiting.is_empty() || inbox {
            let v = self.next_json().await;
            let named = waiting.iter().position(|s| s.named_by(&v));
            match (v["type"].as_str().unwrap_or(""), named) {
                ("subscribed", _) if v["inbox"] == true => inbox = false,
                ("subscribed", Some(i)) => {
                    let scope = waiting.remove(i);
                    let seq = v["seq"].as_i64().unwrap_or_else(|| {
                        panic!("{}: subscribed without a numeric seq: {v}", self.label())
                    });
                    self.subscribed.push((
                        scope,
                        Subscribed {
                            seq,
                            frame: v,
                            before: std::mem::take(&mut before),
                        },
                    ));
                }
                ("subscribed", None) => {
                    panic!("{}: subscribed to no scope it waits for: {v}", self.label())
                }
                ("error", named) => {
                    if v["inbox"] == true {
                        inbox = false;
                    } else if let Some(i) = named {
                        // Over SSE a resume outside the log is followed by a fresh subscribe.
                        if v["code"] != "resume_unavailable" {
                            waiting.remove(i);
                        }
                    } else if !self.scopes.iter().any(|s| s.named_by(&v)) {
                        panic!("{}: an error for no scope while opening: {v}", self.label());
                    }
                    self.errors.push(v);
                }
                ("activity", _) => before.push(v["activity"].clone()),
                _ => {}
            }
        }
    }

    /// Keeps a socket's resume point: the highest seq per team, and the teams of its scopes.
    fn note(&mut self, v: &Value) {
        if !is_logged_activity(v) {
            return;
        }
        let a = &v["activity"];
        let (Some(team), Some(seq)) = (
            a["teamId"].as_str().and_then(|t| t.parse::<Uuid>().ok()),
            a["seq"].as_i64(),
        ) else {
            return;
        };
        let max = self.seen.entry(team).or_insert(seq);
        *max = (*max).max(seq);
        for &scope in &self.scopes {
            let id = Value::String(scope.id().to_string());
            let names = match scope {
                Scope::Team(_) => false,
                Scope::Board(_) => {
                    a["boardId"] == id
                        || a["data"]["boardId"] == id
                        || a["data"]["changes"]["boardId"]["from"] == id
                }
                Scope::Task(_) => a["taskId"] == id,
            };
            if names {
                self.teams.insert(scope, team);
            }
        }
    }
}

impl FrameReader for RtClient {
    fn label(&self) -> &str {
        match &self.conn {
            Conn::Ws(ws) => &ws.label,
            Conn::Sse(sse) => &sse.label,
        }
    }

    fn frames(&self) -> &[Value] {
        match &self.conn {
            Conn::Ws(ws) => &ws.frames,
            Conn::Sse(sse) => &sse.frames,
        }
    }

    async fn recv_timeout(&mut self, timeout: std::time::Duration) -> Option<Frame> {
        let f = match &mut self.conn {
            Conn::Ws(ws) => ws.recv_timeout(timeout).await,
            Conn::Sse(sse) => sse.recv_timeout(timeout).await,
        };
        if let Some(Frame::Json(v)) = &f {
            self.note(v);
        }
        f
    }

    async fn send_ping(&mut self) {
        match &mut self.conn {
            Conn::Ws(ws) => ws.send_ping().await,
            Conn::Sse(sse) => sse.send_ping().await,
        }
    }
}
