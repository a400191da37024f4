//! Secret environment variables, sealed at rest.
//!
//! An app's secret variables travel in its releases' specs (`AppSpec::secrets`) as sealed
//! strings, `v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`: AES-256-GCM under the instance's
//! key, a random nonce per value, and associated data binding the value to its team, app and
//! variable name (a sealed value copied into another app's spec does not open). Only two places
//! see a plaintext value: the services, which seal it as it arrives, and the orchestrator's desired
//! lists, which open it for the agent that starts the container.
//!
//! The keys live in `<data-dir>/secrets.key` (mode 0600; a more open file is refused), one per line,
//! `<id> <base64 key>`; the last line is the key new values are sealed with. `rotate` adds a key,
//! reseals every stored value with it in one store transaction and only then drops the older
//! keys, so a crash at any point leaves every value readable.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use berth_store::Store;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "secrets.key";
const FORMAT: &str = "v1";

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name} of {team}/{app} is not a sealed value")]
    Malformed { team: String, app: String, name: String },
    #[error(
        "secret {name} of {team}/{app} is sealed with key {key}, which is not in {KEY_FILE} (was the data directory's key file replaced?)"
    )]
    UnknownKey { team: String, app: String, name: String, key: String },
    #[error("secret {name} of {team}/{app} does not open with key {key}: the value or the key was altered")]
    Corrupt { team: String, app: String, name: String, key: String },
}

/// What one value is bound to: the associated data of its seal.
#[derive(Debug, Clone, Copy)]
pub struct SecretScope<'a> {
    pub team: &'a str,
    pub app: &'a str,
}

impl SecretScope<'_> {
    fn aad(&self, name: &str) -> Vec<u8> {
        format!("berth-secret\0{}\0{}\0{name}", self.team, self.app).into_bytes()
    }
}

struct Key {
    id: String,
    bytes: [u8; 32],
    aead: LessSafeKey,
}

impl Key {
    fn new(id: String, bytes: [u8; 32]) -> Key {
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("BUG: AES-256 keys are 32 bytes"));
        Key { id, bytes, aead }
    }

    fn generate(id: String) -> anyhow::Result<Key> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
        Ok(Key::new(id, bytes))
    }
}

/// The instance's secret keys. Cheap to clone; every clone shares the same keys.
#[derive(Clone)]
pub struct SecretKeys {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: kept in memory only (tests).
    path: Option<PathBuf>,
    /// Never empty; the last key seals new values.
    keys: RwLock<Vec<Key>>,
    /// Keys this process retired: on no disk any more, but a spec read before a rotation
    /// committed (a release about to go out, a desired list being built) still opens.
    retired: RwLock<Vec<Key>>,
    /// Held shared from sealing a value until its spec is stored, exclusively by `rotate`: no
    /// value sealed with a key being retired can be stored after the rotation's reseal.
    writers: Arc<tokio::sync::RwLock<()>>,
    /// The key file as last read or written (modification time, length): when it changes,
    /// another instance sharing the data directory rotated, and the keys are read again.
    file: std::sync::Mutex<Option<(std::time::SystemTime, u64)>>,
}

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.keys().iter().map(|k| k.id.clone()).collect();
        f.debug_struct("SecretKeys").field("path", &self.inner.path).field("key_ids", &ids).finish()
    }
}

/// What `rotate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The key every value is now sealed with.
    pub key_id: String,
    /// Values resealed (each in every release that carries it).
    pub resealed: usize,
    /// Stored values that did not open (sealed under a key lost earlier), left as they were.
    pub unreadable: usize,
    /// Keys dropped from the key file.
    pub retired: Vec<String>,
}

