//! `berth hook pre-receive`: the hook git runs for every push to an app's repository (Berth
//! forces its own hooks path). A thin client: it sends the pushed refs, the push options and
//! where git keeps the pushed objects to the server's hook socket, prints what the server sends
//! (the pusher sees it as `remote:` lines, as they come) and exits with the server's verdict.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use berth_wire::builds::{HookFrame, HookRequest, RefUpdate};

pub fn pre_receive() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(message) => {
            println!("berth: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let (Ok(socket), Ok(session)) = (std::env::var("BERTH_HOOK_SOCKET"), std::env::var("BERTH_PUSH_SESSION")) else {
        return Err("this repository is managed by Berth: push to it through its git remote".into());
    };
    let mut updates = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("reading the pushed refs: {e}"))?;
        let mut parts = line.split_whitespace();
        if let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) {
            updates.push(RefUpdate { old: old.into(), new: new.into(), name: name.into() });
        }
    }
    let count: usize = std::env::var("GIT_PUSH_OPTION_COUNT").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let options = (0..count).filter_map(|i| std::env::var(format!("GIT_PUSH_OPTION_{i}")).ok()).collect();
    let request = HookRequest {
        session,
        updates,
        options,
        object_directory: std::env::var("GIT_OBJECT_DIRECTORY").ok(),
        alternate_object_directories: std::env::var("GIT_ALTERNATE_OBJECT_DIRECTORIES").ok(),
    };
    let mut stream =
        UnixStream::connect(&socket).map_err(|e| format!("cannot reach the Berth server at {socket}: {e}"))?;
    let mut line = serde_json::to_vec(&request).expect("BUG: hook requests serialise");
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| format!("talking to the Berth server: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| format!("the Berth server's answer broke off: {e}"))?;
        match serde_json::from_str::<HookFrame>(&line) {
            Ok(HookFrame::Line { text }) => {
                // A pusher gone (Ctrl-C) closes git's end: stop at once.
                if writeln!(stdout, "{text}").and_then(|()| stdout.flush()).is_err() {
                    return Ok(ExitCode::FAILURE);
                }
            }
            Ok(HookFrame::Exit { code }) => return Ok(if code == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
            Err(error) => return Err(format!("an answer this berth does not understand: {error}")),
        }
    }
    Err("the Berth server ended the push without a verdict".into())
}
