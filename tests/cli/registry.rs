//! A real OCI distribution registry for the tests: Debian's `docker-registry` (the CNCF
//! distribution registry, 2.8) started on 127.0.0.1 with its own storage directory, never a
//! mock; skopeo pushes to it, pulls from it and inspects it. [`Registry`] counts what reached
//! the registry (completed blob uploads, cross-repository mounts, manifest PUTs) from its access
//! log, so a test can tell that a blob was uploaded, or was not uploaded again.
//!
//! Plain HTTP ([`Registry::start`]), or HTTPS with a self-signed certificate for 127.0.0.1
//! made by `openssl` at start ([`Registry::start_tls`]). skopeo needs `--tls-verify=false`
//! (`--src-`/`--dest-`) for both, even for 127.0.0.1, which [`Client`] always passes. It also
//! passes credentials explicitly (or `--no-creds`), so no auth file of the machine takes part,
//! and `--insecure-policy`, so no `policy.json` does.
//!
//! Basic auth against an htpasswd file ([`Registry::start_with_auth`]), or the docker token
//! flow ([`Registry::start_with_token`]): the registry answers 401 with a `Bearer` challenge
//! naming a [`TokenServer`] of the test, which takes the client's basic credentials and hands
//! out RS256 JWTs signed with a key made by `openssl`; the registry trusts that key's
//! self-signed certificate (`rootcertbundle`) and checks each token's signature, issuer,
//! audience, lifetime and granted scopes itself.
//!
//! Needs `docker-registry` and `htpasswd` (`no_registry`) and skopeo (`no_skopeo`);
//! [`Registry::start_tls`] and [`Registry::start_with_token`] also `openssl` (and the former
//! uses `curl`, when there is one, to wait for it).

use crate::common::*;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use sha2::{Digest, Sha256};

/// How long the registry may take to answer `GET /v2/` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `docker-registry serve` child on 127.0.0.1:PORT, storing into a scratch directory and
/// logging (application log and one access-log line per request) into a file there. Killed on
/// drop; a panicking test gets the log's tail on stderr.
pub struct Registry {
    child: Child,
    addr: String,
    creds: Option<(String, String)>,
    tls: bool,
    log_path: PathBuf,
    storage: PathBuf,
    /// the token issuer of a [`Registry::start_with_token`] registry (it signs with a key in
    /// the scratch directory, so it is dropped, and stopped, before that)
    token: Option<TokenServer>,
    // last: the directory outlives the child
    _dir: tempfile::TempDir,
}

/// What a registry asks of its clients.
#[derive(Debug, Clone, Copy)]
enum Auth<'a> {
    None,
    /// HTTP basic auth against an htpasswd file for `user`:`password`
    Basic(&'a str, &'a str),
    /// the docker token flow, tokens from a [`TokenServer`] that takes `user`:`password`
    Token(&'a str, &'a str),
}

impl<'a> Auth<'a> {
    fn creds(self) -> Option<(&'a str, &'a str)> {
        match self {
            Auth::None => None,
            Auth::Basic(u, p) | Auth::Token(u, p) => Some((u, p)),
        }
    }
}

/// One request of the registry's access log (Apache combined format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// the request URI, query string included
    pub uri: String,
    pub status: u16,
}

impl Request {
    /// The URI without its query string.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    /// A completed blob upload: the closing `PUT /v2/<name>/blobs/uploads/<uuid>?digest=...`
    /// answered 201 (the POST and PATCHes before it are not counted).
    pub fn is_blob_put(&self) -> bool {
        self.method == "PUT"
            && self.status == 201
            && self.path().starts_with("/v2/")
            && self.path().contains("/blobs/uploads/")
            && !self.path().ends_with("/blobs/uploads/")
    }

    /// A blob mounted from another repository of the same registry (no bytes sent):
    /// `POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>` answered 201.
    pub fn is_blob_mount(&self) -> bool {
        self.method == "POST"
            && self.status == 201
            && self.path().ends_with("/blobs/uploads/")
            && self.uri.contains("mount=")
    }

    /// A manifest stored: `PUT /v2/<name>/manifests/<tag or digest>` answered 201.
    pub fn is_manifest_put(&self) -> bool {
        self.method == "PUT"
            && self.status == 201
            && self.path().starts_with("/v2/")
            && self.path().contains("/manifests/")
    }
}

impl Registry {
    /// A registry without authentication.
    pub fn start() -> Registry {
        launch(Auth::None, false)
    }

