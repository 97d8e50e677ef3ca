//! Where a DR copy's objects live: a directory (a second disk, a mounted remote
//! filesystem) or an S3 bucket (through `object_store`). Keys are relative paths such
//! as `packs/<id>`; the copy's layout is `layout.rs`'s, not this file's.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to reach S3-compatible object storage.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Toml {
    /// `http://host:port` of a self-hosted engine; absent for AWS itself.
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Keys of this copy start with it (several appliances can share a bucket).
    #[serde(default)]
    pub prefix: String,
    /// Both absent: the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Virtual-hosted style (`bucket.host`) instead of the path style self-hosted
    /// engines (Garage, MinIO) expect.
    #[serde(default)]
    pub virtual_hosted: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

#[derive(Clone)]
pub enum Backend {
    Dir(PathBuf),
    S3 {
        store: Arc<dyn ObjectStore>,
        prefix: String,
        what: String,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// An object that is not there is `Ok(None)` from [`Backend::get`]; every other
/// failure is an error naming the key and the target.
impl Backend {
    pub fn dir(path: &Path) -> Backend {
        Backend::Dir(path.to_path_buf())
    }

    pub fn s3(c: &S3Toml) -> Result<Backend> {
        use object_store::aws::AmazonS3Builder;
        if c.bucket.is_empty() {
            bail!("s3.bucket is empty");
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_virtual_hosted_style_request(c.virtual_hosted)
            .with_retry(object_store::RetryConfig {
                backoff: Default::default(),
                // A target that is down fails the job within about half a minute
                // (the next run catches up) instead of object_store's 3 minutes.
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(20),
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(std::time::Duration::from_secs(5))
                    .with_timeout(std::time::Duration::from_secs(120)),
            );
        if let Some(ep) = &c.endpoint {
            b = b
                .with_endpoint(ep)
                .with_allow_http(ep.starts_with("http://"));
        }
        match (&c.access_key_id, &c.secret_access_key) {
            (Some(k), Some(s)) => b = b.with_access_key_id(k).with_secret_access_key(s),
            (None, None) => {}
            _ => bail!("s3: access_key_id and secret_access_key go together"),
        }
        let store = b.build().context("s3 target")?;
        let prefix = c.prefix.trim_matches('/').to_string();
        Ok(Backend::S3 {
            store: Arc::new(store),
            what: format!(
                "s3://{}/{}{}",
                c.bucket,
                prefix,
                c.endpoint
                    .as_ref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
            prefix,
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Backend::Dir(p) => p.display().to_string(),
            Backend::S3 { what, .. } => what.clone(),
        }
    }

    fn s3_path(prefix: &str, key: &str) -> object_store::path::Path {
        if prefix.is_empty() {
            object_store::path::Path::from(key)
        } else {
            object_store::path::Path::from(format!("{prefix}/{key}"))
        }
    }

    /// Writes `key` whole. A directory target writes a temporary file, fsyncs it,
    /// renames it into place and fsyncs the directory: an object is there whole or not
    /// at all, and durable before the next object (the snapshot record) is written.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        match self {
            Backend::Dir(root) => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || put_file(&path, &data)).await?
            }
            Backend::S3 { store, prefix, .. } => {
                store
                    .put(&Self::s3_path(prefix, key), data.into())
                    .await
                    .map_err(|e| anyhow!("writing {key} to {}: {e}", self.describe()))?;
                Ok(())
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match self {
            Backend::Dir(root) => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || match std::fs::read(&path) {
                    Ok(b) => Ok(Some(Bytes::from(b))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
                })
                .await?
            }
            Backend::S3 { store, prefix, .. } => {
                match store.get(&Self::s3_path(prefix, key)).await {
                    Ok(r) => Ok(Some(r.bytes().await.map_err(|e| {
                        anyhow!("reading {key} from {}: {e}", self.describe())
                    })?)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(anyhow!("reading {key} from {}: {e}", self.describe())),
                }
            }
        }
    }

    /// Bytes `range` of `key`; an object too short for it is an error.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        match self {
            Backend::Dir(root) => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || -> Result<Bytes> {
                    use std::os::unix::fs::FileExt;
                    let f = std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    let mut buf = vec![0u8; (range.end - range.start) as usize];
                    f.read_exact_at(&mut buf, range.start).with_context(|| {
                        format!(
                            "reading {}..{} of {}",
                            range.start,
                            range.end,
                            path.display()
                        )
                    })?;
                    Ok(Bytes::from(buf))
                })
                .await?
            }
            Backend::S3 { store, prefix, .. } => {
                let want = range.end - range.start;
                let b = store
                    .get_range(&Self::s3_path(prefix, key), range.clone())
                    .await
                    .map_err(|e| anyhow!("reading {key} from {}: {e}", self.describe()))?;
                if b.len() as u64 != want {
                    bail!(
                        "reading {key} from {}: {} bytes where {want} were asked",
                        self.describe(),
                        b.len()
                    );
                }
                Ok(b)
            }
        }
    }

    /// Keys under `dir` (`packs`, `index`, `snapshots`) with their sizes and ages in
    /// seconds, relative to the target (`packs/<id>`).
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64, u64)>> {
        match self {
            Backend::Dir(root) => {
                let (root, dir) = (root.clone(), dir.to_string());
                tokio::task::spawn_blocking(move || list_dir(&root, &dir)).await?
            }
            Backend::S3 { store, prefix, .. } => {
                let p = Self::s3_path(prefix, dir);
                let now = chrono::Utc::now();
                let metas: Vec<object_store::ObjectMeta> = store
                    .list(Some(&p))
                    .try_collect()
                    .await
                    .map_err(|e| anyhow!("listing {dir} in {}: {e}", self.describe()))?;
                let skip = if prefix.is_empty() {
                    0
                } else {
                    prefix.len() + 1
                };
                Ok(metas
                    .into_iter()
                    .map(|m| {
                        let age = (now - m.last_modified).num_seconds().max(0) as u64;
                        (m.location.as_ref()[skip..].to_string(), m.size, age)
                    })
                    .collect())
            }
        }
    }

    /// Deletes `key`; one already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self {
            Backend::Dir(root) => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(anyhow!("deleting {}: {e}", path.display()))
                    }
                    _ => Ok(()),
                })
                .await?
            }
            Backend::S3 { store, prefix, .. } => {
                match store.delete(&Self::s3_path(prefix, key)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(anyhow!("deleting {key} from {}: {e}", self.describe())),
                }
            }
        }
    }
}

fn put_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("keys have a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("writing {}: {e}", path.display())
    })
}

fn list_dir(root: &Path, dir: &str) -> Result<Vec<(String, u64, u64)>> {
    let mut out = Vec::new();
    let base = root.join(dir);
    if !base.exists() {
        return Ok(out);
    }
    let now = std::time::SystemTime::now();
    for e in walkdir::WalkDir::new(&base).min_depth(1) {
        let e = e.with_context(|| format!("listing {}", base.display()))?;
        if !e.file_type().is_file() || e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let md = e.metadata()?;
        let age = md
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .map_or(0, |d| d.as_secs());
        let rel = e.path().strip_prefix(root).expect("under root");
        out.push((rel.to_string_lossy().into_owned(), md.len(), age));
    }
    Ok(out)
}
