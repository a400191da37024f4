//! One build's log: appended to a file as lines arrive and held in memory while the build runs,
//! so any number of followers (the pusher's hook, the dashboard, `berth builds logs --follow`)
//! read it from any line without missing or repeating one.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context as _;
use berth_wire::builds::BuildLogLine;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::watch;

/// Longer lines are cut (a builder printing a minified file on one line).
const MAX_LINE: usize = 8 * 1024;
/// Lines beyond these budgets are dropped (and counted) so a runaway build cannot exhaust memory.
const MAX_LINES: usize = 100_000;
const MAX_BYTES: usize = 32 << 20;

pub struct BuildLog {
    path: PathBuf,
    state: Mutex<State>,
    /// The number of lines so far, and whether the log is complete.
    progress: watch::Sender<(usize, bool)>,
}

struct State {
    lines: Vec<String>,
    bytes: usize,
    dropped: u64,
    file: Option<std::fs::File>,
}

impl BuildLog {
    /// Creates the log's file (synchronously: a directory and an empty file, and the caller
    /// must not be interrupted between recording a build and registering it).
    pub fn create(path: PathBuf) -> anyhow::Result<BuildLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(BuildLog {
            path,
            state: Mutex::new(State { lines: Vec::new(), bytes: 0, dropped: 0, file: Some(file) }),
            progress: watch::Sender::new((0, false)),
        })
    }

    pub fn push(&self, line: impl Into<String>) {
        let mut line: String = line.into();
        if line.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push_str(" [line cut]");
        }
        let mut state = self.state.lock().expect("BUG: build log lock poisoned");
        if state.lines.len() >= MAX_LINES || state.bytes + line.len() > MAX_BYTES {
            state.dropped += 1;
            return;
        }
        state.bytes += line.len();
        if let Some(file) = &mut state.file
            && writeln!(file, "{line}").is_err()
        {
            tracing::warn!(path = %self.path.display(), "the build log file cannot be written; it stays in memory only");
            state.file = None;
        }
        state.lines.push(line);
        let count = state.lines.len();
        self.progress.send_modify(|p| p.0 = count);
    }

    /// Marks the log complete: followers end after its last line.
    pub fn finish(&self) {
        let mut state = self.state.lock().expect("BUG: build log lock poisoned");
        if state.dropped > 0 {
            let note = format!("[{} more lines were not kept]", state.dropped);
            if let Some(file) = &mut state.file {
                let _ = writeln!(file, "{note}");
            }
            state.lines.push(note);
        }
        if let Some(file) = state.file.take() {
            let _ = file.sync_all();
        }
        let count = state.lines.len();
        self.progress.send_replace((count, true));
    }

    /// The lines there are now, from `from` on.
    pub fn lines_from(&self, from: u64) -> Vec<BuildLogLine> {
        let state = self.state.lock().expect("BUG: build log lock poisoned");
        state
            .lines
            .iter()
            .enumerate()
            .skip(from as usize)
            .map(|(index, line)| BuildLogLine { index: index as u64, line: line.clone() })
            .collect()
    }

    /// Lines from `from` on, then new ones as they come, ending with the log.
    pub fn follow(self: std::sync::Arc<Self>, from: u64) -> BoxStream<'static, BuildLogLine> {
        let progress = self.progress.subscribe();
        let state = (self, progress, from as usize);
        futures::stream::unfold(state, |(log, mut progress, next)| async move {
            loop {
                let (count, done) = *progress.borrow_and_update();
                if next < count {
                    let line = log.state.lock().expect("BUG: build log lock poisoned").lines[next].clone();
                    return Some((BuildLogLine { index: next as u64, line }, (log, progress, next + 1)));
                }
                if done || progress.changed().await.is_err() {
                    return None;
                }
            }
        })
        .boxed()
    }
}

/// The lines of a finished build's stored log, from `from` on.
pub async fn stored_lines(path: &std::path::Path, from: u64) -> std::io::Result<Vec<BuildLogLine>> {
    let text = tokio::fs::read_to_string(path).await?;
    Ok(text
        .lines()
        .enumerate()
        .skip(from as usize)
        .map(|(index, line)| BuildLogLine { index: index as u64, line: line.to_string() })
        .collect())
}
