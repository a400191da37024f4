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

/// Finds `image` on a host other than `requester` and returns its archive. The hosts that run
/// the image or built it are asked first; an image Berth built (`berth/<team>/...`) is asked
/// of them alone, for no other host has a reason to hold it. Any other image (loaded by hand
/// onto one host) may come from any host, but only when none of those has it.
pub async fn fetch(links: &HostLinks, requester: &str, image: &str) -> anyhow::Result<ByteStream> {
    let requesting = links.get(requester).context("the requesting host is not registered")?;
    if !requesting.desires_image(image) {
        bail!("host {requester} runs no container of image {image}");
    }
    let (trusted, others): (Vec<_>, Vec<_>) =
        links.all().into_iter().filter(|l| l.name != requester).partition(|l| links.may_supply(l, image));
    let (stream, mut asked) = ask(links, &trusted, requester, image).await;
    if let Some(stream) = stream {
        return Ok(stream);
    }
    if !image.starts_with("berth/") {
        let (stream, more) = ask(links, &others, requester, image).await;
        if let Some(stream) = stream {
            return Ok(stream);
        }
        asked += more;
    }
    bail!("no other host has image {image} ({asked} connected host(s) asked)")
}

/// Asks `hosts` for `image`; the first archive offered, and how many remote hosts were asked.
async fn ask(
    links: &HostLinks,
    hosts: &[std::sync::Arc<crate::links::HostLink>],
    requester: &str,
    image: &str,
) -> (Option<ByteStream>, usize) {
    let mut transfer = links.relay().open();
    let mut asked = 0;
    for link in hosts {
        if let Some(agent) = link.local_agent() {
            if agent.has_image(image).await {
                tracing::info!(image, from = link.name, to = requester, "shipping an image");
                return (Some(agent.export_image(image)), asked);
            }
        } else {
            let command = ControlMessage::ExportImage { transfer: transfer.id.clone(), image: image.into() };
            if transfer.ask(&link.name, || link.send_command(command)) {
                asked += 1;
            }
        }
    }
    if asked == 0 {
        return (None, 0);
    }
    let stream = transfer.first_upload(ASK_TIMEOUT).await;
    if stream.is_some() {
        tracing::info!(image, to = requester, "shipping an image from a remote host");
    }
    (stream, asked)
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
