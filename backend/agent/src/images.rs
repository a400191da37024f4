//! Where an agent gets an image its runtime lacks and cannot pull (built or loaded on another host,
//! no registry): an `ImageSource`. The control plane provides one for its in-process agent;
//! `HttpImageSource` asks the control plane over HTTP for a remote agent.

use anyhow::{Context as _, bail};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::runtime::ByteStream;

pub trait ImageSource: Send + Sync {
    /// The image as an archive this host's runtime can load.
    fn fetch(&self, image: &str) -> BoxFuture<'static, anyhow::Result<ByteStream>>;
}

/// A remote agent's source: `GET /api/v1/agents/images` on the control plane.
pub struct HttpImageSource {
    /// The control plane the agent is connected to (it changes when the leader does).
    pub plane: std::sync::Arc<std::sync::RwLock<crate::tls::ControlPlane>>,
    pub credential: String,
}

impl ImageSource for HttpImageSource {
    fn fetch(&self, image: &str) -> BoxFuture<'static, anyhow::Result<ByteStream>> {
        let plane = self.plane.read().expect("BUG: control plane lock poisoned").clone();
        let request = plane
            .http
            .get(format!("{}/api/v1/agents/images", plane.base))
            .query(&[("image", image)])
            .bearer_auth(&self.credential);
        async move {
            let response = request.send().await.context("asking the control plane for the image")?;
            if !response.status().is_success() {
                let body: berth_wire::ErrorBody = response.json().await.context("the control plane refused")?;
                bail!("{}", body.message);
            }
            Ok(response.bytes_stream().map(|chunk| chunk.map_err(std::io::Error::other)).boxed())
        }
        .boxed()
    }
}

/// `image` as Docker names it in an archive: `docker.io/` and `library/` left out, `:latest`
/// added when it has no tag (a digest reference stays as it is).
fn familiar(image: &str) -> String {
    let name = image.strip_prefix("docker.io/").unwrap_or(image);
    let name = name.strip_prefix("library/").unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.contains('@') || last.contains(':') { name.to_string() } else { format!("{name}:latest") }
}

