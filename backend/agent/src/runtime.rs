//! The seam between the agent and a container engine: `ContainerRuntime` names every operation
//! the agent needs, in the agent's own terms. `docker::DockerRuntime` is the real one (bollard);
//! `memory::MemoryRuntime` runs containers as in-process HTTP listeners, for tests.

use std::collections::HashMap;
use std::net::IpAddr;

use berth_wire::agent::{DesiredContainer, HostCapacity};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// A byte stream: an image archive, an upload.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Log lines `(stream, line)` of one container.
pub type LogStream = BoxStream<'static, (String, String)>;

/// A bounded channel's receiving end as a stream (runtimes run builds in a task of their own and
/// hand out its events this way; dropping the stream tells the task to stop).
pub(crate) fn receiver_stream<T: Send + 'static>(
    mut received: tokio::sync::mpsc::Receiver<T>,
) -> BoxStream<'static, T> {
    use futures::StreamExt as _;
    futures::stream::poll_fn(move |cx| received.poll_recv(cx)).boxed()
}

/// A failed runtime call. The agent branches on the kind: a missing container or image is
/// expected (created anew, pulled), a conflict may be its own container.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Other(String),
}

impl RuntimeError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound(_))
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, RuntimeError::Conflict(_))
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// One container as a listing shows it.
#[derive(Debug, Clone)]
pub struct ContainerSummary {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
}

/// One container as an inspection shows it.
#[derive(Debug, Clone, Default)]
pub struct ContainerDetails {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
    pub exit_code: Option<i64>,
    /// The container's own addresses (on the engine's bridge networks).
    pub addresses: Vec<String>,
    /// Container port → host port, for ports published on the host.
    pub published: HashMap<u16, u16>,
}

/// What the agent asks the runtime to create.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Unique per replica and release, so a second create of the same replica conflicts.
    pub name: String,
    pub labels: HashMap<String, String>,
    pub desired: DesiredContainer,
    /// Publish the container's port on this address (on an engine-chosen port); `None` keeps it
    /// on the bridge network only.
    pub publish_on: Option<IpAddr>,
}

/// A container event the agent reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEvent {
    Died { container_id: String, exit_code: Option<String> },
    Destroyed { container_id: String },
}

/// CPU time consumed so far and memory in use now, of one running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageSample {
    pub cpu_ns: u64,
    pub memory_bytes: u64,
}

/// An image build: its context arrives as a tar stream.
#[derive(Debug, Clone, Default)]
pub struct BuildSpec {
    /// The tag the built image gets (never moved afterwards).
    pub tag: String,
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    pub build_args: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    pub no_cache: bool,
}

/// What a build reports as it goes. The stream ends after `Built` or `Failed`; dropping it
/// cancels the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// One line of the builder's output.
    Line(String),
    /// The image exists under the spec's tag.
    Built,
    Failed(String),
}

/// An image Berth built, as a listing shows it.
#[derive(Debug, Clone)]
pub struct ImageSummary {
    pub id: String,
    pub tags: Vec<String>,
    pub labels: HashMap<String, String>,
}

/// Free and total bytes of the file system the engine keeps its images on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    pub free: u64,
    pub total: u64,
}

/// Every operation the agent performs on its host's container engine. Object-safe (futures are
/// boxed) so the agent holds an `Arc<dyn ContainerRuntime>` and its handle can be shared.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Containers carrying `berth.host=<host>`, running or not.
    fn list<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<ContainerSummary>>>;
    /// One container by id or name.
    fn inspect<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<ContainerDetails>>;
    /// Creates (does not start) a container; `Conflict` when its name is taken.
    fn create<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, Result<String>>;
    fn start<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<()>>;
    /// SIGTERM, then SIGKILL after `grace_secs`.
    fn stop<'a>(&'a self, container: &'a str, grace_secs: u32) -> BoxFuture<'a, Result<()>>;
    /// Removes a container (and its anonymous volumes), stopped or not.
    fn remove<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Deaths and removals of containers carrying `berth.host=<host>`; ends when the engine's
    /// stream breaks (the caller reconnects).
    fn events(&self, host: &str) -> BoxStream<'static, Result<ContainerEvent>>;
    fn has_image<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Pulls `image` from its registry.
    fn pull<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Loads the archive of `image` (as `export` produces), refusing an archive that would tag
    /// any other image.
    fn load<'a>(&'a self, archive: ByteStream, image: &'a str) -> BoxFuture<'a, Result<()>>;
    /// The image as an archive another engine can load.
    fn export(&self, image: &str) -> ByteStream;
    /// `None` when the container is not running or the engine has no figures.
    fn usage<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Option<UsageSample>>;
    /// The last `tail` lines, then new ones while `follow`.
    fn logs(&self, container: &str, tail: u32, follow: bool) -> LogStream;
    /// The host's CPU and memory.
    fn capacity(&self) -> BoxFuture<'_, HostCapacity>;
    /// Builds an image from a tar context; see [`BuildEvent`].
    fn build(&self, spec: BuildSpec, context: ByteStream) -> BoxStream<'static, BuildEvent>;
    /// Images carrying the label `key=value`.
    fn images<'a>(&'a self, key: &'a str, value: &'a str) -> BoxFuture<'a, Result<Vec<ImageSummary>>>;
    /// Removes an image by tag or id (not forced: an image a container uses stays).
    fn remove_image<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Bytes the engine's build cache holds.
    fn build_cache_bytes(&self) -> BoxFuture<'_, Result<u64>>;
    /// Prunes the build cache down to `keep_bytes`; returns the bytes freed.
    fn prune_build_cache(&self, keep_bytes: u64) -> BoxFuture<'_, Result<u64>>;
    /// Space on the engine's image storage; `None` when it cannot be told.
    fn disk(&self) -> BoxFuture<'_, Option<DiskSpace>>;
}
