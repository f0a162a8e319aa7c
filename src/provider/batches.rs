//! DashScope's batch API (compatible mode, OpenAI's shape), as the gateway forwards batches to
//! a `dashscope` upstream: create, get, cancel, and reading a result file's content. Always
//! with the upstream's own key: the gateway polls on its own, long after the client's request.

use axum::http;
use bytes::Bytes;
use serde_json::Value;

use super::Upstream;
use crate::config::AuthMode;
use crate::error::GatewayError;

/// A batch object is small; bigger is not a batch object.
const MAX_OBJECT_BYTES: usize = 1024 * 1024;

impl Upstream {
    fn batches_url(&self, suffix: &str) -> String {
        let base = self.config.base_url.trim_end_matches('/');
        format!("{base}/compatible-mode/v1/batches{suffix}")
    }

    /// `POST /compatible-mode/v1/batches`: the upstream's batch object.
    pub async fn create_batch(&self, body: &Value) -> Result<Value, GatewayError> {
        let request = (self.files_client.post(self.batches_url("")))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).unwrap_or_default());
        self.batch_object(request).await
    }

    /// `GET /compatible-mode/v1/batches/{id}`.
    pub async fn get_batch(&self, id: &str) -> Result<Value, GatewayError> {
        let request = self.files_client.get(self.batches_url(&format!("/{id}")));
        self.batch_object(request).await
    }

    /// `POST /compatible-mode/v1/batches/{id}/cancel`.
    pub async fn cancel_batch(&self, id: &str) -> Result<Value, GatewayError> {
        let request = (self.files_client).post(self.batches_url(&format!("/{id}/cancel")));
        self.batch_object(request).await
    }

    /// A result file's bytes, at most `limit` of them.
    pub async fn file_content(&self, id: &str, limit: usize) -> Result<Bytes, GatewayError> {
        let request = self
            .files_client
            .get(self.files_url(&format!("/{id}/content")));
        self.batch_call(request, limit).await
    }

    async fn batch_object(&self, request: reqwest::RequestBuilder) -> Result<Value, GatewayError> {
        let body = self.batch_call(request, MAX_OBJECT_BYTES).await?;
        serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| self.protocol("the batch answer is not a JSON object"))
    }

    async fn batch_call(
        &self,
        request: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<Bytes, GatewayError> {
        let request = match self.token(AuthMode::Keys, None) {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let sent = tokio::time::timeout(self.config.request_timeout(), request.send()).await;
        let response = match sent {
            Err(_) => return Err(self.timeout()),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.config.name, error = %e, "batch call failed");
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
        super::read_limited(
            http::Response::from(response),
            limit,
            self.config.idle_timeout(),
        )
        .await
        .map_err(|_| self.protocol("the batch answer could not be read (or is too large)"))
    }
}