impl SecretKeys {
    /// The keys in `<data_dir>/secrets.key`, created with one fresh key when missing.
    pub fn open(data_dir: &Path) -> anyhow::Result<SecretKeys> {
        let path = data_dir.join(KEY_FILE);
        let keys = match fs::read_to_string(&path) {
            Ok(text) => {
                check_private(&path)?;
                parse(&text).with_context(|| format!("reading {}", path.display()))?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let keys = vec![Key::generate("k1".into())?];
                write_file(&path, &keys)?;
                keys
            }
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        Ok(SecretKeys::from_keys(Some(path), keys))
    }

    /// One fresh key kept in memory only: for tests, and for stores nothing outlives.
    pub fn ephemeral() -> SecretKeys {
        SecretKeys::from_keys(None, vec![Key::generate("k1".into()).expect("the system's random source failed")])
    }

    fn from_keys(path: Option<PathBuf>, keys: Vec<Key>) -> SecretKeys {
        let file = path.as_deref().and_then(file_version);
        SecretKeys {
            inner: Arc::new(Inner {
                path,
                keys: RwLock::new(keys),
                retired: RwLock::new(Vec::new()),
                writers: Arc::new(tokio::sync::RwLock::new(())),
                file: std::sync::Mutex::new(file),
            }),
        }
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, Vec<Key>> {
        self.refresh();
        self.inner.keys.read().expect("BUG: secret keys poisoned")
    }

    /// Reads the key file again when it changed since this process last read or wrote it (an
    /// instance sharing the data directory rotated): its new key seals from then on, and the keys
    /// it dropped still open what was sealed with them, as after a rotation of this process's own.
    fn refresh(&self) {
        let Some(path) = &self.inner.path else { return };
        let now = file_version(path);
        // Not held while the keys are locked: `rotate` locks the keys, then the file's state.
        if now.is_none() || *self.inner.file.lock().expect("BUG: key file state poisoned") == now {
            return;
        }
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => return tracing::warn!(%error, path = %path.display(), "re-reading the secret keys failed"),
        };
        match parse(&text) {
            Ok(keys) if !keys.is_empty() => {
                let mut current = self.inner.keys.write().expect("BUG: secret keys poisoned");
                let (_, dropped): (Vec<Key>, Vec<Key>) =
                    std::mem::take(&mut *current).into_iter().partition(|k| keys.iter().any(|n| n.id == k.id));
                self.inner.retired.write().expect("BUG: secret keys poisoned").extend(dropped);
                *current = keys;
                *self.inner.file.lock().expect("BUG: key file state poisoned") = now;
                tracing::info!(path = %path.display(), "the secret keys changed on disk; using them");
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "the secret key file holds no key; keeping the keys in memory")
            }
            Err(error) => tracing::warn!(error = format!("{error:#}"), "re-reading the secret keys failed"),
        }
    }

    /// The id of the key new values are sealed with.
    pub fn current_key_id(&self) -> String {
        self.keys().last().expect("BUG: no secret key").id.clone()
    }

    /// Hold this from sealing values until the spec carrying them is stored (a rotation waits).
    pub async fn hold(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.inner.writers.clone().read_owned().await
    }

    /// Seals `value` for variable `name` of the app `scope`.
    pub fn seal(&self, scope: SecretScope<'_>, name: &str, value: &str) -> String {
        let keys = self.keys();
        let key = keys.last().expect("BUG: no secret key");
        seal_with(key, scope, name, value)
    }

