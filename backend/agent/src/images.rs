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
    pub base: String,
    pub credential: String,
}

impl ImageSource for HttpImageSource {
    fn fetch(&self, image: &str) -> BoxFuture<'static, anyhow::Result<ByteStream>> {
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
