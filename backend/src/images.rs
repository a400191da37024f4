//! Images that exist on one host only (built or loaded there, no registry): when an agent cannot
//! pull an image, the control plane asks the other hosts' agents for it and relays the
//! `docker save` stream of the first one that has it to the agent that needs it, which loads it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_wire::agent::ControlMessage;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::orchestrator::Orchestrator;

/// A `docker save` tar stream.
pub type ImageStream = crate::relay::ByteStream;

/// Where an agent gets an image its engine lacks and cannot pull.
pub trait ImageSource: Send + Sync {
    fn fetch(&self, image: &str) -> BoxFuture<'static, anyhow::Result<ImageStream>>;
}

/// How long hosts get to say whether they have an image.
const ASK_TIMEOUT: Duration = Duration::from_secs(20);

/// Finds `image` on a host other than `requester` and returns its tar stream.
pub async fn fetch(orchestrator: &Orchestrator, requester: &str, image: &str) -> anyhow::Result<ImageStream> {
    let transfer = orchestrator.relay().open();
    let mut asked = 0;
    for link in orchestrator.links().into_iter().filter(|l| l.name != requester) {
        if let Some(agent) = link.local_agent() {
            if agent.has_image(image).await {
                tracing::info!(image, from = link.name, to = requester, "shipping an image");
                return Ok(agent.export_image(image));
            }
        } else if link.send_command(ControlMessage::ExportImage { transfer: transfer.id.clone(), image: image.into() })
        {
            asked += 1;
        }
    }
    match transfer.first_upload(asked, ASK_TIMEOUT).await {
        Some(stream) => {
            tracing::info!(image, to = requester, "shipping an image from a remote host");
            Ok(stream)
        }
        None => bail!("no other host has image {image} ({asked} connected host(s) asked)"),
    }
}

/// The in-process agent's source: the relay, reached directly.
pub struct LocalImageSource {
    pub host: String,
    pub orchestrator: Arc<OnceLock<Orchestrator>>,
}

impl ImageSource for LocalImageSource {
    fn fetch(&self, image: &str) -> BoxFuture<'static, anyhow::Result<ImageStream>> {
        let orchestrator = self.orchestrator.get().cloned();
        let (host, image) = (self.host.clone(), image.to_string());
        async move {
            let orchestrator = orchestrator.context("the control plane is still starting")?;
            fetch(&orchestrator, &host, &image).await
        }
        .boxed()
    }
}

/// A remote agent's source: `GET /api/v1/agents/images` on the control plane.
pub struct HttpImageSource {
    pub base: String,
    pub credential: String,
}

impl ImageSource for HttpImageSource {
    fn fetch(&self, image: &str) -> BoxFuture<'static, anyhow::Result<ImageStream>> {
        let request = reqwest::Client::new()
            .get(format!("{}/api/v1/agents/images", self.base))
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
