//! Talking to image registries (the OCI distribution protocol, formats/oci.md §7): a blocking
//! facade over the `oci-client` crate, which owns HTTP, TLS with the system roots, and basic and
//! bearer-token auth. What this module adds is what a conversion pipeline needs around it:
//! credentials from the docker config file, retries with backoff on cut connections, 5xx and
//! 429, pulls that resume where they broke off (HTTP ranges), streamed uploads from files,
//! existence checks and cross-repository mounts, and one-line errors naming the registry.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

use crate::error::{Error, Result};

/// Media types a manifest pull accepts: OCI and docker, images and indexes.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Registries (`host[:port]`) spoken to in plain HTTP.
    pub plain_http: Vec<String>,
    /// Registries whose TLS certificates are not checked.
    pub insecure: Vec<String>,
    /// How many times a failed request is tried again.
    pub retries: u32,
    /// The wait before the first retry; it doubles with each further one.
    pub retry_delay: Duration,
}

/// An image reference in a registry, parsed the way docker parses it (`debian` is
/// `docker.io/library/debian:latest`).
#[derive(Debug, Clone)]
pub struct ImageRef(Reference);

impl ImageRef {
    /// Parses `[host[:port]/]repository[:tag][@digest]`.
    pub fn parse(s: &str) -> Result<ImageRef> {
        s.parse::<Reference>()
            .map(ImageRef)
            .map_err(|e| Error::InvalidOption(format!("image reference {s:?}: {e}")))
    }

    /// The registry host (`docker.io` for docker hub).
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The repository path.
    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The same repository at `digest`.
    pub fn at_digest(&self, digest: &str) -> ImageRef {
        ImageRef(Reference::with_digest(
            self.0.registry().to_string(),
            self.0.repository().to_string(),
            digest.to_string(),
        ))
    }

    /// The same repository at `tag`.
    pub fn at_tag(&self, tag: &str) -> ImageRef {
        ImageRef(Reference::with_tag(
            self.0.registry().to_string(),
            self.0.repository().to_string(),
            tag.to_string(),
        ))
    }

    /// The whole reference, as messages name it.
    pub fn whole(&self) -> String {
        self.0.whole()
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.whole())
    }
}

/// Which way a blob moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// From a registry.
    Pull,
    /// To a registry.
    Push,
}

/// Told of blobs as they move, for progress displays. Called from the transfer threads.
pub trait Observer: Send + Sync {
    /// A blob started moving (`size` 0 when unknown).
    fn started(&self, _way: Transfer, _digest: &str, _size: u64) {}
    /// More of its bytes moved.
    fn moved(&self, _way: Transfer, _digest: &str, _bytes: u64) {}
    /// It is complete (`moved` false: the target had it already, nothing moved).
    fn finished(&self, _way: Transfer, _digest: &str, _moved: bool) {}
}

/// An [`Observer`] that shows nothing.
pub struct Unobserved;
impl Observer for Unobserved {}

/// A manifest (or index) as the registry served it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its bytes, unchanged (their digest is the manifest's digest).
    pub bytes: Vec<u8>,
    /// `sha256:…` of the bytes.
    pub digest: String,
    /// Its media type, from the document.
    pub media_type: String,
}

/// A blocking client of registries. Cheap to share between threads.
#[derive(Clone)]
pub struct Client {
    rt: Arc<tokio::runtime::Runtime>,
    inner: Arc<oci_client::Client>,
    transport: Arc<Transport>,
    observer: Arc<dyn Observer>,
}

/// An error from the registry, one line naming the registry and what was asked.
fn registry_error(r: &ImageRef, what: &str, e: &OciDistributionError) -> Error {
    let reason = match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => format!(
            "unauthorized: check the credentials for {} in the docker config file",
            r.registry()
        ),
        OciDistributionError::ServerError { code, message, .. } => {
            let m = envelope_text(message)
                .unwrap_or_else(|| message.lines().next().unwrap_or("").trim().to_string());
            format!(
                "HTTP {code}{}",
                if m.is_empty() {
                    String::new()
                } else {
                    format!(": {m}")
                }
            )
        }
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .map(|x| format!("{:?}: {}", x.code, x.message))
            .collect::<Vec<_>>()
            .join("; "),
        OciDistributionError::RequestError(re) => chain(re),
        OciDistributionError::IoError(io) => chain(io),
        other => other.to_string(),
    };
    Error::Registry {
        registry: r.registry().to_string(),
        what: format!("{what} ({})", r.repository()),
        reason,
    }
}

/// The distribution protocol's error body (`{"errors":[{"code","message"}]}`) as `CODE:
/// message; ...`, when the text is one.
fn envelope_text(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let parts: Vec<String> = v["errors"]
        .as_array()?
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["code"].as_str().unwrap_or("?"),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        src = inner.source();
    }
    s
}