/// Checks that loading the image archive at `path` (as `docker save` writes it) can create or
/// move no tag but `image`: an archive from another host must not retag any other image here (a
/// crafted `manifest.json` naming `postgres:16` would otherwise replace it for every app).
pub fn check_archive(path: &std::path::Path, image: &str) -> anyhow::Result<()> {
    use std::io::Read as _;
    const MAX_INDEX: u64 = 1 << 20;
    let wanted = familiar(image);
    let mut tags: Vec<String> = Vec::new();
    let mut manifest = false;
    let mut seen = std::collections::HashSet::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path).context("opening the image archive")?);
    for entry in archive.entries().context("reading the image archive")? {
        let entry = entry.context("reading the image archive")?;
        let raw = entry.path().context("an entry's name")?.to_string_lossy().to_string();
        let name = raw.strip_prefix("./").unwrap_or(&raw).to_string();
        // The engine cleans paths before unpacking (`/manifest.json`, `a/../manifest.json` and
        // `.//manifest.json` all become `manifest.json`): a name that is not already clean could
        // overwrite what was checked here, so it is refused outright.
        let clean = !name.is_empty()
            && !name.starts_with('/')
            && name.trim_end_matches('/').split('/').all(|part| !part.is_empty() && part != "." && part != "..");
        if !clean {
            bail!("the image archive has an entry named {raw:?}; refused");
        }
        if !matches!(name.as_str(), "manifest.json" | "repositories" | "index.json") {
            continue;
        }
        if !seen.insert(name.clone()) {
            bail!("the image archive has {name} twice; refused");
        }
        if entry.size() > MAX_INDEX {
            bail!("{name} in the image archive is larger than {MAX_INDEX} bytes");
        }
        let mut text = String::new();
        entry.take(MAX_INDEX).read_to_string(&mut text).with_context(|| format!("reading {name}"))?;
        let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{name} is not JSON"))?;
        match name.as_str() {
            "manifest.json" => {
                manifest = true;
                let entries = json.as_array().with_context(|| "manifest.json is not a list")?;
                for entry in entries {
                    for tag in entry["RepoTags"].as_array().into_iter().flatten() {
                        tags.push(tag.as_str().context("a RepoTag is not a string")?.to_string());
                    }
                }
            }
            "repositories" => {
                let repositories = json.as_object().context("repositories is not an object")?;
                for (repository, by_tag) in repositories {
                    for tag in by_tag.as_object().context("repositories is malformed")?.keys() {
                        tags.push(format!("{repository}:{tag}"));
                    }
                }
            }
            _ => {
                for descriptor in json["manifests"].as_array().into_iter().flatten() {
                    if let Some(name) = descriptor["annotations"]["io.containerd.image.name"].as_str() {
                        tags.push(name.to_string());
                    }
                }
            }
        }
    }
    if !manifest {
        bail!("the image archive has no manifest.json");
    }
    if let Some(other) = tags.iter().find(|tag| familiar(tag) != wanted) {
        bail!("the image archive for {image} would also tag {other}; refused");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &str)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut builder = tar::Builder::new(file.reopen().unwrap());
        for (name, text) in files {
            // The name is written raw: the tar crate would refuse (or clean) the hostile ones.
            let mut header = tar::Header::new_old();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append(&header, text.as_bytes()).unwrap();
        }
        builder.finish().unwrap();
        file
    }

    #[test]
    fn an_archive_may_tag_only_the_image_asked_for() {
        let good = archive(&[
            ("manifest.json", r#"[{"Config":"c.json","RepoTags":["berth/main/web:abc-1"],"Layers":[]}]"#),
            ("repositories", r#"{"berth/main/web":{"abc-1":"x"}}"#),
        ]);
        check_archive(good.path(), "berth/main/web:abc-1").unwrap();
        let official = archive(&[("manifest.json", r#"[{"RepoTags":["nginx:latest"]}]"#)]);
        check_archive(official.path(), "docker.io/library/nginx").unwrap();
        let untagged = archive(&[("manifest.json", r#"[{"RepoTags":null}]"#)]);
        check_archive(untagged.path(), "web@sha256:0123").unwrap();

        let retags = archive(&[("manifest.json", r#"[{"RepoTags":["berth/main/web:abc-1","postgres:16"]}]"#)]);
        let error = check_archive(retags.path(), "berth/main/web:abc-1").unwrap_err().to_string();
        assert!(error.contains("postgres:16"), "{error}");
        let legacy = archive(&[
            ("manifest.json", r#"[{"RepoTags":["web:1"]}]"#),
            ("repositories", r#"{"postgres":{"16":"x"}}"#),
        ]);
        assert!(check_archive(legacy.path(), "web:1").is_err(), "the legacy index is checked too");
        let oci = archive(&[
            ("manifest.json", r#"[{"RepoTags":["web:1"]}]"#),
            (
                "index.json",
                r#"{"manifests":[{"annotations":{"io.containerd.image.name":"docker.io/library/redis:7"}}]}"#,
            ),
        ]);
        assert!(check_archive(oci.path(), "web:1").is_err(), "the OCI index is checked too");
        assert!(check_archive(archive(&[]).path(), "web:1").is_err(), "no manifest");
        // Names the engine would clean into an index file, and a second copy of one.
        for sneaky in ["/manifest.json", "a/../manifest.json", ".//manifest.json", "./a/./b"] {
            let smuggled = archive(&[("manifest.json", r#"[{"RepoTags":["web:1"]}]"#), (sneaky, "[]")]);
            assert!(check_archive(smuggled.path(), "web:1").is_err(), "{sneaky}");
        }
        let twice = archive(&[("manifest.json", r#"[{"RepoTags":["web:1"]}]"#), ("./manifest.json", "[]")]);
        assert!(check_archive(twice.path(), "web:1").is_err(), "a second manifest.json");
    }
}
