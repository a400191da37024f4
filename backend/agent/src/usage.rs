//! CPU and memory of the agent's running containers, sampled periodically.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_wire::agent::{ContainerPhase, ContainerUsage, ObservedContainer};
use std::collections::BTreeMap;
use tokio::sync::watch;

use crate::runtime::ContainerRuntime;

/// Samples the running containers in `observed` every `every` and reports their usage, by
/// container id, until `report` returns false. CPU is the growth of the container's CPU time over
/// the wall time between two samples; memory leaves out reclaimable page cache.
pub(crate) async fn sample(
    runtime: Arc<dyn ContainerRuntime>,
    observed: watch::Receiver<BTreeMap<String, ObservedContainer>>,
    every: Duration,
    report: impl Fn(HashMap<String, ContainerUsage>) -> bool,
) {
    let mut previous: HashMap<String, (Instant, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let running: Vec<String> = observed
            .borrow()
            .values()
            .filter(|o| matches!(o.phase, ContainerPhase::Running | ContainerPhase::Ready))
            .filter_map(|o| o.container_id.clone())
            .collect();
        let samples = futures::future::join_all(running.into_iter().map(|id| {
            let runtime = runtime.clone();
            async move {
                let sample = runtime.usage(&id).await?;
                Some((id, Instant::now(), sample))
            }
        }))
        .await;
        let mut usage = HashMap::new();
        let mut current = HashMap::new();
        for (id, at, sample) in samples.into_iter().flatten() {
            if let Some((before, before_ns)) = previous.get(&id) {
                let wall = at.duration_since(*before).as_nanos().max(1) as u64;
                let cpu_millis = sample.cpu_ns.saturating_sub(*before_ns).saturating_mul(1000) / wall;
                usage.insert(id.clone(), ContainerUsage { cpu_millis, memory_bytes: sample.memory_bytes });
            }
            current.insert(id, (at, sample.cpu_ns));
        }
        previous = current;
        if !report(usage) {
            return;
        }
    }
}
