//! Files: `/v1/files` (and `/compatible-mode/v1/files`) in the OpenAI/DashScope shapes, bytes in
//! a local directory or S3-compatible object storage, and `fileid://` references in system
//! messages resolved per upstream (`resolve`). The routes are `crate::api::files`: the
//! `AppState` holds `Files`, so nothing here takes the state.

pub mod cage;
pub mod extract;
pub mod metrics;
pub mod resolve;
pub mod scan;
pub mod worker;

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::config::FilesConfig;

/// Where file bytes live.
pub struct Files {
    objects: Arc<dyn ObjectStore>,
    pub config: FilesConfig,
    /// Text extraction's worker processes.
    pub cage: Arc<cage::Cage>,
}

impl Files {
    pub fn new(config: &FilesConfig, metrics: metrics::ExtractMetrics) -> Result<Files, String> {
        let objects: Arc<dyn ObjectStore> = match &config.url {
            Some(url) => {
                let bucket = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| format!("files.url: {e}"))?;
                // The builder takes only the bucket from the URL; the path is a prefix.
                let prefix = url
                    .trim_start_matches("s3://")
                    .split_once('/')
                    .map_or("", |(_, p)| p.trim_matches('/'));
                if prefix.is_empty() {
                    Arc::new(bucket)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(bucket, prefix))
                }
            }
            None => {
                std::fs::create_dir_all(&config.dir)
                    .map_err(|e| format!("files.dir: {}: {e}", config.dir.display()))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&config.dir)
                        .map_err(|e| format!("files.dir: {e}"))?,
                )
            }
        };
        Ok(Files {
            objects,
            config: config.clone(),
            cage: Arc::new(cage::Cage::new(config, metrics)?),
        })
    }

    pub async fn put(&self, id: &str, bytes: Bytes) -> Result<(), object_store::Error> {
        self.objects
            .put(&ObjectPath::from(id), bytes.into())
            .await
            .map(|_| ())
    }

    pub async fn get(&self, id: &str) -> Result<Bytes, object_store::Error> {
        self.objects.get(&ObjectPath::from(id)).await?.bytes().await
    }

    pub async fn delete(&self, id: &str) -> Result<(), object_store::Error> {
        match self.objects.delete(&ObjectPath::from(id)).await {
            Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Who owns a caller's files: its key's name; in passthrough mode, each bearer token (by its
/// hash) is an owner of its own.
pub fn owner_of(caller: &crate::auth::Caller) -> String {
    match &caller.passthrough_token {
        Some(token) => format!(
            "passthrough:{}",
            hex::encode(&crate::auth::hash_key(token)[..12])
        ),
        None => caller.name.to_string(),
    }
}

/// A new file id in DashScope's shape: `file-fe-...` for documents, `file-batch-...` for batch
/// input.
pub fn new_id(purpose: &str) -> String {
    let kind = if purpose == "batch" { "batch" } else { "fe" };
    format!("file-{kind}-{}", uuid::Uuid::new_v4().simple())
}
