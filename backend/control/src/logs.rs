//! Logs of replicas on remote hosts: asked of their agent over its connection, uploaded through
//! the relay as lines of `LogChunk` JSON.

use std::time::Duration;

use berth_wire::agent::{ControlMessage, LogChunk};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;

use crate::links::{HostLink, HostLinks};

/// Longest log line relayed; longer ones end the stream rather than grow a buffer without bound.
const MAX_LINE: usize = 1 << 20;

/// Log lines `(stream, line)` of a container on `host`: read from the in-process agent, or
/// relayed from a remote one; `None` when the remote agent is not connected or does not answer.
pub async fn of_container(
    links: &HostLinks,
    host: &str,
    container_id: &str,
    tail: u32,
    follow: bool,
) -> Option<BoxStream<'static, (String, String)>> {
    let link = links.get(host)?;
    match link.local_agent() {
        Some(agent) => Some(agent.logs(container_id, tail, follow)),
        None => remote(links, &link, container_id, tail, follow).await,
    }
}

async fn remote(
    links: &HostLinks,
    link: &HostLink,
    container_id: &str,
    tail: u32,
    follow: bool,
) -> Option<BoxStream<'static, (String, String)>> {
    let mut transfer = links.relay().open();
    let command =
        ControlMessage::Logs { transfer: transfer.id.clone(), container_id: container_id.into(), tail, follow };
    if !transfer.ask(&link.name, || link.send_command(command)) {
        return None;
    }
    let bytes = transfer.first_upload(Duration::from_secs(10)).await?;
    // Chunks do not respect line boundaries: re-split them (a last line without its newline
    // still counts).
    let lines = FramedRead::new(StreamReader::new(bytes), LinesCodec::new_with_max_length(MAX_LINE));
    Some(
        lines
            .take_while(|line| std::future::ready(line.is_ok()))
            .filter_map(|line| async move {
                let chunk = serde_json::from_str::<LogChunk>(&line.ok()?).ok()?;
                Some((chunk.stream, chunk.line))
            })
            .boxed(),
    )
}
