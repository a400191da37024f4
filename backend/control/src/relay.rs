//! Byte streams from an agent to the control plane on request: the control plane opens a transfer,
//! asks one or more agents (over their connections) to upload into it, and reads the first upload.
//! Image shipping and logs of remote replicas use it. It knows nothing of what it carries.

use std::collections::HashMap;
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
    transfers: Mutex<HashMap<String, mpsc::UnboundedSender<Answer>>>,
    /// Bytes the control plane offers one agent for an open transfer (a build's context): the
    /// host allowed to take them, and them.
    offers: Mutex<HashMap<String, (String, bytes::Bytes)>>,
}

/// An open transfer; closed when dropped.
pub struct Transfer<'a> {
    relay: &'a Relay,
    pub id: String,
    answers: mpsc::UnboundedReceiver<Answer>,
}

impl Relay {
    pub fn open(&self) -> Transfer<'_> {
        let mut id = [0u8; 12];
        rand::rng().fill_bytes(&mut id);
        let id = hex::encode(id);
        let (tx, answers) = mpsc::unbounded_channel();
        self.transfers.lock().expect("BUG: transfer table poisoned").insert(id.clone(), tx);
        Transfer { relay: self, id, answers }
    }

    /// An agent's upload; resolves when the reader has read all of it (or gave up).
    pub async fn deliver(&self, transfer: &str, stream: ByteStream) -> anyhow::Result<()> {
        let sender = self.transfers.lock().expect("BUG: transfer table poisoned").get(transfer).cloned();
        let sender = sender.context("no such transfer (it was answered already or timed out)")?;
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

    /// An agent says it cannot answer the transfer.
    pub fn unavailable(&self, transfer: &str) {
        if let Some(sender) = self.transfers.lock().expect("BUG: transfer table poisoned").get(transfer) {
            let _ = sender.send(Answer::Unavailable);
        }
    }
}

impl Transfer<'_> {
    /// The first upload, unless all `asked` agents said no or `timeout` passed.
    pub async fn first_upload(mut self, asked: usize, timeout: Duration) -> Option<ByteStream> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut refused = 0;
        while refused < asked {
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
