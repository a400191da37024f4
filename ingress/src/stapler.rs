//! OCSP stapling: a task started with the HTTPS listener staples the responder's answer to each
//! certificate served that names one (see `ocsp`), so clients that ask (RFC 6066
//! `status_request`) need not ask the CA themselves.
//!
//! - A response is stapled only if `ocsp::check_response` accepts it (successful, for exactly
//!   this certificate, `good`, not past `nextUpdate` or, naming none, not older than a week,
//!   signed by the issuer or a responder it authorised) and it is not older than the newest
//!   answer seen for the certificate, revoked ones included (a replay over plain HTTP).
//! - It is refreshed halfway between `thisUpdate` and `nextUpdate` (at most every 12 h; hourly
//!   without a `nextUpdate`). A failed fetch keeps the staple until it expires and is retried
//!   after 1 minute, doubling to 1 hour; an expired or revoked staple is removed.
//! - Certificates without a responder (Let's Encrypt's since 2025) or without their issuer in the
//!   chain are served without a staple, quietly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::Ingress;
use crate::ocsp::{OcspError, OcspSource, check_response, fetch};
use crate::tls::Certificate;

const RETRY_FIRST: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// How often to refresh a response that names no `nextUpdate`.
const REFRESH_WITHOUT_NEXT_UPDATE: Duration = Duration::from_secs(3600);
/// The longest a response is kept without asking again, however long it claims to be valid.
const MAX_REFRESH: Duration = Duration::from_secs(12 * 3600);

/// A response being stapled.
struct Staple {
    der: Vec<u8>,
    /// Its `nextUpdate`, or for one that names none, a week after `thisUpdate`.
    valid_until: SystemTime,
    refresh_at: SystemTime,
}

#[derive(Default)]
struct State {
    staple: Option<Staple>,
    /// The newest `thisUpdate` of any signed answer for this certificate, good or not: an older
    /// answer is a replay (the fetch is plain HTTP), and a "good" from before a revocation must
    /// not come back once the revocation removed the staple.
    newest: Option<SystemTime>,
    retry_at: Option<SystemTime>,
    failures: u32,
}

/// What one fetch brought: a checked good answer (DER) with its `thisUpdate` and `nextUpdate`, or
/// why there is none.
type Fetched = Result<(Vec<u8>, (SystemTime, Option<SystemTime>)), OcspError>;

impl State {
    /// What a fetch for this certificate brought (`Ok`: a checked good answer and its
    /// `thisUpdate`/`nextUpdate`) does to its staple and its next attempt.
    fn apply(&mut self, url: &str, result: Fetched, now: SystemTime) {
        let signed_at = match &result {
            Ok((_, (this_update, _))) | Err(OcspError::NotGood(this_update)) => Some(*this_update),
            Err(_) => None,
        };
        let result = match (signed_at, self.newest) {
            (Some(this_update), Some(newest)) if this_update < newest => Err(OcspError::Older),
            _ => result,
        };
        if result.is_ok() || matches!(result, Err(OcspError::NotGood(_))) {
            self.newest = self.newest.max(signed_at);
        }
        match result {
            Ok((der, (this_update, next_update))) => {
                // Halfway to nextUpdate, at most every 12 h and at least a minute apart, and
                // never after nextUpdate.
                let half = match next_update {
                    Some(next) => this_update + next.duration_since(this_update).unwrap_or_default() / 2,
                    None => now + REFRESH_WITHOUT_NEXT_UPDATE,
                };
                let refresh_at = half.min(now + MAX_REFRESH).max(now + Duration::from_secs(60));
                let refresh_at = next_update.map_or(refresh_at, |next| refresh_at.min(next));
                tracing::debug!(url = %url, "stapling a fresh OCSP response");
                let valid_until = crate::ocsp::valid_until(this_update, next_update);
                self.staple = Some(Staple { der, valid_until, refresh_at });
                self.retry_at = None;
                self.failures = 0;
            }
            Err(error) => {
                self.failures += 1;
                let backoff = RETRY_FIRST.saturating_mul(1 << self.failures.min(7).saturating_sub(1)).min(RETRY_MAX);
                tracing::warn!(url = %url, %error, retry_in = ?backoff, "no OCSP response to staple");
                if matches!(error, OcspError::NotGood(_)) {
                    self.staple = None;
                }
                let retry_at = now + backoff;
                self.retry_at = Some(match self.staple.as_ref() {
                    Some(staple) => retry_at.min(staple.valid_until),
                    None => retry_at,
                });
            }
        }
    }
}

/// The stapling state of every certificate with a responder, by OCSP request.
#[derive(Default)]
pub(crate) struct Stapler {
    states: Mutex<HashMap<Vec<u8>, State>>,
    wake: Arc<Notify>,
    running: std::sync::atomic::AtomicBool,
}

