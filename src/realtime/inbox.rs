//! The inbox feed: each user's inbox stream, delivered to that user's subscribed sockets on this
//! instance in seq order.
//!
//! The store is the feed's only source: the bus (and the local commit path) only says how far a
//! user's stream reached, and the feed reads the events from the store, once per user for all of
//! their sockets. A lost hint is found by the periodic `check`, and an event of a team the user
//! has left is never read, because `Tx::inbox_events` leaves it out. Never holds its lock across
//! an await; a socket that does not keep up is cut by its outbox like any other.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tungstenite::Utf8Bytes;

use super::hub::ConnId;
use super::outbox::{Arrival, Frame, Outbox, Stream};
use super::protocol::inbox_frame;
use crate::domain::UserId;
use crate::store::{Store, StoreError};

/// Most events of one user's stream read at once.
pub const READ_BATCH: i64 = 200;

struct Reader {
    outbox: Arc<Outbox>,
    /// The last seq this socket was sent (or, below it, had no right to see).
    cursor: i64,
}

#[derive(Default)]
struct Readers {
    /// The highest seq the user's stream is known to have reached.
    known: i64,
    sockets: HashMap<ConnId, Reader>,
}

impl Readers {
    fn behind(&self) -> bool {
        self.sockets.values().any(|r| r.cursor < self.known)
    }
}

#[derive(Default)]
struct State {
    users: HashMap<UserId, Readers>,
    owner: HashMap<ConnId, UserId>,
    /// Users with a socket behind what their stream is known to hold.
    dirty: HashSet<UserId>,
}

pub struct InboxFeed {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    wake: Notify,
}

impl InboxFeed {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            store,
            wake: Notify::new(),
        }
    }

    /// Starts delivering `user`'s stream after `cursor` to a socket (replacing its earlier
    /// position), queuing `subscribed` first under the same lock, so that nothing the feed sends
    /// comes before it. `known` is how far the stream is known to reach.
    pub fn attach(
        &self,
        conn: ConnId,
        user: UserId,
        outbox: Arc<Outbox>,
        cursor: i64,
        known: i64,
        subscribed: Utf8Bytes,
    ) {
        let mut s = self.state.lock();
        // A socket's user never changes (a token renewal must name the same user).
        s.owner.insert(conn, user);
        outbox.push(Frame::positioned(
            subscribed,
            Stream::Inbox,
            cursor,
            Arrival::Joined,
        ));
        let readers = s.users.entry(user).or_default();
        readers.known = readers.known.max(known);
        readers.sockets.insert(conn, Reader { outbox, cursor });
        if readers.behind() {
            s.dirty.insert(user);
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Stops delivering to a socket; false if it was not subscribed.
    pub fn detach(&self, conn: ConnId) -> bool {
        let mut s = self.state.lock();
        let Some(user) = s.owner.remove(&conn) else {
            return false;
        };
        if let Some(r) = s.users.get_mut(&user) {
            r.sockets.remove(&conn);
            if r.sockets.is_empty() {
                s.users.remove(&user);
                s.dirty.remove(&user);
            }
        }
        true
    }

    /// `user`'s stream reached `seq`.
    pub fn reached(&self, user: UserId, seq: i64) {
        let mut s = self.state.lock();
        let Some(r) = s.users.get_mut(&user) else {
            return;
        };
        r.known = r.known.max(seq);
        if r.behind() {
            s.dirty.insert(user);
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Reads how far every followed user's stream reached: what the bus lost (or a crash kept
    /// from being published) is delivered within one check interval.
    pub async fn check(&self) -> Result<(), StoreError> {
        let users: Vec<UserId> = self.state.lock().users.keys().copied().collect();
        if users.is_empty() {
            return Ok(());
        }
        let seqs = self.store.read().await?.inbox_seqs(&users).await?;
        for (user, seq) in seqs {
            self.reached(user, seq);
        }
        Ok(())
    }

    /// Delivers until no socket is behind; runs for the life of the server.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                let users: Vec<UserId> = std::mem::take(&mut self.state.lock().dirty)
                    .into_iter()
                    .collect();
                if users.is_empty() {
                    break;
                }
                for user in users {
                    if let Err(e) = self.pump(user).await {
                        // Left for the periodic check, which marks the user again.
                        tracing::warn!(error = %e, %user, "reading an inbox stream failed");
                    }
                }
            }
        }
    }

    /// One read of `user`'s stream from its slowest socket's cursor, sent to every socket that
    /// is behind.
    async fn pump(&self, user: UserId) -> Result<(), StoreError> {
        let range = {
            let s = self.state.lock();
            s.users.get(&user).and_then(|r| {
                let from = r.sockets.values().map(|x| x.cursor).min()?;
                (from < r.known).then_some((from, r.known))
            })
        };
        let Some((from, known)) = range else {
            return Ok(());
        };
        let (events, upto) = self
            .store
            .read()
            .await?
            .inbox_events(user, from, known, READ_BATCH)
            .await?;
        let frames: Vec<(i64, Frame)> = events
            .iter()
            .map(|e| {
                let frame =
                    Frame::positioned(inbox_frame(e), Stream::Inbox, e.seq(), Arrival::Live);
                (e.seq(), frame)
            })
            .collect();
        let mut s = self.state.lock();
        let Some(r) = s.users.get_mut(&user) else {
            return Ok(());
        };
        for reader in r.sockets.values_mut() {
            // A socket attached after the read began may be behind `from`: it waits for the next.
            if reader.cursor < from || reader.cursor >= upto {
                continue;
            }
            for (seq, frame) in &frames {
                if *seq > reader.cursor {
                    reader.outbox.push_live(frame.clone());
                }
            }
            reader.cursor = upto;
        }
        if r.behind() {
            s.dirty.insert(user);
            drop(s);
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// Reads `user`'s stream in `(after, upto]` in batches and hands each event's frame to `send`:
/// what a resuming socket is owed before it attaches.
pub async fn replay<F, Fut>(
    store: &dyn Store,
    user: UserId,
    after: i64,
    upto: i64,
    mut send: F,
) -> Result<(), StoreError>
where
    F: FnMut(Frame) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut from = after;
    while from < upto {
        let (events, covered) = store
            .read()
            .await?
            .inbox_events(user, from, upto, READ_BATCH)
            .await?;
        for e in &events {
            let frame = Frame::positioned(inbox_frame(e), Stream::Inbox, e.seq(), Arrival::Replay);
            if !send(frame).await {
                return Ok(());
            }
        }
        from = covered;
    }
    Ok(())
}
