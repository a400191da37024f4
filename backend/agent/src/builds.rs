//! Image builds and the housekeeping of built images, on one host: what the control plane's build
//! coordinator asks of the in-process agent directly and of a remote agent over its connection.

use std::collections::HashSet;

use berth_wire::agent::{BuildRequest, BuildUpdate};
use berth_wire::labels;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::runtime::{BuildEvent, BuildSpec, ByteStream, ContainerRuntime};

impl From<BuildRequest> for BuildSpec {
    fn from(request: BuildRequest) -> BuildSpec {
        BuildSpec {
            tag: request.tag,
            dockerfile: request.dockerfile,
            build_args: request.build_args.into_iter().collect(),
            labels: request.labels.into_iter().collect(),
            no_cache: request.no_cache,
        }
    }
}

impl From<BuildSpec> for BuildRequest {
    fn from(spec: BuildSpec) -> BuildRequest {
        BuildRequest {
            tag: spec.tag,
            dockerfile: spec.dockerfile,
            build_args: spec.build_args.into_iter().collect(),
            labels: spec.labels.into_iter().collect(),
            no_cache: spec.no_cache,
        }
    }
}

impl From<BuildEvent> for BuildUpdate {
    fn from(event: BuildEvent) -> BuildUpdate {
        match event {
            BuildEvent::Line(line) => BuildUpdate::Line { line },
            BuildEvent::Built => BuildUpdate::Built,
            BuildEvent::Failed(error) => BuildUpdate::Failed { error },
        }
    }
}

impl From<BuildUpdate> for BuildEvent {
    fn from(update: BuildUpdate) -> BuildEvent {
        match update {
            BuildUpdate::Line { line } => BuildEvent::Line(line),
            BuildUpdate::Built => BuildEvent::Built,
            BuildUpdate::Failed { error } => BuildEvent::Failed(error),
        }
    }
}

/// A build's progress as the JSON lines an agent uploads.
pub fn build_lines(
    runtime: &dyn ContainerRuntime,
    request: BuildRequest,
    context: ByteStream,
) -> BoxStream<'static, Result<Vec<u8>, std::io::Error>> {
    runtime
        .build(request.into(), context)
        .map(|event| {
            let mut json = serde_json::to_vec(&BuildUpdate::from(event)).expect("BUG: build updates serialise");
            json.push(b'\n');
            Ok(json)
        })
        .boxed()
}

/// What a cleanup removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleaned {
    pub images: Vec<String>,
    pub cache_bytes: u64,
}

/// Removes the images Berth built for `app` (`team/app`) except those tagged in `keep`; only
/// images carrying Berth's label are ever considered, and an image a container uses stays (the
/// engine refuses). Then prunes the build cache down to `cache_max_bytes` if it is larger.
pub async fn clean_images(
    runtime: &dyn ContainerRuntime,
    app: &str,
    keep: &HashSet<String>,
    cache_max_bytes: u64,
) -> anyhow::Result<Cleaned> {
    let mut cleaned = Cleaned::default();
    for image in runtime.images(labels::IMAGE_APP, app).await? {
        if image.tags.iter().any(|t| keep.contains(t)) {
            continue;
        }
        let name = image.tags.first().cloned().unwrap_or(image.id.clone());
        match runtime.remove_image(&name).await {
            Ok(()) => cleaned.images.push(name),
            Err(error) => tracing::debug!(%error, image = name, "image kept"),
        }
    }
    if runtime.build_cache_bytes().await.unwrap_or(0) > cache_max_bytes {
        cleaned.cache_bytes = runtime.prune_build_cache(cache_max_bytes).await?;
    }
    Ok(cleaned)
}
