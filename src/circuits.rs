//! One upstream's circuit breakers, one per model it serves: a model the upstream keeps
//! failing opens only its own circuit, never the upstream's other models.

use std::sync::Arc;
use std::time::Duration;

use crate::config::CircuitConfig;
use crate::route::{Circuit, CircuitState};

/// Models are client-named (a `"*"` upstream serves any name): the map is bounded, and a
/// model not asked for in an hour is forgotten (its circuit starts closed again).
const MAX_MODELS: u64 = 10_000;

pub struct Circuits {
    config: CircuitConfig,
    by_model: moka::sync::Cache<String, Arc<Circuit>>,
}

impl Circuits {
    pub fn new(config: &CircuitConfig) -> Self {
        Self {
            config: config.clone(),
            by_model: moka::sync::Cache::builder()
                .max_capacity(MAX_MODELS)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }

    /// The circuit for `model`, made closed on first use.
    pub fn for_model(&self, model: &str) -> Arc<Circuit> {
        self.by_model
            .get_with_by_ref(model, || Arc::new(Circuit::new(&self.config)))
    }

    /// The upstream as a whole: closed while some model's circuit is (or none was ever
    /// opened), open only when every model seen is open.
    pub fn state(&self) -> CircuitState {
        let mut seen_half_open = false;
        let mut seen_any = false;
        for (_, circuit) in self.by_model.iter() {
            seen_any = true;
            match circuit.state() {
                CircuitState::Closed => return CircuitState::Closed,
                CircuitState::HalfOpen => seen_half_open = true,
                CircuitState::Open => {}
            }
        }
        match (seen_any, seen_half_open) {
            (false, _) => CircuitState::Closed,
            (true, true) => CircuitState::HalfOpen,
            (true, false) => CircuitState::Open,
        }
    }

    /// Models whose circuit is not closed, with its state, for the health views.
    pub fn not_closed(&self) -> Vec<(String, CircuitState)> {
        let mut out: Vec<_> = self
            .by_model
            .iter()
            .map(|(model, c)| (model.as_ref().clone(), c.state()))
            .filter(|(_, s)| *s != CircuitState::Closed)
            .collect();
        out.sort();
        out
    }
}
