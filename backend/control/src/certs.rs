//! Certificates: the ones the ingress serves (uploaded per app, obtained by ACME, and the
//! operator's for the base domain), kept in the store with their private keys in files of the
//! data directory (0600), and the ACME loop that obtains and renews them.
//!
//! The loop wakes on a change (a domain added) and every `check_every`. For each name that needs
//! a certificate (none, or the one served expires within its renewal window: 30 days, or a third
//! of the lifetime of short-lived ones) whose next attempt is due, it orders one; failures are
//! retried with exponential backoff and jitter, longer when the CA says `rateLimited`, and the
//! CA's reason is kept for the API. Challenges alternate between HTTP-01 and TLS-ALPN-01 from one
//! attempt to the next when both listeners exist.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use berth_ingress::{Certificate, Ingress};
use berth_store::{CertificateRow, NewCertificate, Store};
use berth_wire::edge::{CertSource, CertState, CertificateInfo, DomainInfo};
use instant_acme::ChallengeType;
use rand::Rng as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Orchestrator;

mod acme;

/// How certificates are obtained.
#[derive(Debug, Clone)]
pub struct CertsConfig {
    /// Where private keys and the ACME account live (created 0700).
    pub tls_dir: PathBuf,
    /// Obtain certificates by ACME (`None`: only uploaded and operator certificates).
    pub acme: Option<AcmeConfig>,
    /// The operator's certificate, typically a wildcard for the base domain.
    pub operator: Option<Certificate>,
    /// The same as PEM (chain, key), for ingress nodes to serve too.
    pub operator_pem: Option<(String, String)>,
    /// How often the ACME loop looks for names to certify or renew.
    pub check_every: Duration,
}

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub directory_url: String,
    pub email: String,
    /// A CA certificate (PEM) to trust for the ACME server's own HTTPS (a test CA such as pebble's).
    pub ca_file: Option<PathBuf>,
    /// Apps' own names under the base domain get certificates too (false when the base domain
    /// cannot have public certificates, like `localhost`).
    pub app_names: bool,
    /// Answer TLS-ALPN-01 as well as HTTP-01 (an HTTPS listener exists).
    pub tls_alpn: bool,
    /// The first retry after a failure; each further one doubles it, up to a day.
    pub retry_base: Duration,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Why a certificate operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0}")]
    Invalid(String),
    #[error("certificate {0} not found")]
    NotFound(i64),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