/// Whether trying again may help: the connection broke, the registry is overloaded or failed.
fn retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 429 || *code >= 500,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                oci_client::errors::OciErrorCode::Toomanyrequests
                    | oci_client::errors::OciErrorCode::BlobUploadUnknown
            )
        }),
        OciDistributionError::SpecViolationError(_) => true,
        _ => false,
    }
}

/// The credentials the docker config file (`$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`) holds for a registry, through its credential helpers when it names
/// them; anonymous when it has none.
fn credentials(registry: &str) -> RegistryAuth {
    let mut keys = vec![registry.to_string()];
    if registry == "docker.io" || registry == "index.docker.io" {
        keys.push("https://index.docker.io/v1/".into());
    }
    for k in keys {
        match docker_credential::get_credential(&k) {
            Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => {
                return RegistryAuth::Basic(u, p)
            }
            Ok(docker_credential::DockerCredential::IdentityToken(t)) => {
                return RegistryAuth::Bearer(t)
            }
            Err(_) => continue,
        }
    }
    RegistryAuth::Anonymous
}

impl Client {
    /// A client for `transport`'s registries, telling `observer` of blobs as they move.
    pub fn new(transport: Transport, observer: Arc<dyn Observer>) -> Result<Client> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("registry")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the registry runtime: {e}")))?;
        let config = ClientConfig {
            protocol: if transport.plain_http.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(transport.plain_http.clone())
            },
            accept_invalid_certificates: !transport.insecure.is_empty(),
            // one PUT per blob, its body streamed from the file: the fewest round trips
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            user_agent: concat!("erofs-forge/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        Ok(Client {
            rt: Arc::new(rt),
            inner: Arc::new(oci_client::Client::new(config)),
            transport: Arc::new(transport),
            observer,
        })
    }

    /// Runs `op` until it succeeds, fails for good, or the retries are spent; waits between
    /// tries, doubling the wait each time.
    fn retrying<T, F, Fut>(&self, r: &ImageRef, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let mut delay = self.transport.retry_delay;
        let mut attempt = 0;
        self.rt.block_on(async {
            loop {
                match op().await {
                    Ok(v) => return Ok(v),
                    Err(e) if retryable(&e) && attempt < self.transport.retries => {
                        attempt += 1;
                        log::warn!(
                            "{} (try {} of {})",
                            registry_error(r, what, &e),
                            attempt + 1,
                            self.transport.retries + 1
                        );
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                    Err(e) => return Err(registry_error(r, what, &e)),
                }
            }
        })
    }

    /// The manifest or index `r` names.
    pub fn manifest(&self, r: &ImageRef) -> Result<Manifest> {
        let auth = credentials(r.registry());
        let (bytes, digest) =
            self.retrying(r, &format!("get manifest {}", tag_or_digest(r)), || {
                self.inner.pull_manifest_raw(&r.0, &auth, MANIFEST_TYPES)
            })?;
        // a document without mediaType (allowed for OCI) is told by its shape
        let doc = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
        let media_type = match doc.get("mediaType").and_then(|m| m.as_str()) {
            Some(m) => m.to_string(),
            None if doc.get("manifests").is_some() => MANIFEST_TYPES[0].to_string(),
            None => MANIFEST_TYPES[1].to_string(),
        };
        Ok(Manifest {
            bytes: bytes.to_vec(),
            digest,
            media_type,
        })
    }

    /// A reader of a blob's bytes as they arrive. A connection that breaks is reopened where
    /// it broke off (an HTTP range), up to the retry count; the caller checks the digest.
    pub fn blob_reader(&self, r: &ImageRef, digest: &str, size: Option<u64>) -> BlobReader {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
        let inner = self.inner.clone();
        let transport = self.transport.clone();
        let reference = r.clone();
        let desc = OciDescriptor {
            digest: digest.to_string(),
            size: size.unwrap_or(0) as i64,
            ..OciDescriptor::default()
        };
        let observer = self.observer.clone();
        observer.started(Transfer::Pull, digest, size.unwrap_or(0));
        self.rt.spawn(async move {
            pull_resuming(inner, transport, reference, desc, tx, observer).await;
        });
        BlobReader {
            rx,
            current: Bytes::new(),
            failed: None,
        }
    }

    /// Whether the repository of `r` holds the blob.
    pub fn has_blob(&self, r: &ImageRef, digest: &str) -> Result<bool> {
        self.retrying(r, &format!("check blob {digest}"), || {
            self.inner.blob_exists(&r.0, digest)
        })
    }

    /// Mounts a blob of `from`'s repository into `r`'s (same registry): no bytes move. False
    /// when the registry declined (it then expects an upload).
    pub fn mount(&self, r: &ImageRef, from: &ImageRef, digest: &str) -> bool {
        let done = self
            .rt
            .block_on(self.inner.mount_blob(&r.0, &from.0, digest));
        done.is_ok() && self.has_blob(r, digest).unwrap_or(false)
    }

    /// Uploads an open file as a blob of `r`'s repository, streamed from disk (one PUT); a
    /// broken upload starts again from the file's first byte, up to the retry count.
    pub fn push_file(
        &self,
        r: &ImageRef,
        file: &std::fs::File,
        digest: &str,
        size: u64,
    ) -> Result<()> {
        let inner = self.inner.clone();
        self.observer.started(Transfer::Push, digest, size);
        self.retrying(r, &format!("upload blob {digest}"), || {
            let inner = inner.clone();
            let reference = r.0.clone();
            let digest = digest.to_string();
            let file = file.try_clone();
            let observer = self.observer.clone();
            async move {
                let mut f = file?;
                std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
                let seen = digest.clone();
                let stream = tokio_util::io::ReaderStream::with_capacity(
                    tokio::fs::File::from_std(f),
                    1 << 20,
                )
                .map(move |b| {
                    if let Ok(b) = &b {
                        observer.moved(Transfer::Push, &seen, b.len() as u64);
                    }
                    b.map_err(OciDistributionError::IoError)
                });
                inner
                    .push_blob_stream(&reference, stream, &digest, Some(size))
                    .await
                    .map(|_| ())
            }
        })?;
        self.observer.finished(Transfer::Push, digest, true);
        Ok(())
    }

    /// Tells the observer that a blob did not need to move.
    pub fn skipped(&self, digest: &str) {
        self.observer.finished(Transfer::Push, digest, false);
    }

    /// Puts a manifest or index under `r` (its tag or digest).
    pub fn push_manifest(&self, r: &ImageRef, bytes: &[u8], media_type: &str) -> Result<()> {
        let ct = reqwest_header(media_type)?;
        let data = Bytes::copy_from_slice(bytes);
        self.retrying(r, &format!("put manifest {}", tag_or_digest(r)), || {
            self.inner.push_manifest_raw(&r.0, data.clone(), ct.clone())
        })
        .map(|_| ())
    }
}

