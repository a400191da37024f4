//! Readiness and liveness checks of one container, run by the actor while the container runs.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a container is probed.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Probe period until a container is ready (and again after it stops being ready).
    pub interval_starting: Duration,
    /// Probe period while a container is ready.
    pub interval_ready: Duration,
    pub timeout: Duration,
    /// Consecutive passing probes before a container becomes ready (routable).
    pub ready_after: u32,
    /// Consecutive failing probes before a ready container stops being routable.
    pub unready_after: u32,
}

impl Default for ProbeConfig {
    fn default() -> ProbeConfig {
        ProbeConfig {
            interval_starting: Duration::from_millis(200),
            interval_ready: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            ready_after: 2,
            unready_after: 3,
        }
    }
}

/// Where a probe reports: `(ready, detail)`; false when nobody listens any more (the probe ends).
pub(crate) type Report = Box<dyn Fn(bool, String) -> bool + Send + Sync>;

/// Readiness and liveness of one container: `GET <path>` (any 2xx or 3xx passes) or, without a
/// path, a TCP connect. Reports transitions only.
pub(crate) struct Probe {
    pub(crate) endpoint: String,
    pub(crate) path: Option<String>,
    pub(crate) config: ProbeConfig,
    pub(crate) report: Report,
}

impl Probe {
    pub(crate) async fn run(self) {
        let mut ready = false;
        let mut streak = 0u32;
        let mut last_detail = String::new();
        loop {
            let outcome = tokio::time::timeout(self.config.timeout, self.check())
                .await
                .unwrap_or_else(|_| Err("the probe timed out".to_string()));
            let passed = outcome.is_ok();
            // While not ready, say why (once per distinct reason), so a release that never gets
            // ready can name the cause.
            if let Err(detail) = &outcome
                && !ready
                && *detail != last_detail
            {
                last_detail = detail.clone();
                if !(self.report)(false, detail.clone()) {
                    return;
                }
            }
            if passed == ready {
                streak = 0;
            } else {
                streak += 1;
                let needed = if ready { self.config.unready_after } else { self.config.ready_after };
                if streak >= needed {
                    ready = passed;
                    streak = 0;
                    if !(self.report)(ready, outcome.err().unwrap_or_default()) {
                        return;
                    }
                }
            }
            let period = if ready { self.config.interval_ready } else { self.config.interval_starting };
            tokio::time::sleep(period).await;
        }
    }

    async fn check(&self) -> Result<(), String> {
        let mut stream = tokio::net::TcpStream::connect(&self.endpoint)
            .await
            .map_err(|e| format!("readiness: connecting to {} failed: {e}", self.endpoint))?;
        let Some(path) = &self.path else { return Ok(()) };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: berth-probe\r\nConnection: close\r\n\r\n",
            self.endpoint
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("readiness: sending failed: {e}"))?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
            let n = stream.read(&mut buf).await.map_err(|e| format!("readiness: reading failed: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let status_line = String::from_utf8_lossy(&head);
        let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("readiness: GET {path} answered {}", status_line.lines().next().unwrap_or("nothing")))
        }
    }
}