    /// A registry without authentication that speaks HTTPS only, with a certificate for
    /// `IP:127.0.0.1` signed by itself (valid one day, made by `openssl req -x509` in its
    /// scratch directory): clients must skip the certificate check (`--tls-verify=false`,
    /// `convert --source-insecure`/`--target-insecure`). A plain HTTP request gets 400 (or a
    /// reset).
    pub fn start_tls() -> Registry {
        launch(Auth::None, true)
    }

    /// A registry that wants HTTP basic auth (htpasswd, bcrypt) for `user`:`password` on every
    /// request, `GET /v2/` included.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        launch(Auth::Basic(user, password), false)
    }

    /// A registry that wants a bearer token on every request, `GET /v2/` included (the docker
    /// token flow): it answers 401 with `WWW-Authenticate: Bearer realm=...,service=...,
    /// scope=...`, the realm being a [`TokenServer`] on another port of 127.0.0.1 that issues
    /// tokens for `user`:`password` (HTTP basic) granting what they ask. Plain HTTP.
    pub fn start_with_token(user: &str, password: &str) -> Registry {
        launch(Auth::Token(user, password), false)
    }

    /// Every request its token server answered so far, in order (none without one).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token
            .as_ref()
            .map(|t| t.requests())
            .unwrap_or_default()
    }

    /// How many tokens its token server issued (requests with the right credentials).
    pub fn tokens_issued(&self) -> usize {
        self.token_requests().iter().filter(|r| r.issued()).count()
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// `127.0.0.1:PORT/<repo_ref>`, the form `convert --source/--target` and skopeo's
    /// `docker://` take; `repo_ref` is `name:tag` or `name@sha256:...`.
    pub fn reference(&self, repo_ref: &str) -> String {
        format!("{}/{repo_ref}", self.addr)
    }

    /// The credentials it wants, if any.
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Its storage root (`docker/registry/v2/{blobs,repositories}` below).
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// Everything it logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// Every request of the access log so far, in order. A request is logged when its handler
    /// returns, before the response is flushed, so a client that has its answer finds it
    /// logged, except possibly the end of a large streamed GET.
    pub fn requests(&self) -> Vec<Request> {
        self.log().lines().filter_map(parse_access_line).collect()
    }

    /// Completed blob uploads (see [`Request::is_blob_put`]).
    pub fn blob_puts(&self) -> usize {
        self.requests().iter().filter(|r| r.is_blob_put()).count()
    }

    /// Blobs mounted from another repository (see [`Request::is_blob_mount`]).
    pub fn blob_mounts(&self) -> usize {
        self.requests().iter().filter(|r| r.is_blob_mount()).count()
    }

    /// Manifests stored (see [`Request::is_manifest_put`]).
    pub fn manifest_puts(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.is_manifest_put())
            .count()
    }

    /// A skopeo client of this registry, with its credentials.
    pub fn client(&self) -> Client {
        Client::new(&self.addr, self.creds())
    }

    /// `skopeo copy oci:<layout_with_tag> docker://ADDR/<repo_ref>`; `layout_with_tag` is
    /// `DIR:TAG`. Panics when it fails.
    pub fn push_oci_layout(&self, layout_with_tag: &str, repo_ref: &str) {
        let out = self.client().push(layout_with_tag, repo_ref);
        self.assert_skopeo(&out, &format!("push {layout_with_tag} to {repo_ref}"));
    }

    /// `skopeo copy docker://ADDR/<repo_ref> oci:<layout_with_tag>`. Panics when it fails.
    pub fn pull_to_oci(&self, repo_ref: &str, layout_with_tag: &str) {
        let out = self.client().pull(repo_ref, layout_with_tag);
        self.assert_skopeo(&out, &format!("pull {repo_ref} to {layout_with_tag}"));
    }

    /// `skopeo inspect`: its summary (`Digest`, `Layers`, `Architecture`, ...).
    pub fn inspect(&self, repo_ref: &str) -> serde_json::Value {
        let out = self.client().inspect(repo_ref, false);
        self.assert_skopeo(&out, &format!("inspect {repo_ref}"));
        serde_json::from_slice(&out.stdout).expect("skopeo inspect prints JSON")
    }

    /// `skopeo inspect --raw`: the manifest (or index) as the registry serves it.
    pub fn inspect_raw(&self, repo_ref: &str) -> serde_json::Value {
        let out = self.client().inspect(repo_ref, true);
        self.assert_skopeo(&out, &format!("inspect --raw {repo_ref}"));
        serde_json::from_slice(&out.stdout).expect("the manifest is JSON")
    }

    fn assert_skopeo(&self, out: &Output, what: &str) {
        assert!(
            out.status.success(),
            "skopeo {what} at {} failed ({}):\n{}\nregistry log (tail):\n{}",
            self.addr,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 20)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "registry {} log (tail):\n{}",
                self.addr,
                tail(&self.log(), 40)
            );
        }
    }
}