fn tag_or_digest(r: &ImageRef) -> String {
    r.digest().or(r.tag()).unwrap_or("latest").to_string()
}

fn reqwest_header(media_type: &str) -> Result<http::HeaderValue> {
    http::HeaderValue::from_str(media_type)
        .map_err(|_| Error::InvalidOption(format!("media type {media_type:?}")))
}

/// Streams a blob into `tx`, reopening it at the byte where a broken connection left off.
async fn pull_resuming(
    inner: Arc<oci_client::Client>,
    transport: Arc<Transport>,
    r: ImageRef,
    desc: OciDescriptor,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    observer: Arc<dyn Observer>,
) {
    let mut offset: u64 = 0;
    let mut attempt = 0u32;
    let mut delay = transport.retry_delay;
    let what = format!("get blob {}", desc.digest);
    loop {
        let failure = match inner
            .pull_blob_stream_partial(&r.0, &desc, offset, None)
            .await
        {
            Ok(resp) => {
                let (mut stream, mut skip) = match resp {
                    BlobResponse::Partial(s) => (s, 0),
                    // the registry ignored the range: drop what was already delivered
                    BlobResponse::Full(s) => (s, offset),
                };
                let mut broke = None;
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(mut b) => {
                            if skip > 0 {
                                let n = skip.min(b.len() as u64);
                                let _ = b.split_to(n as usize);
                                skip -= n;
                            }
                            if b.is_empty() {
                                continue;
                            }
                            offset += b.len() as u64;
                            observer.moved(Transfer::Pull, &desc.digest, b.len() as u64);
                            attempt = 0;
                            if tx.send(Ok(b)).await.is_err() {
                                return; // the reader went away
                            }
                        }
                        Err(e) => {
                            broke = Some(OciDistributionError::IoError(e));
                            break;
                        }
                    }
                }
                match broke {
                    None => {
                        // complete: dropping tx ends the reader's stream
                        observer.finished(Transfer::Pull, &desc.digest, true);
                        return;
                    }
                    Some(e) => e,
                }
            }
            Err(e) => e,
        };
        if !retryable(&failure) || attempt >= transport.retries {
            let e = registry_error(&r, &what, &failure);
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            return;
        }
        attempt += 1;
        log::warn!(
            "{} at byte {offset}, resuming (try {} of {})",
            registry_error(&r, &what, &failure),
            attempt + 1,
            transport.retries + 1
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// A blob's bytes as a blocking reader, fed by the runtime.
pub struct BlobReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    /// The failure that ended the transfer: every later read repeats it (the channel's end
    /// after it must not read as the blob's end).
    failed: Option<String>,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if let Some(f) = &self.failed {
                return Err(std::io::Error::other(f.clone()));
            }
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => {
                    self.failed = Some(e.to_string());
                    return Err(e);
                }
                Some(Ok(b)) => self.current = b,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
