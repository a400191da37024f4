//! Images that exist on one host only (built or loaded there, no registry): when an agent cannot
//! pull an image, the control plane asks the other hosts' agents for it and relays the archive of
//! the first one that has it to the agent that needs it, which loads it. Only an image the
//! requesting host has a desired container for is shipped to it, and the agent loads nothing but
//! that image from the archive.

use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_agent::ByteStream;
use berth_agent::images::ImageSource;
use berth_wire::agent::ControlMessage;
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::links::HostLinks;

/// How long hosts get to say whether they have an image.
const ASK_TIMEOUT: Duration = Duration::from_secs(20);

/// Finds `image` on a host other than `requester` and returns its archive.
pub async fn fetch(links: &HostLinks, requester: &str, image: &str) -> anyhow::Result<ByteStream> {
    let requesting = links.get(requester).context("the requesting host is not registered")?;
    if !requesting.desires_image(image) {
        bail!("host {requester} runs no container of image {image}");
    }
    let mut transfer = links.relay().open();
    let mut asked = 0;
    for link in links.all().into_iter().filter(|l| l.name != requester && links.may_supply(l, image)) {
        if let Some(agent) = link.local_agent() {
            if agent.has_image(image).await {
                tracing::info!(image, from = link.name, to = requester, "shipping an image");
                return Ok(agent.export_image(image));
            }
        } else {
            let command = ControlMessage::ExportImage { transfer: transfer.id.clone(), image: image.into() };
            if transfer.ask(&link.name, || link.send_command(command)) {
                asked += 1;
            }
        }
    }
    match transfer.first_upload(ASK_TIMEOUT).await {
        Some(stream) => {
            tracing::info!(image, to = requester, "shipping an image from a remote host");
            Ok(stream)
        }
        None => bail!("no other host has image {image} ({asked} connected host(s) asked)"),
    }
}

/// The in-process agent's source: the other hosts, reached through the registry directly.
pub struct LocalImageSource {
    pub host: String,
    pub links: HostLinks,
}

impl ImageSource for LocalImageSource {
    fn fetch(&self, image: &str) -> BoxFuture<'static, anyhow::Result<ByteStream>> {
        let (links, host, image) = (self.links.clone(), self.host.clone(), image.to_string());
        async move { fetch(&links, &host, &image).await }.boxed()
    }
}
