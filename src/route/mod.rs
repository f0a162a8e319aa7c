//! Which upstream serves a model: the ones whose `models` match (exact or `"*"`), whose
//! circuit for that model admits traffic and who have room under their concurrency cap, picked
//! at random in proportion to their weights. A retry prefers an upstream not yet tried
//! (failover). When every candidate's circuit is open, the one that failed longest ago is
//! tried anyway ("panic mode"): a breaker shifts traffic, it never makes an outage by itself.

mod circuit;
pub mod retry;

pub use circuit::{Circuit, CircuitState, Circuits};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::CircuitConfig;
use crate::error::GatewayError;
use crate::provider::Upstream;
use crate::provider::sse::Held;

/// An upstream's reply read under a [`Lease`].
pub type Upstreamed = crate::provider::sse::Upstreamed<Lease>;
/// An upstream's SSE reply, event by event, under a [`Lease`].
pub type SseEvents = crate::provider::sse::SseEvents<Lease>;

/// An upstream taken for one request: holds its concurrency slot until dropped.
pub struct Lease {
    pub index: usize,
    pub upstream: Arc<Upstream>,
    /// The circuit of (upstream, model) that this request's health reports go to.
    pub circuit: Arc<Circuit>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Lease {
    /// The one place a try's outcome reaches its circuit: the response head came (`Ok`), or
    /// the try or its body failed; only failures that are word on the upstream's health count.
    pub fn report(&self, outcome: Result<(), &GatewayError>) {
        match outcome {
            Ok(()) => self.circuit.record_success(),
            Err(error) if counts_against(error) => self.circuit.record_failure(),
            Err(_) => {}
        }
    }
}

impl Held for Lease {
    fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    fn report(&self, outcome: Result<(), &GatewayError>) {
        Lease::report(self, outcome);
    }
}

/// Failures that say the upstream is unhealthy for this model, and so count against its
/// circuit: unreachable, slow, 502/503/504, a broken reply. A 429 is a busy upstream, and a
/// 500 is DashScope's answer to one request (`InternalError.Algo`), not word on its health:
/// neither counts (a 500 is still retried).
fn counts_against(error: &GatewayError) -> bool {
    match error {
        GatewayError::UpstreamUnreachable { .. }
        | GatewayError::UpstreamTimeout { .. }
        | GatewayError::UpstreamProtocol { .. } => true,
        GatewayError::UpstreamStatus { status, .. } => matches!(status, 502..=504),
        _ => false,
    }
}

/// Per-upstream admission state.
pub struct Slot {
    pub circuit: Circuits,
    permits: Option<Arc<Semaphore>>,
}

impl Slot {
    pub fn new(max_concurrency: u32, circuit: &CircuitConfig) -> Self {
        Self {
            circuit: Circuits::new(circuit),
            permits: (max_concurrency > 0)
                .then(|| Arc::new(Semaphore::new(max_concurrency as usize))),
        }
    }

    /// A concurrency slot: `Some(None)` when uncapped, `None` when full.
    fn permit(&self) -> Option<Option<OwnedSemaphorePermit>> {
        match &self.permits {
            None => Some(None),
            Some(permits) => permits.clone().try_acquire_owned().ok().map(Some),
        }
    }

    fn has_room(&self) -> bool {
        self.permits
            .as_ref()
            .is_none_or(|p| p.available_permits() > 0)
    }

    pub fn in_flight(&self, cap: u32) -> u32 {
        self.permits
            .as_ref()
            .map_or(0, |p| cap.saturating_sub(p.available_permits() as u32))
    }
}

/// The upstreams and, beside each, its admission state: the router owns the circuits, the
/// provider only talks to its upstream.
pub struct Router {
    upstreams: Vec<Arc<Upstream>>,
    slots: Vec<Slot>,
}

impl Router {
    pub fn new(upstreams: Vec<Arc<Upstream>>, circuit: &CircuitConfig) -> Self {
        let slots = upstreams
            .iter()
            .map(|u| Slot::new(u.config.max_concurrency, circuit))
            .collect();
        Self { upstreams, slots }
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Each upstream with its admission state, in configured order.
    pub fn with_slots(&self) -> impl Iterator<Item = (&Arc<Upstream>, &Slot)> {
        self.upstreams.iter().zip(&self.slots)
    }

    /// The admission state of the upstream at `index` (a `Lease::index`).
    pub fn slot(&self, index: usize) -> Option<&Slot> {
        self.slots.get(index)
    }

    /// Whether some upstream's circuit is not open (`/readyz`).
    pub fn any_admitting(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.circuit.state() != CircuitState::Open)
    }

    /// Each upstream's circuit and in-flight gauges, for `/metrics`.
    pub fn gauges(&self) -> Vec<crate::telemetry::UpstreamGauges<'_>> {
        self.with_slots()
            .map(|(upstream, slot)| crate::telemetry::UpstreamGauges {
                upstream: &upstream.config.name,
                circuit: match slot.circuit.state() {
                    CircuitState::Closed => 0,
                    CircuitState::HalfOpen => 1,
                    CircuitState::Open => 2,
                },
                in_flight: i64::from(slot.in_flight(upstream.config.max_concurrency)),
            })
            .collect()
    }

