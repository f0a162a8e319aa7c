//! Which upstream serves a model: the ones whose `models` match (exact or `"*"`), picked at
//! random in proportion to their weights.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::GatewayError;
use crate::provider::Upstream;

pub struct Router {
    upstreams: Vec<Arc<Upstream>>,
}

impl Router {
    pub fn new(upstreams: Vec<Arc<Upstream>>) -> Self {
        Self { upstreams }
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Picks an upstream for `model`; none serving it is 404 `model_not_found`.
    pub fn pick<'a>(&'a self, model: &'a str) -> Result<&'a Arc<Upstream>, GatewayError> {
        self.pick_with(model, |total| fastrand::u64(0..total))
    }

    /// `draw(total)` returns a number in `0..total`; tests pass a fixed one.
    pub fn pick_with<'a>(
        &'a self,
        model: &'a str,
        draw: impl FnOnce(u64) -> u64,
    ) -> Result<&'a Arc<Upstream>, GatewayError> {
        let total: u64 = self
            .candidates(model)
            .map(|u| u64::from(u.config.weight))
            .sum();
        if total == 0 {
            return Err(GatewayError::ModelNotFound(model.to_string()));
        }
        let mut ticket = draw(total);
        for upstream in self.candidates(model) {
            let weight = u64::from(upstream.config.weight);
            if ticket < weight {
                return Ok(upstream);
            }
            ticket -= weight;
        }
        Err(GatewayError::ModelNotFound(model.to_string()))
    }

    fn candidates<'a>(&'a self, model: &'a str) -> impl Iterator<Item = &'a Arc<Upstream>> + 'a {
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
        self.candidates(model).next().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProviderKind, UpstreamConfig};

    fn upstream(name: &str, models: &[&str], weight: u32) -> Arc<Upstream> {
        let mut config = UpstreamConfig::new(name, ProviderKind::Openai, "http://127.0.0.1:1/v1");
        config.models = models.iter().map(|m| m.to_string()).collect();
        config.weight = weight;
        Arc::new(Upstream::new(config).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn weights_split_the_tickets() {
        let router = Router::new(vec![
            upstream("a", &["qwen-plus"], 3),
            upstream("b", &["*"], 1),
        ]);
        let name = |draw: u64| {
            router
                .pick_with("qwen-plus", |_| draw)
                .map(|u| u.config.name.clone())
                .ok()
        };
        assert_eq!(name(0).as_deref(), Some("a"));
        assert_eq!(name(2).as_deref(), Some("a"));
        assert_eq!(name(3).as_deref(), Some("b"));
        let other = router.pick_with("qwen-max", |total| {
            assert_eq!(total, 1);
            0
        });
        assert_eq!(
            other.map(|u| u.config.name.clone()).ok().as_deref(),
            Some("b")
        );
    }

    #[test]
    fn no_match_is_model_not_found() {
        let router = Router::new(vec![upstream("a", &["qwen-plus"], 1)]);
        assert!(
            matches!(router.pick("qwen-max"), Err(GatewayError::ModelNotFound(m)) if m == "qwen-max")
        );
        assert_eq!(
            router.named_models().into_iter().collect::<Vec<_>>(),
            vec!["qwen-plus"]
        );
    }
}