    /// Opens a value `seal` made for the same scope and name.
    pub fn open_value(&self, scope: SecretScope<'_>, name: &str, sealed: &str) -> Result<String, SecretError> {
        let context = || (scope.team.to_string(), scope.app.to_string(), name.to_string());
        let malformed = || {
            let (team, app, name) = context();
            SecretError::Malformed { team, app, name }
        };
        let mut parts = sealed.splitn(3, ':');
        let (Some(FORMAT), Some(key_id), Some(payload)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed());
        };
        let mut bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| malformed())?;
        if bytes.len() < NONCE_LEN {
            return Err(malformed());
        }
        let keys = self.keys();
        let retired = self.inner.retired.read().expect("BUG: secret keys poisoned");
        let Some(key) = keys.iter().chain(retired.iter()).find(|k| k.id == key_id) else {
            let (team, app, name) = context();
            return Err(SecretError::UnknownKey { team, app, name, key: key_id.to_string() });
        };
        let (nonce, ciphertext) = bytes.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| malformed())?;
        let corrupt = || {
            let (team, app, name) = context();
            SecretError::Corrupt { team, app, name, key: key_id.to_string() }
        };
        let plain = key.aead.open_in_place(nonce, Aad::from(scope.aad(name)), ciphertext).map_err(|_| corrupt())?;
        String::from_utf8(plain.to_vec()).map_err(|_| corrupt())
    }

    /// Opens every value of `sealed`, the secrets of the app `scope`.
    pub fn open_all<'a>(
        &self,
        scope: SecretScope<'_>,
        sealed: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Vec<(String, String)>, SecretError> {
        sealed.into_iter().map(|(name, value)| Ok((name.clone(), self.open_value(scope, name, value)?))).collect()
    }

    /// Adds a key, reseals every stored secret with it and drops the older keys. New seals wait
    /// meanwhile. A stored value that does not open (sealed under a key lost before) cannot be
    /// resealed: it is left as it is and counted.
    pub async fn rotate(&self, store: &Store) -> anyhow::Result<Rotation> {
        let _exclusive = self.inner.writers.write().await;
        let next = {
            let keys = self.keys();
            let highest = keys.iter().filter_map(|k| k.id.strip_prefix('k')?.parse::<u64>().ok()).max().unwrap_or(0);
            Key::generate(format!("k{}", highest + 1))?
        };
        let key_id = next.id.clone();
        {
            let mut keys = self.inner.keys.write().expect("BUG: secret keys poisoned");
            keys.push(next);
            // The new key is on disk before any value is sealed with it.
            self.persist(&keys)?;
        }
        let (mut resealed, mut unreadable) = (0, 0);
        store
            .rewrite_specs(|team, app, spec| -> anyhow::Result<bool> {
                let scope = SecretScope { team, app };
                let mut changed = false;
                for (name, sealed) in spec.secrets.iter_mut() {
                    if key_of(sealed) == Some(key_id.as_str()) {
                        continue;
                    }
                    match self.open_value(scope, name, sealed) {
                        Ok(plain) => {
                            *sealed = self.seal(scope, name, &plain);
                            resealed += 1;
                            changed = true;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "a stored secret does not open; left as it is");
                            unreadable += 1;
                        }
                    }
                }
                Ok(changed)
            })
            .await?;
        let mut keys = self.inner.keys.write().expect("BUG: secret keys poisoned");
        let (kept, old): (Vec<Key>, Vec<Key>) = std::mem::take(&mut *keys).into_iter().partition(|k| k.id == key_id);
        *keys = kept;
        self.persist(&keys)?;
        let retired = old.iter().map(|k| k.id.clone()).collect();
        self.inner.retired.write().expect("BUG: secret keys poisoned").extend(old);
        Ok(Rotation { key_id, resealed, unreadable, retired })
    }

    fn persist(&self, keys: &[Key]) -> anyhow::Result<()> {
        match &self.inner.path {
            Some(path) => {
                write_file(path, keys)?;
                *self.inner.file.lock().expect("BUG: key file state poisoned") = file_version(path);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The id of the key a sealed value names.
pub fn key_of(sealed: &str) -> Option<&str> {
    let mut parts = sealed.splitn(3, ':');
    (parts.next() == Some(FORMAT)).then(|| parts.next()).flatten()
}

fn seal_with(key: &Key, scope: SecretScope<'_>, name: &str, value: &str) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).expect("the system's random source failed");
    let mut buffer = value.as_bytes().to_vec();
    key.aead
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(scope.aad(name)), &mut buffer)
        .expect("BUG: AES-GCM seals any value below 64 GiB");
    let mut payload = nonce.to_vec();
    payload.extend_from_slice(&buffer);
    format!("{FORMAT}:{}:{}", key.id, URL_SAFE_NO_PAD.encode(payload))
}

fn parse(text: &str) -> anyhow::Result<Vec<Key>> {
    let mut keys: Vec<Key> = Vec::new();
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((id, encoded)) = line.split_once(' ') else {
            bail!("line {number} is not `<id> <base64 key>`");
        };
        let valid_id = !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric());
        if !valid_id || keys.iter().any(|k| k.id == id) {
            bail!("line {number}: the key id {id:?} is not letters and digits, or is given twice");
        }
        let bytes: [u8; 32] = STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| format!("line {number}: the key is not 32 bytes of base64"))?;
        keys.push(Key::new(id.to_string(), bytes));
    }
    if keys.is_empty() {
        bail!("no key in the file");
    }
    Ok(keys)
}