    /// Takes an upstream for `model`, preferring those not in `tried`. None serving it is 404
    /// `model_not_found`; all of them failing or full is 503.
    pub fn take(&self, model: &str, tried: &[usize]) -> Result<Lease, GatewayError> {
        self.take_with(model, tried, |total| fastrand::u64(0..total))
    }

    /// `draw(total)` returns a number in `0..total`; tests pass a fixed one.
    pub fn take_with(
        &self,
        model: &str,
        tried: &[usize],
        mut draw: impl FnMut(u64) -> u64,
    ) -> Result<Lease, GatewayError> {
        let serving: Vec<(usize, Arc<Circuit>)> = (0..self.upstreams.len())
            .filter(|&i| self.upstreams[i].serves(model))
            .map(|i| (i, self.slots[i].circuit.for_model(model)))
            .collect();
        if serving.is_empty() {
            return Err(GatewayError::ModelNotFound(model.to_string()));
        }
        let usable = |k: &usize| {
            let (i, circuit) = &serving[*k];
            circuit.may_admit() && self.slots[*i].has_room()
        };
        let mut pool: Vec<usize> = (0..serving.len())
            .filter(|&k| !tried.contains(&serving[k].0))
            .filter(usable)
            .collect();
        if pool.is_empty() {
            // Nothing new to fail over to: the ones already tried may go again.
            pool = (0..serving.len()).filter(usable).collect();
        }
        while !pool.is_empty() {
            let total: u64 = pool
                .iter()
                .map(|&k| u64::from(self.upstreams[serving[k].0].config.weight))
                .sum();
            let mut ticket = draw(total);
            let mut at = pool.len() - 1;
            for (n, &k) in pool.iter().enumerate() {
                let weight = u64::from(self.upstreams[serving[k].0].config.weight);
                if ticket < weight {
                    at = n;
                    break;
                }
                ticket -= weight;
            }
            let (index, circuit) = &serving[pool[at]];
            let upstream = &self.upstreams[*index];
            match self.slots[*index].permit() {
                Some(permit) if circuit.admit() => {
                    return Ok(Lease {
                        index: *index,
                        upstream: upstream.clone(),
                        circuit: circuit.clone(),
                        _permit: permit,
                    });
                }
                _ => {
                    pool.remove(at);
                }
            }
        }
        let all_open = serving.iter().all(|(_, c)| !c.may_admit());
        if all_open {
            // Panic mode: every candidate's circuit is open, so refusing would be an outage the
            // breaker made. The one that failed longest ago (with room) goes.
            let mut by_age: Vec<&(usize, Arc<Circuit>)> = serving.iter().collect();
            by_age.sort_by_key(|(_, c)| c.last_failure.load(Ordering::Acquire));
            for (index, circuit) in by_age {
                let upstream = &self.upstreams[*index];
                if let Some(permit) = self.slots[*index].permit() {
                    return Ok(Lease {
                        index: *index,
                        upstream: upstream.clone(),
                        circuit: circuit.clone(),
                        _permit: permit,
                    });
                }
            }
        }
        Err(GatewayError::UpstreamBusy(model.to_string()))
    }

    /// Whether an upstream not in `tried` could take `model` now (so a retry can fail over
    /// without waiting).
    pub fn has_fresh(&self, model: &str, tried: &[usize]) -> bool {
        self.with_slots().enumerate().any(|(i, (u, slot))| {
            !tried.contains(&i)
                && u.serves(model)
                && slot.has_room()
                && slot.circuit.for_model(model).may_admit()
        })
    }

    /// The upstreams serving `model`.
    pub fn serving<'a>(&'a self, model: &'a str) -> impl Iterator<Item = &'a Arc<Upstream>> + 'a {
        self.upstreams.iter().filter(move |u| u.serves(model))
    }

    /// Model names configured by name (a `"*"` upstream serves anything, but names nothing).
    pub fn named_models(&self) -> BTreeSet<&str> {
        self.upstreams
            .iter()
            .flat_map(|u| u.config.models.iter())
            .map(String::as_str)
            .filter(|m| *m != "*")
            .collect()
    }

    pub fn serves(&self, model: &str) -> bool {
        self.serving(model).next().is_some()
    }
}

