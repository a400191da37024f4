//! The test app Berth's tests deploy: a static HTTP/1.1 server with no dependencies, built with
//! `rustc -C target-feature=+crt-static` and packed `FROM scratch`.
//!
//! - `GET /` answers `hello from <VERSION> <HOSTNAME>`.
//! - `GET /up` is the health check; it fails when `FAIL_HEALTH` is set.
//! - `GET /slow?ms=N` answers after N milliseconds (for draining).
//! - `Upgrade: echo` switches protocols and echoes bytes back (for upgrade proxying).
//! - Exits at once on SIGTERM: Berth must drain before it stops a replica.
//! - `hello stamp` prints `stamp <unix ms>` and exits (build output latency).
//! - `hello sleep N` sleeps N seconds and exits 0 (a slow build step: `RUN ["/hello", "sleep", "30"]`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn _exit(code: i32) -> !;
}

extern "C" fn on_term(_: i32) {
    unsafe { _exit(0) }
}

fn main() {
    unsafe {
        signal(15, on_term as *const () as usize);
    }
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("sleep") {
        let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
        println!("sleeping {secs} s");
        std::thread::sleep(Duration::from_secs(secs));
        return;
    }
    if args.get(1).map(String::as_str) == Some("stamp") {
        // For measuring how fast a build's output reaches the pusher.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        println!("stamp {}", now.as_millis());
        return;
    }
    if std::env::var_os("CRASH_AT_START").is_some() {
        eprintln!("crashing at start as asked");
        std::process::exit(3);
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    println!("hello {} listening on {port}", version());
    for stream in listener.incoming() {
        if let Ok(stream) = stream {
            std::thread::spawn(move || {
                let _ = serve(stream);
            });
        }
    }
}

fn version() -> String {
    std::env::var("VERSION").unwrap_or_else(|_| "unknown".into())
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let mut content_length = 0usize;
        let mut upgrade = false;
        let mut close = false;
        let mut forwarded_for = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => content_length = value.parse().unwrap_or(0),
                    "upgrade" => upgrade = value.eq_ignore_ascii_case("echo"),
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    "x-forwarded-for" => forwarded_for = value.to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body)?;
        if upgrade {
            out.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")?;
            let mut buf = [0u8; 4096];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                out.write_all(&buf[..n])?;
            }
        }
        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        let (status, text) = match (method.as_str(), path) {
            (_, "/up") if std::env::var_os("FAIL_HEALTH").is_some() => ("500 Internal Server Error", "unhealthy\n".to_string()),
            (_, "/up") => ("200 OK", "ok\n".to_string()),
            (_, "/slow") => {
                let ms = query.strip_prefix("ms=").and_then(|v| v.parse().ok()).unwrap_or(1000);
                std::thread::sleep(Duration::from_millis(ms));
                ("200 OK", format!("hello from {} after {ms}ms\n", version()))
            }
            (_, "/forwarded") => ("200 OK", format!("{forwarded_for}\n")),
            ("POST", "/echo") => ("200 OK", String::from_utf8_lossy(&body).into_owned()),
            _ => ("200 OK", format!("hello from {} {}\n", version(), std::env::var("HOSTNAME").unwrap_or_default())),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nKeep-Alive: timeout=30\r\n\r\n{text}",
            text.len()
        );
        out.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}
