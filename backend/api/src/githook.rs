//! The server's end of Berth's pre-receive hook: a Unix socket in the data directory. Each
//! connection is one push: the hook sends a `HookRequest` line, the server answers with
//! `HookFrame` lines (what to print, then the exit code). A connection that breaks (the hook was
//! killed with its git) cancels what the push started.

use std::path::Path;

use anyhow::Context as _;
use berth_wire::builds::{HookFrame, HookRequest};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;

use crate::services::Services;

/// Listens on `path` (replacing a stale socket), owner-only.
/// Removes the hook sockets (`hooks-PID.sock`) of processes that no longer run (killed before
/// they could remove their own).
pub fn remove_stale_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) =
            name.to_str().and_then(|n| n.strip_prefix("hooks-")?.strip_suffix(".sock")?.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening for git hooks on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, services: Services, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a git hook connection");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let services = services.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(1 << 20));
            let request = match lines.next().await {
                Some(Ok(line)) => serde_json::from_str::<HookRequest>(&line),
                _ => return,
            };
            let request = match request {
                Ok(request) => request,
                Err(error) => {
                    tracing::warn!(%error, "a malformed git hook request");
                    return;
                }
            };
            let (frames, mut outgoing) = tokio::sync::mpsc::channel::<HookFrame>(256);
            let writer = async move {
                while let Some(frame) = outgoing.recv().await {
                    let mut line = serde_json::to_vec(&frame).expect("BUG: hook frames serialise");
                    line.push(b'\n');
                    if write.write_all(&line).await.is_err() {
                        // Dropping the receiver tells the push its hook is gone.
                        return;
                    }
                }
            };
            tokio::join!(services.handle_hook(request, frames), writer);
        });
    }
}