#[derive(Clone)]
pub struct Certs {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    ingress: Arc<Ingress>,
    orchestrator: Orchestrator,
    config: CertsConfig,
    wake: Notify,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// The ACME account, registered or restored at the first order and kept.
    account: tokio::sync::Mutex<Option<instant_acme::Account>>,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Renew this long before expiry: 30 days, or a third of the lifetime of shorter certificates.
fn renewal_window(certificate: &Certificate) -> Duration {
    let lifetime = certificate.not_after.duration_since(certificate.not_before).unwrap_or_default();
    (lifetime / 3).min(30 * DAY)
}

/// The wait before attempt `attempts + 1`, after `attempts` failures: doubling from `base`, at
/// most a day (an hour at least when rate-limited), with ±20% jitter so many names spread out.
fn retry_delay(base: Duration, attempts: u32, rate_limited: bool) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20)).min(DAY);
    let delay = if rate_limited { doubled.max(Duration::from_secs(3600)) } else { doubled };
    delay.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Gives `ingress` every stored certificate (plus the operator's): the leader's `Certs` does it
/// at every change, a follower when the stored certificates change (its keys come from the shared
/// data directory). Returns how many stored certificates could not be loaded (logged).
pub async fn load_into(store: &Store, config: &CertsConfig, ingress: &Ingress) -> anyhow::Result<usize> {
    let mut certificates: Vec<Certificate> = config.operator.iter().cloned().collect();
    let mut failed = 0;
    for row in store.certificates().await? {
        match parse(&config.tls_dir, &row) {
            Ok(certificate) => certificates.push(certificate),
            Err(error) => {
                failed += 1;
                tracing::error!(id = row.id, error = format!("{error:#}"), "a stored certificate cannot be served")
            }
        }
    }
    ingress.set_certificates(certificates);
    Ok(failed)
}

fn parse(tls_dir: &std::path::Path, row: &CertificateRow) -> anyhow::Result<Certificate> {
    let path = tls_dir.join(&row.key_file);
    let key = std::fs::read(&path).with_context(|| format!("reading the private key {}", path.display()))?;
    Ok(Certificate::from_pem(row.chain_pem.as_bytes(), &key)?)
}

impl Certs {
    /// Loads the stored certificates into the ingress and starts the ACME loop (when configured).
    pub async fn start(
        store: Store,
        ingress: Arc<Ingress>,
        orchestrator: Orchestrator,
        config: CertsConfig,
    ) -> anyhow::Result<Certs> {
        create_private_dir(&config.tls_dir)?;
        let certs = Certs {
            inner: Arc::new(Inner {
                store,
                ingress,
                orchestrator,
                config,
                wake: Notify::new(),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
                account: tokio::sync::Mutex::new(None),
            }),
        };
        certs.reload().await?;
        if certs.inner.config.acme.is_some() {
            certs.inner.tasks.spawn(certs.clone().run());
        }
        Ok(certs)
    }

    /// Stops the ACME loop (an order in progress is abandoned; it is retried at the next start).
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Looks for work now (a domain was added or removed).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Gives the ingress every stored certificate (plus the operator's) and republishes routes,
    /// whose HTTPS redirects depend on them.
    async fn reload(&self) -> anyhow::Result<()> {
        load_into(&self.inner.store, &self.inner.config, &self.inner.ingress).await?;
        self.inner.orchestrator.publish_routes().await
    }

    /// Stores an uploaded certificate for an app whose names are `names`: every DNS name in the
    /// certificate must be one of them (so no team can take over another's name), and it must
    /// not have expired.
    pub async fn upload(
        &self,
        app_id: i64,
        names: &[String],
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<CertificateInfo, CertsError> {
        let certificate = Certificate::from_pem(chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|e| CertsError::Invalid(e.to_string()))?;
        if let Some(foreign) = certificate.names.iter().find(|name| !names.contains(name)) {
            return Err(CertsError::Invalid(format!(
                "the certificate names {foreign}, which is not one of this app's names ({}); add it as a domain first",
                names.join(", ")
            )));
        }
        if certificate.remaining().is_zero() {
            return Err(CertsError::Invalid("the certificate has expired".into()));
        }
        let id = self.save(app_id, CertSource::Uploaded, &certificate, chain_pem, key_pem).await?;
        self.reload().await?;
        let row = self.inner.store.app_certificates(app_id).await.context("reading certificates")?;
        row.into_iter().find(|r| r.id == id).map(|r| r.info()).ok_or(CertsError::NotFound(id))
    }

    async fn save(
        &self,
        app_id: i64,
        source: CertSource,
        certificate: &Certificate,
        chain_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<i64> {
        let key_file = format!("{}.key", hex::encode(rand::random::<[u8; 12]>()));
        let path = self.inner.config.tls_dir.join(&key_file);
        crate::write_private(&path, key_pem.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        let inserted = self
            .inner
            .store
            .insert_certificate(NewCertificate {
                app_id,
                source,
                names: &certificate.names,
                issuer: &certificate.issuer,
                chain_pem,
                key_file: &key_file,
                not_after: unix_ms(certificate.not_after),
            })
            .await;
        if inserted.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        Ok(inserted?)
    }

    /// Removes one of the app's certificates and its key.
    pub async fn remove(&self, app_id: i64, id: i64) -> Result<(), CertsError> {
        let owned = self.inner.store.app_certificates(app_id).await.context("reading certificates")?;
        if !owned.iter().any(|row| row.id == id) {
            return Err(CertsError::NotFound(id));
        }
        self.delete(id).await?;
        self.reload().await?;
        Ok(())
    }

    async fn delete(&self, id: i64) -> anyhow::Result<()> {
        if let Some(row) = self.inner.store.remove_certificate(id).await? {
            let _ = std::fs::remove_file(self.inner.config.tls_dir.join(&row.key_file));
        }
        Ok(())
    }

    /// The app's certificates (never their keys).
    pub async fn list(&self, app_id: i64) -> anyhow::Result<Vec<CertificateInfo>> {
        Ok(self.inner.store.app_certificates(app_id).await?.iter().map(CertificateRow::info).collect())
    }

    /// The state of each of `names` (an app's own name first, then its custom domains).
    pub async fn status(&self, app_id: i64, own_name: &str, domains: &[String]) -> anyhow::Result<Vec<DomainInfo>> {
        let rows = self.inner.store.app_certificates(app_id).await?;
        let acme: HashMap<String, berth_store::AcmeNameRow> =
            self.inner.store.acme_names().await?.into_iter().map(|row| (row.name.clone(), row)).collect();
        let acme_on = |custom: bool| self.inner.config.acme.as_ref().is_some_and(|config| custom || config.app_names);
        let names = std::iter::once((own_name.to_string(), false)).chain(domains.iter().map(|d| (d.clone(), true)));
        Ok(names
            .map(|(name, custom)| {
                let served = self.inner.ingress.certificate_for(&name).filter(|c| !c.remaining().is_zero());
                let source = served.as_ref().map(|served| {
                    rows.iter()
                        .find(|row| {
                            row.not_after == unix_ms(served.not_after) && row.names() == served.names.as_slice()
                        })
                        .map_or(CertSource::Operator, CertificateRow::source)
                });
                let progress = acme.get(&name);
                let state = match (&served, progress.map(|p| p.state.as_str())) {
                    (Some(_), _) => CertState::Issued,
                    (None, Some("failed")) => CertState::Failed,
                    (None, _) if acme_on(custom) => CertState::Pending,
                    (None, _) => CertState::None,
                };
                let failing = progress.filter(|p| p.state == "failed");
                DomainInfo {
                    name,
                    custom,
                    state,
                    source,
                    not_after: served.map(|c| unix_ms(c.not_after)),
                    error: failing.and_then(|p| p.error.clone()),
                    next_attempt_at: failing.map(|p| p.next_attempt_at),
                }
            })
            .collect())
    }

    async fn run(self) {
        loop {
            if let Err(error) = self.pass().await {
                tracing::error!(error = format!("{error:#}"), "the certificate pass failed");
            }
            tokio::select! {
                () = self.inner.stop.cancelled() => return,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(self.inner.config.check_every) => {}
            }
        }
    }

    /// One look at every name: order what is missing or due for renewal, drop what is no longer
    /// served.
    async fn pass(&self) -> anyhow::Result<()> {
        let Some(config) = self.inner.config.acme.clone() else { return Ok(()) };
        let store = &self.inner.store;
        let mut wanted: Vec<(String, i64)> = store.all_domains().await?;
        if config.app_names {
            for app in store.all_apps().await?.into_iter().filter(|a| !a.deleting) {
                wanted.push((self.inner.orchestrator.app_host(&app.name), app.id));
            }
        }
        self.forget_unwanted(&wanted).await?;
        let progress: HashMap<String, berth_store::AcmeNameRow> =
            store.acme_names().await?.into_iter().map(|row| (row.name.clone(), row)).collect();
        for (name, app_id) in wanted {
            if self.inner.stop.is_cancelled() {
                return Ok(());
            }
            let served = self.inner.ingress.certificate_for(&name);
            if served.as_ref().is_some_and(|c| c.remaining() > renewal_window(c)) {
                continue;
            }
            let attempts = progress.get(&name).map_or(0, |p| p.attempts.max(0) as u32);
            if progress.get(&name).is_some_and(|p| p.next_attempt_at > now_ms()) {
                continue;
            }
            store.set_acme_name(&name, "pending", None, attempts as i64, now_ms()).await?;
            // First issuance by HTTP-01 (port 80 is what every DNS setup reaches), renewals by
            // TLS-ALPN-01 (the HTTPS listener is up, serving the certificate being renewed), and
            // the other one after each failure.
            let renewal = served.is_some();
            let challenge = if config.tls_alpn && (renewal ^ (attempts % 2 == 1)) {
                ChallengeType::TlsAlpn01
            } else {
                ChallengeType::Http01
            };
            tracing::info!(%name, ?challenge, renewal, "ordering a certificate");
            let outcome = tokio::select! {
                outcome = self.obtain(&config, app_id, &name, challenge) => outcome,
                () = self.inner.stop.cancelled() => return Ok(()),
            };
            match outcome {
                Ok(certificate) => {
                    let renew_at = certificate.not_after - renewal_window(&certificate);
                    store.set_acme_name(&name, "issued", None, 0, unix_ms(renew_at)).await?;
                    tracing::info!(%name, expires = unix_ms(certificate.not_after), "certificate issued");
                }
                Err(error) => {
                    let rate_limited = matches!(error, acme::OrderError::RateLimited(_));
                    let delay = retry_delay(config.retry_base, attempts + 1, rate_limited);
                    let next = now_ms() + delay.as_millis() as i64;
                    let message = error.to_string();
                    tracing::warn!(%name, error = %message, retry_in = ?delay, "certificate order failed");
                    store.set_acme_name(&name, "failed", Some(&message), attempts as i64 + 1, next).await?;
                }
            }
        }
        Ok(())
    }

    /// Orders a certificate for `name`, stores it (replacing the app's older ACME certificates
    /// for the same names) and serves it.
    async fn obtain(
        &self,
        config: &AcmeConfig,
        app_id: i64,
        name: &str,
        challenge: ChallengeType,
    ) -> Result<Certificate, acme::OrderError> {
        let account = {
            let mut cached = self.inner.account.lock().await;
            match cached.as_ref() {
                Some(account) => account.clone(),
                None => {
                    let saved = self.inner.config.tls_dir.join("acme-account.json");
                    let account =
                        acme::account(&config.directory_url, &config.email, config.ca_file.as_deref(), &saved).await?;
                    cached.insert(account).clone()
                }
            }
        };
        let (chain_pem, key_pem) = acme::order(&account, &self.inner.ingress, name, challenge).await?;
        let certificate = Certificate::from_pem(chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|e| acme::OrderError::Ca(format!("the CA's certificate cannot be served: {e}")))?;
        let older: Vec<i64> = self
            .inner
            .store
            .app_certificates(app_id)
            .await
            .context("reading certificates")?
            .into_iter()
            .filter(|row| row.source() == CertSource::Acme && row.names().iter().all(|n| certificate.names.contains(n)))
            .map(|row| row.id)
            .collect();
        self.save(app_id, CertSource::Acme, &certificate, &chain_pem, &key_pem).await?;
        for id in older {
            self.delete(id).await?;
        }
        self.reload().await?;
        Ok(certificate)
    }

    /// Drops ACME certificates and state of names no app has any more.
    async fn forget_unwanted(&self, wanted: &[(String, i64)]) -> anyhow::Result<()> {
        let wanted: HashSet<&str> = wanted.iter().map(|(name, _)| name.as_str()).collect();
        let mut changed = false;
        for row in self.inner.store.certificates().await? {
            if row.source() == CertSource::Acme && !row.names().iter().any(|n| wanted.contains(n.as_str())) {
                self.delete(row.id).await?;
                changed = true;
            }
        }
        for row in self.inner.store.acme_names().await? {
            if !wanted.contains(row.name.as_str()) {
                self.inner.store.remove_acme_name(&row.name).await?;
            }
        }
        if changed {
            self.reload().await?;
        }
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_with_jitter_up_to_a_day() {
        let base = Duration::from_secs(60);
        for _ in 0..50 {
            let first = retry_delay(base, 1, false);
            assert!(first >= Duration::from_secs(48) && first <= Duration::from_secs(72), "{first:?}");
            let third = retry_delay(base, 3, false);
            assert!(third >= Duration::from_secs(192) && third <= Duration::from_secs(288), "{third:?}");
            assert!(retry_delay(base, 40, false) <= DAY.mul_f64(1.2));
            assert!(retry_delay(base, 1, true) >= Duration::from_secs(2880), "rate limits wait an hour or so");
        }
    }
}