/// skopeo pointed at a registry address (the registry's own, or a proxy's in front of it)
/// with the credentials it sends (`None`: `--no-creds`). Its methods return skopeo's output,
/// failed or not; `Registry`'s panic on failure.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: String,
    /// `user:password`
    pub creds: Option<String>,
}

impl Client {
    pub fn new(addr: &str, creds: Option<(&str, &str)>) -> Client {
        Client {
            addr: addr.to_string(),
            creds: creds.map(|(u, p)| format!("{u}:{p}")),
        }
    }

    /// The same client through another address (a [`crate::fault_proxy::FaultProxy`]).
    pub fn via(&self, addr: &str) -> Client {
        Client {
            addr: addr.to_string(),
            creds: self.creds.clone(),
        }
    }

    /// `docker://ADDR/<repo_ref>`
    pub fn docker_ref(&self, repo_ref: &str) -> String {
        format!("docker://{}/{repo_ref}", self.addr)
    }

    /// `skopeo copy oci:<layout_with_tag> docker://ADDR/<repo_ref>`
    pub fn push(&self, layout_with_tag: &str, repo_ref: &str) -> Output {
        let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false"];
        let creds;
        match &self.creds {
            Some(c) => {
                creds = format!("--dest-creds={c}");
                args.push(&creds);
            }
            None => args.push("--dest-no-creds"),
        }
        let (src, dst) = (format!("oci:{layout_with_tag}"), self.docker_ref(repo_ref));
        args.extend([src.as_str(), dst.as_str()]);
        skopeo(&args)
    }

    /// `skopeo copy docker://ADDR/<repo_ref> oci:<layout_with_tag>`
    pub fn pull(&self, repo_ref: &str, layout_with_tag: &str) -> Output {
        let mut args = vec!["copy", "--quiet", "--src-tls-verify=false"];
        let creds;
        match &self.creds {
            Some(c) => {
                creds = format!("--src-creds={c}");
                args.push(&creds);
            }
            None => args.push("--src-no-creds"),
        }
        let (src, dst) = (self.docker_ref(repo_ref), format!("oci:{layout_with_tag}"));
        args.extend([src.as_str(), dst.as_str()]);
        skopeo(&args)
    }

    /// `skopeo inspect [--raw] docker://ADDR/<repo_ref>`
    pub fn inspect(&self, repo_ref: &str, raw: bool) -> Output {
        let mut args = vec!["inspect", "--tls-verify=false"];
        if raw {
            args.push("--raw");
        }
        let creds;
        match &self.creds {
            Some(c) => {
                creds = format!("--creds={c}");
                args.push(&creds);
            }
            None => args.push("--no-creds"),
        }
        let r = self.docker_ref(repo_ref);
        args.push(&r);
        skopeo(&args)
    }
}

/// Runs `skopeo --insecure-policy ARGS` (five minutes at most).
pub fn skopeo(args: &[&str]) -> Output {
    let mut all = vec!["--insecure-policy"];
    all.extend_from_slice(args);
    run_program(Path::new("skopeo"), &all, b"")
}

