//! Byte streams from an agent to the control plane on request: the control plane opens a transfer,
//! asks one or more agents (over their connections) to upload into it, and reads the first upload.
//! Image shipping and logs of remote replicas use it. It knows nothing of what it carries.
//!
//! A transfer is bound to the hosts it asked: only they may answer it, each once. Another host's
//! credential cannot feed a crafted archive into a transfer it overheard or guessed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use berth_agent::ByteStream;
use futures::StreamExt;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

enum Answer {
    Upload { stream: ByteStream, done: oneshot::Sender<()> },
    Unavailable,
}

#[derive(Default)]
pub struct Relay {
    transfers: Mutex<HashMap<String, Open>>,
    /// Bytes the control plane offers one agent for an open transfer (a build's context): the
    /// host allowed to take them, and them.
    offers: Mutex<HashMap<String, (String, bytes::Bytes)>>,
}

/// An open transfer as the relay holds it: where answers go, and the hosts asked that have not
/// answered yet.
struct Open {
    answers: mpsc::UnboundedSender<Answer>,
    asked: HashSet<String>,
}

/// An open transfer; closed when dropped.
pub struct Transfer<'a> {
    relay: &'a Relay,
    pub id: String,
    answers: mpsc::UnboundedReceiver<Answer>,
    asked: usize,
}

impl Relay {
    pub fn open(&self) -> Transfer<'_> {
        let mut id = [0u8; 12];
        rand::rng().fill_bytes(&mut id);
        let id = hex::encode(id);
        let (tx, answers) = mpsc::unbounded_channel();
        let open = Open { answers: tx, asked: HashSet::new() };
        self.transfers.lock().expect("BUG: transfer table poisoned").insert(id.clone(), open);
        Transfer { relay: self, id, answers, asked: 0 }
    }

    fn allow(&self, transfer: &str, host: &str, allowed: bool) {
        let mut transfers = self.transfers.lock().expect("BUG: transfer table poisoned");
        if let Some(open) = transfers.get_mut(transfer) {
            if allowed {
                open.asked.insert(host.to_string());
            } else {
                open.asked.remove(host);
            }
        }
    }

    /// The answer channel of `transfer` if `host` was asked and has not answered yet; it has now.
    fn answer_from(&self, transfer: &str, host: &str) -> Option<mpsc::UnboundedSender<Answer>> {
        let mut transfers = self.transfers.lock().expect("BUG: transfer table poisoned");
        let open = transfers.get_mut(transfer)?;
        open.asked.remove(host).then(|| open.answers.clone())
    }

    /// `host`'s upload; resolves when the reader has read all of it (or gave up). Refused unless
    /// the transfer asked `host` and it has not answered yet.
    pub async fn deliver(&self, transfer: &str, host: &str, stream: ByteStream) -> anyhow::Result<()> {
        let sender = self.answer_from(transfer, host);
        let sender = sender.context("no such transfer for this host (not asked, answered already or timed out)")?;
        let (done, finished) = oneshot::channel();
        sender.send(Answer::Upload { stream, done }).map_err(|_| anyhow::anyhow!("the transfer was abandoned"))?;
        finished.await.context("the reader stopped reading")
    }

    /// Offers `bytes` to agent `host` for the open transfer `transfer` (until it is closed).
    pub fn offer(&self, transfer: &str, host: &str, bytes: bytes::Bytes) {
        self.offers.lock().expect("BUG: offer table poisoned").insert(transfer.into(), (host.into(), bytes));
    }

    /// What was offered to `host` for `transfer`, once; `None` for any other host.
    pub fn take_offer(&self, transfer: &str, host: &str) -> Option<bytes::Bytes> {
        let mut offers = self.offers.lock().expect("BUG: offer table poisoned");
        if offers.get(transfer).is_some_and(|(to, _)| to == host) {
            return offers.remove(transfer).map(|(_, bytes)| bytes);
        }
        None
    }

    /// Agent `host` says it cannot answer the transfer (counted only from a host asked, once).
    pub fn unavailable(&self, transfer: &str, host: &str) {
        if let Some(sender) = self.answer_from(transfer, host) {
            let _ = sender.send(Answer::Unavailable);
        }
    }
}

impl Transfer<'_> {
    /// Asks agent `host` with `send` (which sends it a command naming this transfer, and says
    /// whether it could): from then on `host` may answer. False when it could not be asked.
    pub fn ask(&mut self, host: &str, send: impl FnOnce() -> bool) -> bool {
        self.relay.allow(&self.id, host, true);
        if send() {
            self.asked += 1;
            true
        } else {
            self.relay.allow(&self.id, host, false);
            false
        }
    }

    /// The first upload, unless every agent asked said no or `timeout` passed.
    pub async fn first_upload(mut self, timeout: Duration) -> Option<ByteStream> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut refused = 0;
        while refused < self.asked {
            match tokio::time::timeout_at(deadline, self.answers.recv()).await {
                Ok(Some(Answer::Upload { stream, done })) => return Some(notify_when_done(stream, done)),
                Ok(Some(Answer::Unavailable)) => refused += 1,
                Ok(None) | Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for Transfer<'_> {
    fn drop(&mut self) {
        self.relay.transfers.lock().expect("BUG: transfer table poisoned").remove(&self.id);
        self.relay.offers.lock().expect("BUG: offer table poisoned").remove(&self.id);
    }
}

/// Passes the stream through and signals `done` when it ends; dropping it early drops `done`.
fn notify_when_done(stream: ByteStream, done: oneshot::Sender<()>) -> ByteStream {
    let mut done = Some(done);
    stream
        .chain(futures::stream::poll_fn(move |_| {
            if let Some(done) = done.take() {
                let _ = done.send(());
            }
            std::task::Poll::Ready(None)
        }))
        .boxed()
}