#[cfg(unix)]
fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {mode:o}); make it private: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Writes the key file whole: a private temporary file, synced, renamed over the old one.
/// What tells a changed key file: its modification time and length.
fn file_version(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let metadata = fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

fn write_file(path: &Path, keys: &[Key]) -> anyhow::Result<()> {
    let mut text = String::from("# Berth's secret keys: the last one seals new values. Keep this file private.\n");
    for key in keys {
        text.push_str(&format!("{} {}\n", key.id, STANDARD.encode(key.bytes)));
    }
    let temporary = path.with_extension("key.new");
    let _ = fs::remove_file(&temporary);
    crate::write_private(&temporary, text.as_bytes()).with_context(|| format!("writing {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: SecretScope<'static> = SecretScope { team: "main", app: "web" };

    #[test]
    fn a_sealed_value_opens_only_for_its_own_app_and_name() {
        let keys = SecretKeys::ephemeral();
        let sealed = keys.seal(WEB, "DATABASE_URL", "postgres://u:hunter2@db/app");
        assert!(!sealed.contains("hunter2"), "{sealed}");
        assert_eq!(keys.open_value(WEB, "DATABASE_URL", &sealed).unwrap(), "postgres://u:hunter2@db/app");
        // Copied into another app, or under another name, it does not open.
        let other = SecretScope { team: "main", app: "api" };
        assert!(matches!(keys.open_value(other, "DATABASE_URL", &sealed), Err(SecretError::Corrupt { .. })));
        assert!(matches!(keys.open_value(WEB, "OTHER", &sealed), Err(SecretError::Corrupt { .. })));
        // Two seals of one value differ (a fresh nonce each).
        assert_ne!(sealed, keys.seal(WEB, "DATABASE_URL", "postgres://u:hunter2@db/app"));
        assert!(matches!(keys.open_value(WEB, "X", "plain text"), Err(SecretError::Malformed { .. })));
        assert!(matches!(keys.open_value(WEB, "X", "v1:k9:AAAA"), Err(SecretError::Malformed { .. })));
        let unknown = sealed.replacen("v1:k1:", "v1:k7:", 1);
        assert!(matches!(keys.open_value(WEB, "DATABASE_URL", &unknown), Err(SecretError::UnknownKey { .. })));
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let keys = SecretKeys::open(dir.path()).unwrap();
        let sealed = keys.seal(WEB, "TOKEN", "s3cret");
        let path = dir.path().join(KEY_FILE);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = SecretKeys::open(dir.path()).unwrap();
        assert_eq!(again.open_value(WEB, "TOKEN", &sealed).unwrap(), "s3cret");
        // A key file others can read is refused, with what to do about it.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = SecretKeys::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "k1 not-base64\n").unwrap();
        let error = format!("{:#}", SecretKeys::open(dir.path()).unwrap_err());
        assert!(error.contains("line 1"), "{error}");
    }

    #[tokio::test]
    async fn an_instance_sharing_the_data_directory_takes_up_another_ones_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let store = berth_store::Store::open(dir.path()).await.unwrap();
        let (a, b) = (SecretKeys::open(dir.path()).unwrap(), SecretKeys::open(dir.path()).unwrap());
        let before = b.seal(WEB, "TOKEN", "old");
        let rotation = a.rotate(&store).await.unwrap();
        assert_eq!((rotation.key_id.as_str(), rotation.retired.as_slice()), ("k2", ["k1".to_string()].as_slice()));
        // b seals with the new key, opens what a seals, and still opens what it sealed before.
        let after = b.seal(WEB, "TOKEN", "new");
        assert_eq!(key_of(&after), Some("k2"));
        assert_eq!(a.open_value(WEB, "TOKEN", &after).unwrap(), "new");
        assert_eq!(b.open_value(WEB, "TOKEN", &a.seal(WEB, "TOKEN", "from a")).unwrap(), "from a");
        assert_eq!(b.open_value(WEB, "TOKEN", &before).unwrap(), "old");
        assert_eq!(b.current_key_id(), "k2");
    }
}