/// Writes a one-layer OCI image layout to `dir` (no root, no umoci): a gzip tar layer holding
/// `data`, `payload` pseudo-random (incompressible) bytes, tagged `tag`. Returns `DIR:TAG` for
/// [`Registry::push_oci_layout`] and the layer's digest. (gzip, because skopeo compresses an
/// uncompressed layer on its way to a registry or a layout, changing its digest.)
pub fn small_layout(dir: &Path, tag: &str, payload: usize) -> (String, String) {
    let mut data = Vec::with_capacity(payload);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while data.len() < payload {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(payload);
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("data").unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    layer.append(&h, data.as_slice()).unwrap();
    let tar = layer.into_inner().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let layer = gz.finish().unwrap();

    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = hex::encode(Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (format!("{}:{tag}", s(dir)), layer_digest)
}

/// Starts the registry; when another process took the port first, again on another one.
fn launch(auth: Auth, tls: bool) -> Registry {
    let test = "Registry::start";
    let program = ["/usr/bin/docker-registry", "docker-registry"]
        .into_iter()
        .find(|p| Path::new(p).is_file() || have(p))
        .unwrap_or_else(|| missing(test, "docker-registry is not installed"));
    if matches!(auth, Auth::Basic(..)) && !have("htpasswd") {
        missing(test, "htpasswd (apache2-utils) is not installed");
    }
    if (tls || matches!(auth, Auth::Token(..))) && !have("openssl") {
        missing(test, "openssl is not installed");
    }
    let mut last = String::new();
    for _ in 0..5 {
        match launch_once(program, auth, tls) {
            Ok(registry) => return registry,
            Err(log) if log.contains("address already in use") => last = log,
            Err(log) => panic!("docker-registry did not start:\n{log}"),
        }
    }
    panic!("docker-registry found no free port:\n{last}")
}

/// The `auth:` section of the registry's config.yml for `auth`, writing what it names into
/// `dir`; with the token server it points at (started here) for [`Auth::Token`].
fn auth_config(auth: Auth, dir: &Path) -> (String, Option<TokenServer>) {
    match auth {
        Auth::None => (String::new(), None),
        Auth::Basic(user, password) => {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("spawn htpasswd");
            assert!(
                out.status.success(),
                "htpasswd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let file = dir.join("htpasswd");
            fs::write(&file, &out.stdout).unwrap();
            let yaml = format!(
                "auth:\n  htpasswd:\n    realm: erofs-forge-test\n    path: {}\n",
                s(&file)
            );
            (yaml, None)
        }
        Auth::Token(user, password) => {
            let server = TokenServer::start(dir, user, password);
            // the registry trusts the token server's self-signed certificate as a root, and
            // takes only tokens of this issuer meant for this service
            let yaml = format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    \
                 issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                server.addr,
                s(&server.cert)
            );
            (yaml, Some(server))
        }
    }
}

/// One start on a port that was free a moment ago; Err(log) when the registry exited.
fn launch_once(program: &str, auth: Auth, tls: bool) -> Result<Registry, String> {
    let dir = scratch();
    let storage = dir.path().join("storage");
    fs::create_dir(&storage).unwrap();
    let (auth_yaml, token) = auth_config(auth, dir.path());
    let tls_yaml = if tls {
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        self_signed(&key, &cert);
        format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            s(&cert),
            s(&key)
        )
    } else {
        String::new()
    };
    // a port is free once its listener is dropped; another process may take it before the
    // registry binds it (the registry then exits, and launch tries again)
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: erofs-forge-test\n{tls_yaml}{auth_yaml}",
            s(&storage)
        ),
    )
    .unwrap();
    // one file for both streams, appended to line by line
    let log_path = dir.path().join("registry.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let child = Command::new(program)
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut registry = Registry {
        child,
        addr,
        creds: auth.creds().map(|(u, p)| (u.to_string(), p.to_string())),
        tls,
        log_path,
        storage,
        token,
        _dir: dir,
    };
    registry.wait_ready()?;
    Ok(registry)
}

