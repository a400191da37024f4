//! Where the CLI finds its API token (the flag or `BERTH_TOKEN`, the token `berth login` kept
//! for the server's URL, or the server's admin token next to its data directory), and how
//! `berth login` keeps one: in a JSON file of tokens by URL that only its owner can read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use berth_wire::ADMIN_TOKEN_FILE;

/// Tokens by server URL (without a trailing slash).
type LoginStore = BTreeMap<String, String>;

/// Where `berth login` keeps tokens: `$BERTH_CONFIG`, else `$XDG_CONFIG_HOME/berth/config.json`,
/// else `~/.config/berth/config.json`; `None` when none of these variables is set.
pub fn config_path() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("BERTH_CONFIG") {
        return Some(path.into());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("berth/config.json"))
}

/// The first token found for `url` (without a trailing slash): `given` (flag or `BERTH_TOKEN`),
/// the one `berth login` kept for the URL, or the admin token in `$BERTH_DATA_DIR` (default
/// `./berth-data`) when run next to the server.
pub(crate) fn find_token(url: &str, given: Option<String>) -> anyhow::Result<String> {
    if let Some(token) = given.or_else(|| stored_token(url)) {
        return Ok(token);
    }
    let data_dir = std::env::var("BERTH_DATA_DIR").unwrap_or_else(|_| "./berth-data".into());
    let path = Path::new(&data_dir).join(ADMIN_TOKEN_FILE);
    std::fs::read_to_string(&path).map(|token| token.trim().to_string()).map_err(|_| {
        anyhow::anyhow!(
            "no API token: run `berth login`, pass --token, set BERTH_TOKEN, or run next to the server's {}",
            path.display()
        )
    })
}

fn stored_token(url: &str) -> Option<String> {
    let text = std::fs::read_to_string(config_path()?).ok()?;
    serde_json::from_str::<LoginStore>(&text).ok()?.get(url).cloned()
}

/// Keeps `token` as the one for `url`, next to those of other servers; returns the file's path.
pub(crate) fn keep_token(url: &str, token: String) -> anyhow::Result<PathBuf> {
    let path = config_path().context("no config directory: set BERTH_CONFIG or HOME")?;
    // An unreadable or corrupt file is replaced: the tokens in it are lost either way.
    let mut logins: LoginStore =
        std::fs::read_to_string(&path).ok().and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default();
    logins.insert(url.to_string(), token);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&logins).context("serialising the stored tokens")?;
    write_private(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes the token file readable by its owner only (created 0600, never wider).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}
