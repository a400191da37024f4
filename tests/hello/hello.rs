//! The test app Berth's tests deploy: a static HTTP/1.1 server with no dependencies, built with
//! `rustc -C target-feature=+crt-static` and packed `FROM scratch`.
//!
//! - `GET /` answers `hello from <VERSION> <HOSTNAME>`.
//! - `GET /up` is the health check; it fails when `FAIL_HEALTH` is set.
//! - `GET /slow?ms=N` answers after N milliseconds (for draining).
//! - `Upgrade: echo` switches protocols and echoes bytes back (for upgrade proxying).
//! - `Upgrade: websocket` (RFC 6455) answers each text message `<VERSION>: <message>`.
//! - `GET /events` is a server-sent event stream: `data: <VERSION> <n> <unix ms>` every 200 ms,
//!   forever.
//! - `GET /env?name=X` answers the value of the environment variable `X` (`<unset>`).
//! - `GET /connect?to=IP:PORT` answers `connected` or `failed: <why>`: whether this container can
//!   open a TCP connection there (2 s timeout).
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
        let mut websocket_key = None;
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
                    "sec-websocket-key" => websocket_key = Some(value.to_string()),
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
        if let Some(key) = websocket_key {
            return websocket(&key, reader, out);
        }
        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        if path == "/events" {
            return events(out);
        }
        let (status, text) = match (method.as_str(), path) {
            (_, "/up") if std::env::var_os("FAIL_HEALTH").is_some() => ("500 Internal Server Error", "unhealthy\n".to_string()),
            (_, "/up") => ("200 OK", "ok\n".to_string()),
            (_, "/slow") => {
                let ms = query.strip_prefix("ms=").and_then(|v| v.parse().ok()).unwrap_or(1000);
                std::thread::sleep(Duration::from_millis(ms));
                ("200 OK", format!("hello from {} after {ms}ms\n", version()))
            }
            (_, "/forwarded") => ("200 OK", format!("{forwarded_for}\n")),
            // The value of one environment variable (the secrets tests).
            (_, "/env") => {
                let name = query.strip_prefix("name=").unwrap_or("");
                ("200 OK", format!("{}\n", std::env::var(name).unwrap_or_else(|_| "<unset>".into())))
            }
            // Whether this container can open a TCP connection to `to` (the isolation tests).
            (_, "/connect") => {
                let to = query.strip_prefix("to=").unwrap_or("");
                let outcome = match to.parse::<std::net::SocketAddr>() {
                    Ok(address) => match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
                        Ok(_) => "connected".to_string(),
                        Err(error) => format!("failed: {error}"),
                    },
                    Err(_) => format!("failed: {to:?} is not an address"),
                };
                ("200 OK", format!("{outcome}\n"))
            }
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

/// A WebSocket: each text message is answered `<VERSION>: <message>`; a close is answered and ends
/// the connection.
fn websocket(key: &str, mut reader: BufReader<TcpStream>, mut out: TcpStream) -> std::io::Result<()> {
    let accept = base64(&sha1(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes()));
    write!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )?;
    out.set_read_timeout(None)?;
    reader.get_ref().set_read_timeout(None)?;
    loop {
        let mut head = [0u8; 2];
        reader.read_exact(&mut head)?;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut ext = [0u8; 2];
            reader.read_exact(&mut ext)?;
            len = u64::from(u16::from_be_bytes(ext));
        } else if len == 127 {
            let mut ext = [0u8; 8];
            reader.read_exact(&mut ext)?;
            len = u64::from_be_bytes(ext);
        }
        let mut mask = [0u8; 4];
        if masked {
            reader.read_exact(&mut mask)?;
        }
        let mut payload = vec![0u8; len.min(1 << 20) as usize];
        reader.read_exact(&mut payload)?;
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        match opcode {
            0x8 => {
                frame(&mut out, 0x8, &payload)?;
                return Ok(());
            }
            0x9 => frame(&mut out, 0xa, &payload)?,
            0x1 => {
                let text = format!("{}: {}", version(), String::from_utf8_lossy(&payload));
                frame(&mut out, 0x1, text.as_bytes())?;
            }
            _ => {}
        }
    }
}

/// One unmasked, final frame (servers do not mask).
fn frame(out: &mut TcpStream, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut bytes = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => bytes.push(n as u8),
        n if n <= 0xffff => {
            bytes.push(126);
            bytes.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            bytes.push(127);
            bytes.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    bytes.extend_from_slice(payload);
    out.write_all(&bytes)
}

/// A server-sent event stream (chunked), one event every 200 ms until the client goes away.
fn events(mut out: TcpStream) -> std::io::Result<()> {
    out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    for n in 0u64.. {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let event = format!("data: {} {n} {}\n\n", version(), now.as_millis());
        write!(out, "{:x}\r\n{event}\r\n", event.len())?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// SHA-1 (FIPS 180-4), for the WebSocket handshake only.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, word) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*word);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, word) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
