//! Files: `/v1/files` (and `/compatible-mode/v1/files`) in the OpenAI/DashScope shapes, bytes in
//! a local directory or S3-compatible object storage, and `fileid://` references in system
//! messages resolved per upstream (`resolve`).

mod api;
pub mod extract;
pub mod resolve;

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

pub use api::routes;

use crate::config::FilesConfig;

/// Where file bytes live.
pub struct Files {
    objects: Arc<dyn ObjectStore>,
    pub config: FilesConfig,
}

impl Files {
    pub fn new(config: &FilesConfig) -> Result<Files, String> {
        let objects: Arc<dyn ObjectStore> = match &config.url {
            Some(url) => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| format!("files.url: {e}"))?,
            ),
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

/// A new file id in DashScope's shape: `file-fe-...` for documents, `file-batch-...` for batch
/// input.
pub fn new_id(purpose: &str) -> String {
    let kind = if purpose == "batch" { "batch" } else { "fe" };
    format!("file-{kind}-{}", uuid::Uuid::new_v4().simple())
}