impl Registry {
    /// Waits until `GET /v2/` is answered (200, or 401 with auth) by this child, which must
    /// have logged that it listens on its address. Err(log) when the child exited.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let listening = format!("listening on {}", self.addr);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exited ({status}):\n{}", self.log()));
            }
            let status = if self.tls {
                https_status(&self.addr, "/v2/")
            } else {
                http_status(&self.addr, "/v2/")
            };
            let answered = status.is_some_and(|c| c == 200 || c == 401);
            if answered && self.log().contains(&listening) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "docker-registry on {} did not answer GET /v2/ in {START_TIMEOUT:?}:\n{}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The status code of `GET path` (HTTP/1.0, no credentials), or None when nothing answers.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let sa = addr.parse().ok()?;
    let mut c = TcpStream::connect_timeout(&sa, Duration::from_secs(1)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    c.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while head.len() < 12 {
        let n = c.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    // "HTTP/1.1 200 OK"
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The status code of `GET https://ADDR/path`, the certificate not checked, or None when
/// nothing answers it over TLS: `curl -k`, or without curl, 200 once something accepts a
/// TCP connection (the caller also waits for the registry's "listening on" line).
fn https_status(addr: &str, path: &str) -> Option<u16> {
    if !have("curl") {
        let sa = addr.parse().ok()?;
        return TcpStream::connect_timeout(&sa, Duration::from_secs(1))
            .ok()
            .map(|_| 200);
    }
    let out = Command::new("curl")
        .args(["-k", "-s", "-o", "/dev/null", "--max-time", "2"])
        .args(["-w", "%{http_code}", &format!("https://{addr}{path}")])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    // 000 when nothing answered
    match String::from_utf8_lossy(&out.stdout).trim().parse() {
        Ok(0) | Err(_) => None,
        Ok(code) => Some(code),
    }
}

/// A key and a self-signed certificate for `IP:127.0.0.1` (one day), PEM, by `openssl req`.
fn self_signed(key: &Path, cert: &Path) {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stdin(Stdio::null())
        .output()
        .expect("spawn openssl");
    assert!(
        out.status.success() && cert.is_file() && key.is_file(),
        "openssl req -x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `service` of the token registry's config: the audience its tokens must name.
const TOKEN_SERVICE: &str = "erofs-forge-registry";
/// The `issuer` of the token registry's config: the issuer its tokens must name.
const TOKEN_ISSUER: &str = "erofs-forge-token-issuer";
/// How long an issued token is valid, in seconds (`exp` and `expires_in`).
const TOKEN_LIFETIME: u64 = 300;
/// How long the token server waits for one request's bytes (a client that connects and says
/// nothing must not stop the server).
const TOKEN_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One request the [`TokenServer`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// its `User-Agent` (erofs-forge's own start with `erofs-forge/`)
    pub user_agent: String,
    /// its `scope` parameters, decoded (`repository:NAME:pull,push`); none when a client
    /// only logs in
    pub scopes: Vec<String>,
    /// 200 with a token, 401 for missing or wrong credentials, 404 or 500 otherwise
    pub status: u16,
}

impl TokenRequest {
    /// Whether a token was issued.
    pub fn issued(&self) -> bool {
        self.status == 200
    }
}

/// The docker token flow's authorization server, in a thread of the test on 127.0.0.1:
/// `GET /token?service=...&scope=...` with the right HTTP basic credentials gets
/// `{"token", "access_token", "expires_in"}`, a JWT granting every scope asked (none when none
/// is asked); wrong or missing credentials get 401. The JWT is RS256, signed by `openssl dgst`
/// with a key made at start, and carries the key's self-signed certificate in `x5c`: the
/// registry verifies the chain against its `rootcertbundle` (that same certificate). One
/// request per connection, answered in turn; serves until dropped.
pub struct TokenServer {
    /// `127.0.0.1:PORT`
    addr: String,
    /// the certificate the registry trusts (PEM)
    cert: PathBuf,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    thread: Option<JoinHandle<()>>,
}

/// What the token server's thread needs to check credentials and sign.
struct Issuer {
    user: String,
    password: String,
    key: PathBuf,
    /// the certificate's DER, standard base64 (the `x5c` entry)
    cert_der: String,
    /// a counter making each `jti` unique
    serial: AtomicU64,
}

impl TokenServer {
    /// Makes the signing key and certificate in `dir` and starts serving on a port of its own
    /// (bound before the registry's config names it: no race for it).
    fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        let (key, cert) = (dir.join("token-key.pem"), dir.join("token-cert.pem"));
        self_signed(&key, &cert);
        let pem = fs::read_to_string(&cert).unwrap();
        // a PEM certificate's body is the standard base64 of its DER, wrapped at 64 columns
        let cert_der: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let issuer = Issuer {
            user: user.to_string(),
            password: password.to_string(),
            key,
            cert_der,
            serial: AtomicU64::new(0),
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port on 127.0.0.1");
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop_t, requests_t) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop_t.load(Ordering::SeqCst) {
                    break;
                }
                // a failed accept or a client gone mid-request is that client's problem
                let Ok(conn) = conn else { continue };
                if let Some(r) = issuer.serve(conn) {
                    requests_t.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                }
            }
        });
        TokenServer {
            addr,
            cert,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // wakes the blocking accept, which then sees the flag
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Issuer {
    /// Reads one request from `conn` and answers it; None when it sent no whole request.
    fn serve(&self, mut conn: TcpStream) -> Option<TokenRequest> {
        conn.set_read_timeout(Some(TOKEN_READ_TIMEOUT)).ok()?;
        conn.set_write_timeout(Some(TOKEN_READ_TIMEOUT)).ok()?;
        let head = read_head(&mut conn)?;
        let mut words = head.split("\r\n").next()?.split(' ');
        let (method, target) = (words.next()?, words.next()?);
        let header = |name: &str| {
            head.split("\r\n").skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let scopes: Vec<String> = query_values(query, "scope")
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .collect();
        let mut request = TokenRequest {
            user_agent: header("user-agent").unwrap_or_default(),
            scopes,
            status: 404,
        };
        let (status, body) = if method != "GET" || path != "/token" {
            (404, r#"{"details":"not found"}"#.to_string())
        } else if !self.authorized(header("authorization").as_deref()) {
            (
                401,
                r#"{"details":"incorrect username or password"}"#.to_string(),
            )
        } else {
            match self.token(&request.scopes) {
                Ok(jwt) => (
                    200,
                    serde_json::json!({
                        "token": jwt,
                        "access_token": jwt,
                        "expires_in": TOKEN_LIFETIME,
                    })
                    .to_string(),
                ),
                Err(e) => (500, serde_json::json!({ "details": e }).to_string()),
            }
        };
        request.status = status;
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let challenge = if status == 401 {
            "WWW-Authenticate: Basic realm=\"erofs-forge-token\"\r\n"
        } else {
            ""
        };
        // one request per connection: clients keep no connection the thread would wait on
        let _ = write!(
            conn,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{challenge}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        Some(request)
    }

    /// Whether `authorization` is `Basic base64(user:password)` with this issuer's pair.
    fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some((scheme, b64)) = authorization.and_then(|a| a.split_once(' ')) else {
            return false;
        };
        let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim());
        scheme.eq_ignore_ascii_case("basic")
            && decoded.is_ok_and(|d| d == format!("{}:{}", self.user, self.password).as_bytes())
    }

    /// A signed JWT for this user granting `scopes` (`TYPE:NAME:ACTION,...`), in the claim set
    /// distribution 2.8 checks (registry/auth/token/token.go): `iss` its issuer, `aud` its
    /// service (a string), `exp`/`nbf` around now, and `access` entries per resource.
    fn token(&self, scopes: &[String]) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|scope| {
                // the name may hold no ':', but split from both ends to be sure of it
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').filter(|a| !a.is_empty()).collect::<Vec<_>>(),
                }))
            })
            .collect();
        let serial = self.serial.fetch_add(1, Ordering::SeqCst);
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.cert_der]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": self.user,
            "aud": TOKEN_SERVICE,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now.saturating_sub(1),
            "iat": now,
            "jti": format!("erofs-forge-{now}-{serial}"),
            "access": access,
        });
        let b64url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = rs256(&self.key, signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", b64url(&signature)))
    }
}