/// An upstream's health as `/readyz` and the admin API show it.
pub fn upstream_health(u: &Upstream, slot: &Slot) -> serde_json::Value {
    serde_json::json!({
        "name": u.config.name,
        "models": u.config.models,
        "circuit": slot.circuit.state().as_str(),
        "in_flight": slot.in_flight(u.config.max_concurrency),
        "max_concurrency": u.config.max_concurrency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CircuitConfig, ProviderKind, UpstreamConfig};

    fn upstream(name: &str, models: &[&str], weight: u32) -> Arc<Upstream> {
        let mut config = UpstreamConfig::new(name, ProviderKind::Openai, "http://127.0.0.1:1/v1");
        config.models = models.iter().map(|m| m.to_string()).collect();
        config.weight = weight;
        Arc::new(Upstream::new(config, &Default::default()).unwrap_or_else(|e| panic!("{e}")))
    }

    fn router_of(upstreams: Vec<Arc<Upstream>>) -> Router {
        Router::new(upstreams, &CircuitConfig::default())
    }

    #[test]
    fn weights_split_the_tickets() {
        let router = router_of(vec![
            upstream("a", &["qwen-plus"], 3),
            upstream("b", &["*"], 1),
        ]);
        let name = |draw: u64| {
            router
                .take_with("qwen-plus", &[], |_| draw)
                .map(|l| l.upstream.config.name.clone())
                .ok()
        };
        assert_eq!(name(0).as_deref(), Some("a"));
        assert_eq!(name(2).as_deref(), Some("a"));
        assert_eq!(name(3).as_deref(), Some("b"));
        let other = router.take_with("qwen-max", &[], |total| {
            assert_eq!(total, 1);
            0
        });
        assert_eq!(
            other
                .map(|l| l.upstream.config.name.clone())
                .ok()
                .as_deref(),
            Some("b")
        );
    }

    #[test]
    fn a_retry_fails_over_to_an_upstream_not_yet_tried() {
        let router = router_of(vec![upstream("a", &["*"], 1), upstream("b", &["*"], 1)]);
        let first = router.take_with("m", &[0], |_| 0).map(|l| l.index).ok();
        assert_eq!(first, Some(1));
        let again = router.take_with("m", &[0, 1], |_| 0).map(|l| l.index).ok();
        assert_eq!(
            again,
            Some(0),
            "with every upstream tried, a tried one goes again"
        );
    }

    #[test]
    fn no_match_is_model_not_found() {
        let router = router_of(vec![upstream("a", &["qwen-plus"], 1)]);
        assert!(
            matches!(router.take("qwen-max", &[]), Err(GatewayError::ModelNotFound(m)) if m == "qwen-max")
        );
        assert_eq!(
            router.named_models().into_iter().collect::<Vec<_>>(),
            vec!["qwen-plus"]
        );
    }

    #[test]
    fn open_circuits_and_full_caps_give_503s() {
        let mut config = UpstreamConfig::new("a", ProviderKind::Openai, "http://127.0.0.1:1/v1");
        config.max_concurrency = 1;
        let capped =
            Arc::new(Upstream::new(config, &Default::default()).unwrap_or_else(|e| panic!("{e}")));
        let router = router_of(vec![capped]);
        let held = router.take("m", &[]);
        assert!(held.is_ok());
        assert!(matches!(
            router.take("m", &[]),
            Err(GatewayError::UpstreamBusy(_))
        ));
        drop(held);
        assert!(router.take("m", &[]).is_ok());
    }

    fn open(router: &Router, index: usize, model: &str) {
        for _ in 0..CircuitConfig::default().failure_threshold {
            router.slots[index]
                .circuit
                .for_model(model)
                .record_failure();
        }
    }

    #[test]
    fn a_failing_model_opens_only_its_own_circuit() {
        let router = router_of(vec![upstream("a", &["*"], 1)]);
        open(&router, 0, "broken");
        let slot = &router.slots[0];
        assert_eq!(slot.circuit.for_model("broken").state(), CircuitState::Open);
        assert_eq!(
            slot.circuit.for_model("healthy").state(),
            CircuitState::Closed
        );
        assert_eq!(slot.circuit.state(), CircuitState::Closed);
        let lease = router.take("healthy", &[]).map(|l| l.circuit.state()).ok();
        assert_eq!(lease, Some(CircuitState::Closed));
    }

    #[test]
    fn open_circuits_shift_traffic_and_panic_mode_tries_the_oldest_failure() {
        let (a, b) = (upstream("a", &["*"], 1), upstream("b", &["*"], 1));
        let router = router_of(vec![a, b.clone()]);
        open(&router, 1, "m");
        for draw in [0, 1] {
            let name = router
                .take_with("m", &[], |_| draw)
                .map(|l| l.upstream.config.name.clone());
            assert_eq!(name.ok().as_deref(), Some("a"), "traffic shifts to a");
        }
        open(&router, 0, "m");
        // Both open: b failed longest ago, so b goes (not a 503).
        let name = router
            .take("m", &[])
            .map(|l| l.upstream.config.name.clone());
        assert_eq!(name.ok().as_deref(), Some("b"));
        // A single upstream with its circuit open still takes the model.
        let alone = router_of(vec![b]);
        open(&alone, 0, "m");
        assert!(alone.take("m", &[]).is_ok());
    }
}
