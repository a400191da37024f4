//! Berth's git repositories: one bare repository per app under the data directory, driven by the
//! system `git` (pack ingest, fsck, quarantine, ref transactions and protocol versions stay in
//! git). Berth's own hooks directory is forced on every git it runs, so hooks inside a repository
//! never run.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use tokio::process::Command;

/// Where the pushed objects are while the pre-receive hook runs (git's quarantine), so a build
/// can read a commit that no ref points at yet.
#[derive(Debug, Clone, Default)]
pub struct ObjectDirs {
    pub object_directory: Option<String>,
    pub alternate_object_directories: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Repos {
    root: PathBuf,
    hooks: PathBuf,
    creating: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A URL as it may be shown: without a user name or password in it.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            let slash = if rest.contains('/') { "/" } else { "" };
            format!("{scheme}://{host}{slash}{path}")
        }
        None => url.to_string(),
    }
}

impl Repos {
    /// Checks that `git` runs, and writes the hooks directory whose `pre-receive` runs
    /// `hook_program hook pre-receive` (the `berth` binary).
    pub async fn open(data_dir: &Path, hook_program: &Path) -> anyhow::Result<Repos> {
        let version = Command::new("git")
            .arg("--version")
            .output()
            .await
            .context("git is not installed (or not on PATH): Berth's git remote needs it; install git")?;
        if !version.status.success() {
            bail!("`git --version` failed: {}", String::from_utf8_lossy(&version.stderr).trim());
        }
        let root = data_dir.join("git");
        let hooks = data_dir.join("git-hooks");
        tokio::fs::create_dir_all(&root).await.with_context(|| format!("creating {}", root.display()))?;
        tokio::fs::create_dir_all(&hooks).await.with_context(|| format!("creating {}", hooks.display()))?;
        let program = hook_program.display().to_string();
        if program.contains('\'') {
            bail!("the berth binary's path {program} contains a quote; move it");
        }
        let script = format!(
            "#!/bin/sh\n# Written by berth server at start: every push goes through Berth.\nexec '{program}' hook pre-receive\n"
        );
        let hook = hooks.join("pre-receive");
        tokio::fs::write(&hook, script).await.with_context(|| format!("writing {}", hook.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        tokio::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).await?;
        Ok(Repos { root, hooks, creating: Default::default() })
    }

    pub fn path(&self, team: &str, app: &str) -> PathBuf {
        self.root.join(team).join(format!("{app}.git"))
    }

    /// A `git` command in `repo` with Berth's hooks path and no inherited git environment.
    pub fn git(&self, repo: &Path) -> Command {
        let mut command = Command::new("git");
        command
            .arg("-c")
            .arg(format!("core.hooksPath={}", self.hooks.display()))
            .current_dir(repo)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// The app's bare repository, created and configured on first use.
    pub async fn ensure(&self, team: &str, app: &str, deploy_branch: &str) -> anyhow::Result<PathBuf> {
        let repo = self.path(team, app);
        if !repo.join("HEAD").exists() {
            // Concurrent first requests for one app: the lock makes one of them create it.
            let _creating = self.creating.lock().await;
            if !repo.join("HEAD").exists() {
                tokio::fs::create_dir_all(&repo).await?;
                run(self.git(&repo).args(["init", "--quiet", "--bare", "."])).await?;
                self.configure(&repo, deploy_branch).await?;
            }
        }
        Ok(repo)
    }

    /// Applies Berth's settings to a repository (at creation, and when the deploy branch
    /// changes).
    pub async fn configure(&self, repo: &Path, deploy_branch: &str) -> anyhow::Result<()> {
        for (key, value) in [
            ("receive.fsckObjects", "true"),
            ("receive.shallowUpdate", "true"),
            ("receive.advertisePushOptions", "true"),
            ("receive.denyDeletes", "true"),
            ("receive.denyDeleteCurrent", "true"),
            ("core.hooksPath", &self.hooks.display().to_string()),
        ] {
            run(self.git(repo).args(["config", key, value])).await?;
        }
        run(self.git(repo).args(["symbolic-ref", "HEAD", &format!("refs/heads/{deploy_branch}")])).await?;
        Ok(())
    }

    /// Copies the objects of a push's quarantine into the repository, so its commit stays even
    /// if git discards the quarantine (the pusher went away before git could accept the push).
    /// Only regular files under the repository's own `objects/` are copied, each to a temporary
    /// name then renamed (a copy cut short leaves nothing git would read), packs before their
    /// indexes.
    pub async fn keep_objects(&self, repo: &Path, objects: &ObjectDirs) -> anyhow::Result<()> {
        let Some(given) = objects.object_directory.as_deref() else { return Ok(()) };
        let target = tokio::fs::canonicalize(repo.join("objects")).await.context("the repository's objects")?;
        let quarantine = tokio::fs::canonicalize(given).await.with_context(|| format!("the quarantine {given}"))?;
        if !quarantine.starts_with(&target) || quarantine == target {
            anyhow::bail!("{given} is not a quarantine inside the repository");
        }
        let mut files = Vec::new();
        let mut pending = vec![quarantine.clone()];
        while let Some(dir) = pending.pop() {
            let mut entries = tokio::fs::read_dir(&dir).await.with_context(|| format!("reading {}", dir.display()))?;
            while let Some(entry) = entries.next_entry().await? {
                let kind = tokio::fs::symlink_metadata(entry.path()).await?.file_type();
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file() {
                    files.push(entry.path());
                }
            }
        }
        // A pack before its index: git reads a pack through its `.idx`.
        files.sort_by_key(|path| path.extension().is_none_or(|e| e != "pack"));
        for path in files {
            let relative = path.strip_prefix(&quarantine).context("a path outside the quarantine")?;
            let destination = target.join(relative);
            if tokio::fs::symlink_metadata(&destination).await.is_ok() {
                continue;
            }
            let parent = destination.parent().context("an object path has a parent")?;
            tokio::fs::create_dir_all(parent).await?;
            let name = destination.file_name().context("an object path has a name")?.to_string_lossy();
            let temporary = parent.join(format!("tmp_berth_{name}"));
            tokio::fs::copy(&path, &temporary).await.with_context(|| format!("copying {}", path.display()))?;
            tokio::fs::rename(&temporary, &destination).await?;
        }
        Ok(())
    }

    /// The commit `branch` points at, if it exists.
    pub async fn branch_commit(&self, repo: &Path, branch: &str) -> Option<String> {
        let output = self
            .git(repo)
            .args(["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}^{{commit}}")])
            .output()
            .await
            .ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// A tar of `commit`'s `context_dir`, the Dockerfile always included and `.dockerignore`
    /// honoured; reads quarantined objects through `objects`.
    pub async fn archive(
        &self,
        repo: &Path,
        commit: &str,
        context_dir: &str,
        dockerfile: &str,
        objects: &ObjectDirs,
    ) -> anyhow::Result<Vec<u8>> {
        let context = context_dir.trim_matches('/');
        let tree = if context.is_empty() { format!("{commit}^{{tree}}") } else { format!("{commit}:{context}") };
        let mut command = self.git(repo);
        command.args(["archive", "--format=tar", &tree]);
        if let Some(dir) = &objects.object_directory {
            command.env("GIT_OBJECT_DIRECTORY", dir);
        }
        if let Some(dirs) = &objects.alternate_object_directories {
            command.env("GIT_ALTERNATE_OBJECT_DIRECTORIES", dirs);
        }
        let output = command.output().await.context("running git archive")?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if context.is_empty() {
                bail!("cannot read commit {commit}: {}", stderr.trim());
            }
            bail!("the context directory {context:?} does not exist in commit {commit} ({})", stderr.trim());
        }
        crate::ignore::filter_context(&output.stdout, dockerfile)
    }

    /// Fetches `commit` from `url` into the repository: the branch first (cheap and allowed
    /// everywhere), then the commit itself if the branch has moved past something else.
    pub async fn fetch(&self, repo: &Path, url: &str, branch: &str, commit: &str) -> anyhow::Result<()> {
        let has_commit = |repo: PathBuf| {
            let mut command = self.git(&repo);
            command.args(["cat-file", "-e", &format!("{commit}^{{commit}}")]);
            async move { command.status().await.is_ok_and(|s| s.success()) }
        };
        let refspec = format!("+refs/heads/{branch}:refs/berth/fetched/{branch}");
        // Only network transports: never `file://`, `ext::` (runs a command) or a local path.
        let fetch = |repo: &Path| {
            let mut command = self.git(repo);
            command.args(["-c", "protocol.allow=never"]);
            for scheme in ["https", "http", "ssh", "git"] {
                command.args(["-c", &format!("protocol.{scheme}.allow=always")]);
            }
            command.args(["fetch", "--quiet", "--no-tags", "--"]);
            command
        };
        let by_branch = run(fetch(repo).args([url, &refspec])).await;
        if has_commit(repo.to_path_buf()).await {
            return Ok(());
        }
        let by_commit = run(fetch(repo).args([url, commit])).await;
        if has_commit(repo.to_path_buf()).await {
            return Ok(());
        }
        let reason = by_commit
            .err()
            .or(by_branch.err())
            .map_or_else(|| format!("{url} does not have commit {commit} on {branch}"), |e| format!("{e:#}"));
        bail!("fetching {commit} from {url}: {reason}")
    }

    /// Points `branch` at `commit` (a webhook build that released: the repository follows what
    /// is deployed).
    pub async fn set_branch(&self, repo: &Path, branch: &str, commit: &str) -> anyhow::Result<()> {
        run(self.git(repo).args(["update-ref", &format!("refs/heads/{branch}"), commit])).await
    }
}

async fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.stdout(Stdio::null()).output().await.context("running git")?;
    if !output.status.success() {
        bail!("git failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(redact_url("https://user:s3cret@git.example.com/a/b.git"), "https://git.example.com/a/b.git");
        assert_eq!(redact_url("https://git.example.com/a/b.git"), "https://git.example.com/a/b.git");
        assert_eq!(redact_url("ssh://git@host:22/x"), "ssh://host:22/x");
        assert_eq!(redact_url("git://host"), "git://host");
    }
}