impl Stapler {
    /// Staples what is known for `certificate` now (a new table keeps its staples).
    pub(crate) fn restore(&self, certificate: &Certificate) {
        if let Some(source) = &certificate.ocsp {
            let states = self.states.lock().expect("BUG: stapler lock poisoned");
            sync(certificate, states.get(&source.request), SystemTime::now());
        }
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Makes what `certificate` serves match what is known: the current staple, or none.
fn sync(certificate: &Certificate, state: Option<&State>, now: SystemTime) {
    let want = state
        .and_then(|s| s.staple.as_ref())
        .filter(|staple| staple.valid_until > now)
        .map(|staple| staple.der.as_slice());
    if certificate.key.load().ocsp.as_deref() != want {
        certificate.set_ocsp(want.map(<[u8]>::to_vec));
    }
}

/// Starts the stapling task for `ingress` once; it ends when the ingress is dropped.
pub(crate) fn start(ingress: &Arc<Ingress>) {
    if ingress.stapler.running.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(ingress);
    let wake = ingress.stapler.wake.clone();
    tokio::spawn(run(weak, wake));
}

async fn run(ingress: Weak<Ingress>, wake: Arc<Notify>) {
    loop {
        let Some(strong) = ingress.upgrade() else {
            return;
        };
        let pause = round(&strong).await;
        drop(strong);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = wake.notified() => {}
        }
    }
}

/// The certificates served now that name a responder (each once).
fn served(ingress: &Ingress) -> Vec<Arc<Certificate>> {
    let table = ingress.tls.certs.load();
    let mut certificates: Vec<Arc<Certificate>> = Vec::new();
    for certificate in table.all().chain(table.fallback()) {
        if certificate.ocsp.is_some() && !certificates.iter().any(|c| Arc::ptr_eq(c, certificate)) {
            certificates.push(certificate.clone());
        }
    }
    certificates
}

/// Drops expired staples, fetches what is due (all at once), and brings every certificate
/// served at the end (the table may have been replaced meanwhile) in line with what is known.
/// Returns the time until something is due or expires.
async fn round(ingress: &Ingress) -> Duration {
    let stapler = &ingress.stapler;
    let now = SystemTime::now();
    let mut due: Vec<Arc<OcspSource>> = Vec::new();
    {
        let mut states = stapler.states.lock().expect("BUG: stapler lock poisoned");
        let certificates = served(ingress);
        states.retain(|request, _| certificates.iter().any(|c| c.ocsp.as_ref().is_some_and(|s| s.request == *request)));
        for certificate in &certificates {
            let source = certificate.ocsp.as_ref().expect("BUG: served() keeps certificates with a responder");
            let state = states.entry(source.request.clone()).or_default();
            if state.staple.as_ref().is_some_and(|s| s.valid_until <= now) {
                tracing::warn!(url = %source.url, names = ?certificate.names, "the stapled OCSP response expired; serving without one");
                state.staple = None;
            }
            let due_at = state.retry_at.or(state.staple.as_ref().map(|s| s.refresh_at)).unwrap_or(now);
            if due_at <= now && !due.iter().any(|d| d.request == source.request) {
                due.push(source.clone());
            }
        }
    }
    let allow_private = ingress.config.ocsp_private_responders;
    let mut fetches = tokio::task::JoinSet::new();
    for source in due {
        fetches.spawn(async move {
            let result = match fetch(&source.url, &source.request, allow_private).await {
                Ok(der) => check_response(&der, &source, SystemTime::now()).map(|times| (der, times)),
                Err(error) => Err(error),
            };
            (source, result)
        });
    }
    let results = fetches.join_all().await;

    let now = SystemTime::now();
    let mut states = stapler.states.lock().expect("BUG: stapler lock poisoned");
    for (source, result) in results {
        let state = states.entry(source.request.clone()).or_default();
        state.apply(&source.url, result, now);
    }
    let mut pause = RETRY_MAX;
    for certificate in served(ingress) {
        let source = certificate.ocsp.as_ref().expect("BUG: served() keeps certificates with a responder");
        let state = states.get(&source.request);
        sync(&certificate, state, now);
        let Some(state) = state else {
            // Served since the round began: due now.
            pause = Duration::ZERO;
            continue;
        };
        let times =
            [state.retry_at, state.staple.as_ref().map(|s| s.refresh_at), state.staple.as_ref().map(|s| s.valid_until)];
        for at in times.into_iter().flatten() {
            pause = pause.min(at.duration_since(now).unwrap_or_default());
        }
    }
    pause.max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staple(state: &State) -> Option<&[u8]> {
        state.staple.as_ref().map(|s| s.der.as_slice())
    }

    #[test]
    fn an_answer_older_than_one_seen_is_a_replay_even_after_a_revocation_removed_the_staple() {
        let now = SystemTime::now();
        let at = |minutes: u64| now - Duration::from_secs(3600) + Duration::from_secs(minutes * 60);
        let until = Some(now + Duration::from_secs(3600));
        let mut state = State::default();
        state.apply("http://ocsp.test", Ok((b"good at 0".to_vec(), (at(0), until))), now);
        assert_eq!(staple(&state), Some(&b"good at 0"[..]));
        // Revoked at minute 10: the staple goes.
        state.apply("http://ocsp.test", Err(OcspError::NotGood(at(10))), now);
        assert_eq!(staple(&state), None);
        // The good answer of minute 0, replayed: refused, still nothing stapled.
        state.apply("http://ocsp.test", Ok((b"good at 0".to_vec(), (at(0), until))), now);
        assert_eq!(staple(&state), None);
        assert_eq!(state.failures, 2);
        // A newer answer is believed.
        state.apply("http://ocsp.test", Ok((b"good at 20".to_vec(), (at(20), until))), now);
        assert_eq!(staple(&state), Some(&b"good at 20"[..]));
        assert_eq!((state.failures, state.retry_at), (0, None));
    }

    #[test]
    fn a_staple_without_next_update_lasts_a_week_and_a_failed_fetch_retries_before_it_expires() {
        let now = SystemTime::now();
        let mut state = State::default();
        state.apply("http://ocsp.test", Ok((b"open".to_vec(), (now, None))), now);
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(state.staple.as_ref().unwrap().valid_until, now + week);
        // A failed fetch keeps it, and retries within the backoff.
        state.apply("http://ocsp.test", Err(OcspError::Fetch("refused".into())), now);
        assert_eq!(staple(&state), Some(&b"open"[..]));
        assert_eq!(state.retry_at, Some(now + RETRY_FIRST));
    }
}
