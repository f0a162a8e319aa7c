//! DashScope's files API, as the gateway uses it: a document is uploaded to a `dashscope`
//! upstream once (`POST {base_url}/compatible-mode/v1/files`, purpose `file-extract`), and
//! deleted there with the gateway's copy; a batch's input goes up the same way (purpose `batch`).

use axum::http;
use bytes::Bytes;
use serde::Deserialize;

use super::Upstream;
use crate::config::AuthMode;
use crate::error::GatewayError;

#[derive(Deserialize)]
struct Uploaded {
    id: String,
}

impl Upstream {
    pub(super) fn files_url(&self, suffix: &str) -> String {
        let base = self.config.base_url.trim_end_matches('/');
        format!("{base}/compatible-mode/v1/files{suffix}")
    }

    pub(super) fn token<'a>(
        &'a self,
        mode: AuthMode,
        passthrough: Option<&'a str>,
    ) -> Option<&'a str> {
        match mode {
            AuthMode::Keys => self.config.api_key.as_ref().map(|k| k.expose()),
            AuthMode::Passthrough => passthrough,
        }
    }

    /// Uploads a file (`purpose`: `file-extract` for a document, `batch` for a batch's input)
    /// and returns the id the upstream gave it.
    pub async fn upload_file(
        &self,
        filename: &str,
        bytes: Bytes,
        purpose: &str,
        mode: AuthMode,
        passthrough: Option<&str>,
    ) -> Result<String, GatewayError> {
        let part = reqwest::multipart::Part::stream(bytes).file_name(filename.to_string());
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_string())
            .part("file", part);
        let mut request = self.files_client.post(self.files_url("")).multipart(form);
        if let Some(token) = self.token(mode, passthrough) {
            request = request.bearer_auth(token);
        }
        let sent = tokio::time::timeout(self.config.request_timeout(), request.send()).await;
        let response = match sent {
            Err(_) => return Err(self.timeout()),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.config.name, error = %e, "file upload failed");
                return Err(GatewayError::UpstreamUnreachable {
                    upstream: self.config.name.clone(),
                });
            }
            Ok(Ok(response)) => response,
        };
        if !response.status().is_success() {
            return Err(self.failure(http::Response::from(response), mode).await);
        }
        let body = super::read_limited(
            http::Response::from(response),
            64 * 1024,
            self.config.idle_timeout(),
        )
        .await
        .map_err(|_| self.protocol("the file upload answer could not be read"))?;
        serde_json::from_slice::<Uploaded>(&body)
            .map(|u| u.id)
            .map_err(|e| self.protocol(&format!("unreadable file upload answer: {e}")))
    }

    /// Deletes an uploaded document; failures are the caller's to log.
    pub async fn delete_file(&self, upstream_id: &str) -> Result<(), GatewayError> {
        let mut request = self
            .files_client
            .delete(self.files_url(&format!("/{upstream_id}")));
        if let Some(token) = self.token(AuthMode::Keys, None) {
            request = request.bearer_auth(token);
        }
        match tokio::time::timeout(self.config.request_timeout(), request.send()).await {
            Ok(Ok(r)) if r.status().is_success() || r.status() == 404 => Ok(()),
            Ok(Ok(r)) => Err(self.failure(http::Response::from(r), AuthMode::Keys).await),
            _ => Err(GatewayError::UpstreamUnreachable {
                upstream: self.config.name.clone(),
            }),
        }
    }

    pub(super) fn protocol(&self, message: &str) -> GatewayError {
        GatewayError::UpstreamProtocol {
            upstream: self.config.name.clone(),
            message: message.into(),
        }
    }
}