/// The RS256 signature (RSASSA-PKCS1-v1_5 over SHA-256) of `data` with the PEM key at `key`:
/// `openssl dgst -sha256 -sign`.
fn rs256(key: &Path, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn openssl: {e}"))?;
    // the signing input is a few KiB, well within a pipe's buffer: no deadlock writing first
    child
        .stdin
        .take()
        .ok_or("openssl has no stdin")?
        .write_all(data)
        .map_err(|e| format!("write to openssl: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("openssl dgst: {e}"))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!(
            "openssl dgst -sign: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// An HTTP request's head (request line and headers, up to the blank line), at most 64 KiB;
/// None when the client stops or stalls before it ends.
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 64 << 10 {
            return None;
        }
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(String::from_utf8_lossy(&head[..end]).into_owned())
}

/// Every value of `key` in a query string, percent-decoded (`+` is a space, as in forms).
fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `127.0.0.1 - - [06/Dec/2026:15:35:29 +0000] "PUT /v2/a/b/manifests/t HTTP/1.1" 201 0 "" "skopeo/1.9.3"`
fn parse_access_line(line: &str) -> Option<Request> {
    let rest = &line[line.find("] \"")? + 3..];
    let (request, rest) = rest.split_once("\" ")?;
    let mut words = request.split(' ');
    let method = words.next()?;
    let uri = words.next()?;
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = rest.split(' ').next()?.parse().ok()?;
    Some(Request {
        method: method.to_string(),
        uri: uri.to_string(),
        status,
    })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn access_lines_parse() {
    let put = parse_access_line(
        "127.0.0.1 - - [06/Dec/2026:15:35:29 +0000] \"PUT /v2/test/img/blobs/uploads/d914?_state=x&digest=sha256%3Ab0 HTTP/1.1\" 201 0 \"\" \"skopeo/1.9.3\"",
    )
    .unwrap();
    assert!(put.is_blob_put() && !put.is_manifest_put() && !put.is_blob_mount());
    assert_eq!(put.path(), "/v2/test/img/blobs/uploads/d914");
    let manifest = parse_access_line(
        "127.0.0.1 - - [06/Dec/2026:15:35:29 +0000] \"PUT /v2/a/b/manifests/t HTTP/1.1\" 201 0 \"\" \"skopeo/1.9.3\"",
    )
    .unwrap();
    assert!(manifest.is_manifest_put() && !manifest.is_blob_put());
    let mount = parse_access_line(
        "127.0.0.1 - - [06/Dec/2026:15:35:29 +0000] \"POST /v2/b/blobs/uploads/?from=a&mount=sha256%3Ab0 HTTP/1.1\" 201 0 \"\" \"skopeo/1.9.3\"",
    )
    .unwrap();
    assert!(mount.is_blob_mount() && !mount.is_blob_put());
    // the application log's own lines are not requests
    assert_eq!(
        parse_access_line(
            "time=\"2026-12-06T15:35:23Z\" level=info msg=\"response completed\" http.request.method=GET"
        ),
        None
    );
}

#[test]
#[cfg_attr(
    any(no_registry, no_skopeo, no_umoci, no_root),
    ignore = "needs docker-registry, skopeo, umoci and root"
)]
fn registry_takes_the_umoci_image_and_counts_its_uploads() {
    use crate::umoci_image::{blob, build_image, manifest_of, why_skip};
    let test = "registry_takes_the_umoci_image_and_counts_its_uploads";
    if let Some(why) = why_skip() {
        missing(test, &why);
    }
    let w = scratch();
    let img = build_image(w.path());
    let manifest = manifest_of(&img);
    let layers = manifest["layers"].as_array().unwrap().len();
    assert_eq!(layers, 3);

    let registry = Registry::start();
    assert_eq!((registry.blob_puts(), registry.manifest_puts()), (0, 0));
    registry.push_oci_layout(&format!("{}:t", s(&img)), "forge/umoci:t");
    // every layer and the config uploaded once, the manifest stored once
    assert_eq!(
        registry.blob_puts(),
        layers + 1,
        "{:#?}",
        registry.requests()
    );
    assert_eq!(registry.manifest_puts(), 1);
    assert_eq!(registry.blob_mounts(), 0);

    // read back: the manifest byte for byte (as JSON), the layers skopeo lists
    assert_eq!(registry.inspect_raw("forge/umoci:t"), manifest);
    let seen = registry.inspect("forge/umoci:t");
    let digests: Vec<&serde_json::Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    assert_eq!(
        seen["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        digests
    );
    assert_eq!(seen["Architecture"], "amd64");

    // pushed again to the same repository: every blob is found there, nothing is uploaded
    registry.push_oci_layout(&format!("{}:t", s(&img)), "forge/umoci:again");
    assert_eq!(registry.blob_puts(), layers + 1);
    assert_eq!(registry.manifest_puts(), 2);

    // pulled into a layout: the same manifest and blobs
    let pulled = w.path().join("pulled");
    registry.pull_to_oci("forge/umoci:t", &format!("{}:t", s(&pulled)));
    assert_eq!(manifest_of(&pulled), manifest);
    for d in digests {
        let d = d.as_str().unwrap();
        assert_eq!(
            fs::read(blob(&pulled, d)).unwrap(),
            fs::read(blob(&img, d)).unwrap(),
            "layer {d}"
        );
    }
    // stored under its own root; and named as `convert --source` takes it
    let repo = registry
        .storage()
        .join("docker/registry/v2/repositories/forge/umoci");
    assert!(repo.is_dir(), "{}", repo.display());
    let out = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}", registry.reference("forge/umoci:again")),
    ]);
    assert_ok(&out);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        manifest
    );
    // and by digest
    let digest = registry.inspect("forge/umoci:t")["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        registry.inspect_raw(&format!("forge/umoci@{digest}")),
        manifest
    );
}

