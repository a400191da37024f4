//! Where builds run: a host's agent, the in-process one directly (its runtime), a remote one over
//! its connection (the context offered through the relay, the progress uploaded back). Also the
//! cleanup of built images on every host.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_agent::ContainerRuntime;
use berth_agent::runtime::{BuildEvent, BuildSpec, DiskSpace};
use berth_wire::agent::{BuildUpdate, ControlMessage};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;

use crate::links::{HostLink, HostLinks};

/// How long a remote agent has to fetch the context and start uploading progress.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest progress line relayed from a remote build.
const MAX_LINE: usize = 1 << 20;

/// A host that builds.
pub enum BuildTarget {
    Local(Arc<dyn ContainerRuntime>),
    Remote(Arc<HostLink>),
}

impl BuildTarget {
    /// Space for images on the host, when it can be told (the in-process agent's engine only).
    pub async fn disk(&self) -> Option<DiskSpace> {
        match self {
            BuildTarget::Local(runtime) => runtime.disk().await,
            BuildTarget::Remote(_) => None,
        }
    }

    /// Starts the build; the stream ends after `Built` or `Failed`, and dropping it cancels the
    /// build (a remote agent sees its upload fail and drops its engine's build).
    pub async fn build(
        &self,
        links: &HostLinks,
        spec: BuildSpec,
        context: bytes::Bytes,
    ) -> anyhow::Result<BoxStream<'static, BuildEvent>> {
        match self {
            BuildTarget::Local(runtime) => Ok(runtime.build(spec, futures::stream::iter([Ok(context)]).boxed())),
            BuildTarget::Remote(link) => {
                let mut transfer = links.relay().open();
                links.relay().offer(&transfer.id, &link.name, context);
                let command = ControlMessage::Build { transfer: transfer.id.clone(), build: spec.into() };
                if !transfer.ask(&link.name, || link.send_command(command)) {
                    bail!("host {} is not connected", link.name);
                }
                let upload = transfer
                    .first_upload(START_TIMEOUT)
                    .await
                    .with_context(|| format!("host {} did not start the build", link.name))?;
                let lines = FramedRead::new(StreamReader::new(upload), LinesCodec::new_with_max_length(MAX_LINE));
                Ok(lines
                    .take_while(|line| std::future::ready(line.is_ok()))
                    .filter_map(|line| async move {
                        serde_json::from_str::<BuildUpdate>(&line.ok()?).ok().map(BuildEvent::from)
                    })
                    .boxed())
            }
        }
    }
}

/// Removes the app's built images no release needs on every host (the in-process agent's
/// directly, remote ones by command), and prunes build caches larger than `cache_max_bytes`.
pub async fn clean_images(links: &HostLinks, app: &str, keep: &HashSet<String>, cache_max_bytes: u64) {
    for link in links.all() {
        match link.local_agent() {
            Some(agent) => {
                match berth_agent::builds::clean_images(agent.runtime().as_ref(), app, keep, cache_max_bytes).await {
                    Ok(cleaned) if !cleaned.images.is_empty() || cleaned.cache_bytes > 0 => {
                        tracing::info!(app, host = link.name, removed = ?cleaned.images, cache = cleaned.cache_bytes, "cleaned built images");
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(app, host = link.name, error = format!("{error:#}"), "cleaning built images")
                    }
                }
            }
            None => {
                let keep = keep.iter().cloned().collect();
                link.send_command(ControlMessage::CleanImages { app: app.to_string(), keep, cache_max_bytes });
            }
        }
    }
}
