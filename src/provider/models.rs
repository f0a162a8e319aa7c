//! What an upstream serves, asked of it: `GET {base}/compatible-mode/v1/models` (DashScope)
//! or `GET {base_url}/models` (OpenAI-compatible servers), for the `"*"` upstreams of
//! `GET /v1/models`. Lists are cached per upstream for a while: apps ask on every start.

use std::sync::Arc;
use std::time::Duration;

use axum::http;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Upstream;
use crate::config::{AuthMode, ProviderKind};
use crate::error::GatewayError;

/// How long an upstream's model list is kept before it is asked again.
pub const MODELS_TTL: Duration = Duration::from_secs(300);

/// One model as the upstream described it (`id`, `created`, `owned_by`, ...).
pub type ModelEntry = Map<String, Value>;

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

/// Model lists by upstream name, each kept for `MODELS_TTL`.
pub struct ModelLists {
    cache: moka::sync::Cache<String, Arc<Vec<ModelEntry>>>,
}

impl Default for ModelLists {
    fn default() -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(256)
                .time_to_live(MODELS_TTL)
                .build(),
        }
    }
}

impl ModelLists {
    /// The upstream's list, from the cache or asked now; a failure is not cached.
    /// `token` is the caller's own in passthrough mode (the upstream's key is then not sent).
    pub async fn of(
        &self,
        upstream: &Upstream,
        token: Option<&str>,
    ) -> Result<Arc<Vec<ModelEntry>>, GatewayError> {
        if let Some(list) = self.cache.get(&upstream.config.name) {
            return Ok(list);
        }
        let list = Arc::new(upstream.list_models(token).await?);
        self.cache
            .insert(upstream.config.name.clone(), list.clone());
        Ok(list)
    }
}

impl Upstream {
    fn models_url(&self) -> String {
        let base = self.config.base_url.trim_end_matches('/');
        match self.config.provider {
            ProviderKind::Dashscope => format!("{base}/compatible-mode/v1/models"),
            ProviderKind::Openai => format!("{base}/models"),
        }
    }

    /// Asks the upstream which models it serves (entries without a string `id` are dropped).
    pub async fn list_models(&self, token: Option<&str>) -> Result<Vec<ModelEntry>, GatewayError> {
        let mut request = self.files_client.get(self.models_url());
        let key = self.config.api_key.as_ref().map(|k| k.expose());
        if let Some(token) = token.or(key) {
            request = request.bearer_auth(token);
        }
        let sent = tokio::time::timeout(self.config.request_timeout(), request.send()).await;
        let response = match sent {
            Err(_) => return Err(self.timeout()),
            Ok(Err(_)) => {
                return Err(GatewayError::UpstreamUnreachable {
                    upstream: self.config.name.clone(),
                });
            }
            Ok(Ok(response)) => response,
        };
        if !response.status().is_success() {
            return Err(self
                .failure(http::Response::from(response), AuthMode::Keys)
                .await);
        }
        let body = super::read_limited(
            http::Response::from(response),
            4 * 1024 * 1024,
            self.config.idle_timeout(),
        )
        .await
        .map_err(|_| self.protocol("the model list could not be read"))?;
        let list: ModelList = serde_json::from_slice(&body)
            .map_err(|e| self.protocol(&format!("unreadable model list: {e}")))?;
        Ok(list
            .data
            .into_iter()
            .filter(|m| m.get("id").is_some_and(Value::is_string))
            .collect())
    }
}