#[test]
#[cfg_attr(any(no_registry, no_skopeo), ignore = "needs docker-registry, skopeo")]
fn registry_with_auth_wants_the_right_credentials() {
    let w = scratch();
    let (layout, _) = small_layout(&w.path().join("img"), "t", 100_000);
    let registry = Registry::start_with_auth("forge", "s3cret pass");
    assert_eq!(registry.creds(), Some(("forge", "s3cret pass")));
    let unauthorized = |out: &Output, what: &str| {
        assert!(!out.status.success(), "{what} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unauthorized"), "{what}: {err}");
    };
    let wrong = Client::new(&registry.addr(), Some(("forge", "wrong")));
    let anonymous = Client::new(&registry.addr(), None);
    unauthorized(&wrong.push(&layout, "secret/img:t"), "push, wrong password");
    unauthorized(
        &anonymous.push(&layout, "secret/img:t"),
        "push, no credentials",
    );
    assert_eq!((registry.blob_puts(), registry.manifest_puts()), (0, 0));

    registry.push_oci_layout(&layout, "secret/img:t");
    assert_eq!((registry.blob_puts(), registry.manifest_puts()), (2, 1));
    unauthorized(
        &wrong.inspect("secret/img:t", true),
        "inspect, wrong password",
    );
    unauthorized(
        &anonymous.inspect("secret/img:t", true),
        "inspect, no credentials",
    );
    let manifest = registry.inspect_raw("secret/img:t");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    // every refusal is in the access log
    let refused = registry
        .requests()
        .iter()
        .filter(|r| r.status == 401)
        .count();
    assert!(refused >= 4, "{:#?}", registry.requests());
}

#[test]
fn token_query_scopes_parse() {
    // as Go's url.Values and reqwest's serde_urlencoded encode them
    let q =
        "account=forge&scope=repository%3Aa%2Fb%3Apull%2Cpush&scope=repository:c:pull&service=x+y";
    assert_eq!(
        query_values(q, "scope"),
        ["repository:a/b:pull,push", "repository:c:pull"]
    );
    assert_eq!(query_values(q, "service"), ["x y"]);
    assert!(query_values("service=x", "scope").is_empty());
    assert_eq!(percent_decode("%zz%4"), "%zz%4");
}

#[test]
#[cfg_attr(any(no_registry, no_skopeo), ignore = "needs docker-registry, skopeo")]
fn registry_with_token_wants_a_bearer_token() {
    let w = scratch();
    let (layout, _) = small_layout(&w.path().join("img"), "t", 100_000);
    let registry = Registry::start_with_token("forge", "s3cret pass");
    assert_eq!(registry.creds(), Some(("forge", "s3cret pass")));
    // the challenge names the token server, not a basic realm
    let challenge = bearer_challenge(&registry.addr());
    assert!(
        challenge.starts_with("Bearer realm=\"http://127.0.0.1:")
            && challenge.contains(&format!("service=\"{TOKEN_SERVICE}\"")),
        "{challenge}"
    );
    let wrong = Client::new(&registry.addr(), Some(("forge", "wrong")));
    let out = wrong.push(&layout, "secret/img:t");
    assert!(
        !out.status.success(),
        "push with a wrong password succeeded"
    );
    assert_eq!(
        registry.tokens_issued(),
        0,
        "{:#?}",
        registry.token_requests()
    );
    assert!(
        registry.token_requests().iter().any(|r| r.status == 401),
        "{:#?}",
        registry.token_requests()
    );
    assert_eq!((registry.blob_puts(), registry.manifest_puts()), (0, 0));

    // the right password: tokens issued for the repository, and the registry took them
    registry.push_oci_layout(&layout, "secret/img:t");
    assert_eq!((registry.blob_puts(), registry.manifest_puts()), (2, 1));
    let requests = registry.token_requests();
    assert!(
        requests.iter().any(|r| r.issued()
            && r.scopes
                .iter()
                .any(|s| s == "repository:secret/img:pull,push")),
        "{requests:#?}"
    );
    let manifest = registry.inspect_raw("secret/img:t");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    // the registry verified the tokens: it names their subject in its log
    assert!(
        registry.log().contains("auth.user.name=forge"),
        "{}",
        tail(&registry.log(), 20)
    );
}

/// The `WWW-Authenticate` header of an anonymous `GET /v2/` (HTTP/1.0).
fn bearer_challenge(addr: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(c, "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    answer
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("www-authenticate")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no challenge in:\n{answer}"))
}

#[test]
#[cfg_attr(any(no_registry, no_skopeo), ignore = "needs docker-registry, skopeo")]
fn convert_over_tls_with_insecure_flags() {
    let w = scratch();
    let (layout, _) = small_layout(&w.path().join("img"), "t", 64 << 10);
    let registry = Registry::start_tls();
    let addr = registry.addr();
    // HTTPS only: a plain HTTP request gets no answer of a registry (a 400, or a reset)
    let plain = http_status(&addr, "/v2/");
    assert!(!matches!(plain, Some(200 | 401)), "{plain:?}");
    registry.push_oci_layout(&layout, "img:t");
    let work = w.path().join("work");
    let (source, target) = (registry.reference("img:t"), registry.reference("img:nydus"));
    let args = |extra: &[&'static str]| {
        let mut a = vec!["convert", "--source", &source, "--target", &target];
        a.extend_from_slice(extra);
        a.extend(["--push-retry-count", "0", "--work-dir", s(&work)]);
        a
    };

    // the certificate is checked by default, and nothing trusts it: one error line naming the
    // registry, nothing pushed
    let err = forge_fails(&args(&[]));
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(&addr), "{err}");
    assert!(
        errors[0].to_lowercase().contains("certificate"),
        "the error says why: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let out = registry.client().inspect("img:nydus", true);
    assert!(!out.status.success(), "the tag must not exist");
    assert_eq!((registry.blob_puts(), registry.manifest_puts()), (2, 1));

    // both insecure flags (no --plain-http): converted over HTTPS, and skopeo reads it
    let out = forge(&args(&["--source-insecure", "--target-insecure"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&target), "{stdout}");
    let seen = registry.inspect("img:nydus");
    assert_eq!(seen["Architecture"], "amd64");
    let manifest = registry.inspect_raw("img:nydus");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(
        layers.last().unwrap()["annotations"]["containerd.io/snapshot/nydus-bootstrap"],
        "true",
        "{manifest}"
    );
    assert!(registry.blob_puts() > 2, "{:#?}", registry.requests());
}
