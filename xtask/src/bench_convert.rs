//! `cargo xtask bench-convert [--runs N] [--layout OCI_DIR:TAG]`: registry-to-registry
//! conversion against real local registries (Debian's `docker-registry`), the median of N runs
//! (default 3) of
//!
//! - `skopeo copy` of the source image, the floor (the bytes moved);
//! - `erofs-forge convert --plain-http`;
//! - the scripted way: `skopeo copy` to an OCI layout, `erofs-forge create -t oci`, `skopeo
//!   copy` of the result to the target.
//!
//! The source image lives in registry A; every measured command writes to a fresh repository
//! of a registry B started for that command alone, so neither a blob already in B nor skopeo's
//! blob-info cache can turn an upload into a cross-repository mount. The default source is a
//! one-layer gzip OCI image of `target/xtask-trees/debian.tar` (made from the tree of `cargo
//! xtask debian target/xtask-trees/debian`), kept in `target/xtask-trees/debian-oci`.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// How long a registry may take to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub fn bench_convert(args: &[String]) -> Result<()> {
    let mut runs = 3usize;
    let mut layout: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().context("--runs N")?.parse()?,
            "--layout" => layout = Some(it.next().context("--layout OCI_DIR:TAG")?.clone()),
            other => bail!("bench-convert: unknown argument {other:?}"),
        }
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let layout_given = layout.is_some();
    let layout = match layout {
        Some(l) => l,
        None => format!("{}:src", debian_layout()?.display()),
    };
    let bin = crate::release_binary()?;
    let work = crate::work_dir("bench-convert")?;
    let a = Registry::start(&work.join("registry-a"))?;
    crate::run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        &format!("oci:{layout}"),
        &format!("docker://{}/debian:src", a.addr),
    ]))?;
    let src_ref = format!("{}/debian:src", a.addr);
    let (src_size, src_layers) = image_size(&src_ref)?;

    let mut copy = Vec::new();
    let mut conv = Vec::new();
    let mut script = Vec::new();
    let (mut conv_size, mut script_size) = (0, 0);
    let (mut conv_layers, mut script_layers) = (Vec::new(), Vec::new());
    // the three ways take turns, so that each meets the machine in the same state
    for n in 1..=runs {
        eprintln!("run {n}/{runs}");
        copy.push(measure_copy(&work, &src_ref, n)?);
        let (m, size, layers) = measure_convert(&work, &bin, &src_ref, n)?;
        conv.push(m);
        (conv_size, conv_layers) = (size, layers);
        let (steps, size, layers) = measure_script(&work, &bin, &src_ref, n)?;
        script.push(steps);
        (script_size, script_layers) = (size, layers);
    }
    drop(a);
    let tar_size = if layout_given {
        None
    } else {
        Some(fs::metadata(crate::root().join("target/xtask-trees/debian.tar"))?.len())
    };

    let med = |v: &[f64]| crate::median(v.to_vec());
    let copy_wall = med(&copy.iter().map(|m| m.wall).collect::<Vec<_>>());
    let conv_wall = med(&conv.iter().map(|m| m.wall).collect::<Vec<_>>());
    let step = |i: usize| med(&script.iter().map(|s| s[i].wall).collect::<Vec<_>>());
    let script_wall = med(&script
        .iter()
        .map(|s| s.iter().map(|m| m.wall).sum())
        .collect::<Vec<_>>());
    let rss = |ms: &mut dyn Iterator<Item = &crate::Measured>| {
        ms.map(|m| m.max_rss_kib).max().unwrap_or(0) as f64 / 1024.0
    };
    let cpu = |ms: &[&crate::Measured]| med(&ms.iter().map(|m| m.cpu).collect::<Vec<_>>());
    let mib = |b: u64| b as f64 / 1048576.0;

    println!(
        "source: {}, {} layer(s), {:.1} MiB in the registry; median of {runs} run(s); every target a fresh registry",
        match tar_size {
            None => format!("oci:{layout}"),
            Some(t) => format!(
                "Debian bookworm minbase (tar {:.1} MiB, gzip -6)",
                mib(t)
            ),
        },
        src_layers.len(),
        mib(src_size)
    );
    println!();
    println!("| path | wall s | CPU s | peak RSS MiB | image MiB (layers) | wall / skopeo copy |");
    println!("|---|---:|---:|---:|---:|---:|");
    let line = |name: &str, wall: f64, cpu: f64, rss: f64, size: String| {
        println!(
            "| {name} | {wall:.2} | {cpu:.2} | {rss:.0} | {size} | {:.2} |",
            wall / copy_wall
        );
    };
    let sized = |b: u64, l: &[String]| format!("{:.1} ({})", mib(b), l.len());
    line(
        "(a) skopeo copy A→B",
        copy_wall,
        cpu(&copy.iter().collect::<Vec<_>>()),
        rss(&mut copy.iter()),
        sized(src_size, &src_layers),
    );
    line(
        "(b) erofs-forge convert",
        conv_wall,
        cpu(&conv.iter().collect::<Vec<_>>()),
        rss(&mut conv.iter()),
        sized(conv_size, &conv_layers),
    );
    line(
        "(c) script, total",
        script_wall,
        med(&script
            .iter()
            .map(|s| s.iter().map(|m| m.cpu).sum())
            .collect::<Vec<_>>()),
        rss(&mut script.iter().flatten()),
        sized(script_size, &script_layers),
    );
    for (i, name) in [
        "(c) 1 skopeo copy A→oci:",
        "(c) 2 erofs-forge create -t oci",
        "(c) 3 skopeo copy oci:→B",
    ]
    .iter()
    .enumerate()
    {
        line(
            name,
            step(i),
            cpu(&script.iter().map(|s| &s[i]).collect::<Vec<_>>()),
            rss(&mut script.iter().map(|s| &s[i])),
            String::new(),
        );
    }
    println!();
    println!(
        "convert / skopeo copy: {:.2}×; script / skopeo copy: {:.2}×; convert / script: {:.2}×",
        conv_wall / copy_wall,
        script_wall / copy_wall,
        conv_wall / script_wall
    );
    println!(
        "convert and the script push {} layers",
        if conv_layers == script_layers {
            "the same"
        } else {
            "DIFFERENT"
        }
    );
    Ok(())
}

/// (a) `skopeo copy docker://A/debian:src docker://B/copy-N:t`.
fn measure_copy(work: &Path, src_ref: &str, n: usize) -> Result<crate::Measured> {
    let b = Registry::start(&work.join(format!("registry-b-copy-{n}")))?;
    let m = crate::measure(&strings(&[
        "skopeo",
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-no-creds",
        "--dest-no-creds",
        &format!("docker://{src_ref}"),
        &format!("docker://{}/copy-{n}:t", b.addr),
    ]))?;
    Ok(m)
}

/// (b) `erofs-forge convert --plain-http`; with the size and layer count of what it pushed.
fn measure_convert(
    work: &Path,
    bin: &Path,
    src_ref: &str,
    n: usize,
) -> Result<(crate::Measured, u64, Vec<String>)> {
    let b = Registry::start(&work.join(format!("registry-b-conv-{n}")))?;
    let w = work.join(format!("conv-{n}"));
    let target = format!("{}/conv-{n}:t", b.addr);
    crate::run(&mut Command::new("sync"))?;
    let m = crate::measure(&strings(&[
        &bin.display().to_string(),
        "convert",
        "--source",
        src_ref,
        "--target",
        &target,
        "--plain-http",
        "--work-dir",
        &w.display().to_string(),
    ]))?;
    let (size, layers) = image_size(&target)?;
    let _ = fs::remove_dir_all(&w);
    Ok((m, size, layers))
}

/// (c) pull to a layout, `create -t oci`, push the result: one measurement per step.
fn measure_script(
    work: &Path,
    bin: &Path,
    src_ref: &str,
    n: usize,
) -> Result<(Vec<crate::Measured>, u64, Vec<String>)> {
    let b = Registry::start(&work.join(format!("registry-b-script-{n}")))?;
    let w = work.join(format!("script-{n}"));
    fs::create_dir_all(&w)?;
    let (src, out) = (w.join("src"), w.join("out"));
    crate::run(&mut Command::new("sync"))?;
    let pull = crate::measure(&strings(&[
        "skopeo",
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--src-no-creds",
        &format!("docker://{src_ref}"),
        &format!("oci:{}:t", src.display()),
    ]))?;
    let create = crate::measure(&strings(&[
        &bin.display().to_string(),
        "create",
        "-t",
        "oci",
        "-D",
        &out.display().to_string(),
        &format!("{}:t", src.display()),
    ]))?;
    // create -t oci names its output as the source entry was named
    let index: serde_json::Value = serde_json::from_slice(&fs::read(out.join("index.json"))?)?;
    let tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .context("create -t oci: no ref.name in the output index.json")?
        .to_string();
    let target = format!("{}/script-{n}:t", b.addr);
    let push = crate::measure(&strings(&[
        "skopeo",
        "--insecure-policy",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        &format!("oci:{}:{tag}", out.display()),
        &format!("docker://{target}"),
    ]))?;
    let (size, layers) = image_size(&target)?;
    let _ = fs::remove_dir_all(&w);
    Ok((vec![pull, create, push], size, layers))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The bytes of an image in a registry (config and layers as its manifest lists them, the
/// first manifest of an index) and its layer digests.
fn image_size(reference: &str) -> Result<(u64, Vec<String>)> {
    let raw = |r: &str| -> Result<serde_json::Value> {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", "--no-creds"])
            .arg(format!("docker://{r}"))
            .output()?;
        if !out.status.success() {
            bail!(
                "skopeo inspect {r}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let mut m = raw(reference)?;
    if let Some(first) = m["manifests"].get(0) {
        let digest = first["digest"].as_str().context("index entry digest")?;
        let repo = reference.rsplit_once(':').map_or(reference, |(r, _)| r);
        m = raw(&format!("{repo}@{digest}"))?;
    }
    let layers = m["layers"].as_array().context("manifest layers")?;
    let size = layers
        .iter()
        .chain([&m["config"]])
        .map(|d| d["size"].as_u64().unwrap_or(0))
        .sum();
    let digests = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap_or_default().to_string())
        .collect();
    Ok((size, digests))
}

/// The one-layer gzip OCI layout of `target/xtask-trees/debian.tar` (tag `src`), made once.
fn debian_layout() -> Result<PathBuf> {
    let trees = crate::root().join("target/xtask-trees");
    let tar = trees.join("debian.tar");
    let dir = trees.join("debian-oci");
    if !tar.exists() {
        let tree = trees.join("debian");
        if !tree.exists() {
            bail!("no target/xtask-trees/debian: run `cargo xtask debian target/xtask-trees/debian` (or pass --layout OCI_DIR:TAG)");
        }
        // as bench-mkfs makes it
        crate::run(
            Command::new("tar")
                .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
                .arg(&tree)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        )?;
    }
    let index = dir.join("index.json");
    if index.exists() && fs::metadata(&index)?.modified()? >= fs::metadata(&tar)?.modified()? {
        return Ok(dir);
    }
    eprintln!("making the OCI layout {}", dir.display());
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let diff_id = sha256_file(&tar)?;
    let gz = blobs.join("layer.tmp");
    let status = Command::new("gzip")
        .args(["-c", "-n"])
        .arg(&tar)
        .stdout(fs::File::create(&gz)?)
        .status()?;
    if !status.success() {
        bail!("gzip {}: {status}", tar.display());
    }
    let layer_digest = sha256_file(&gz)?;
    let layer_size = fs::metadata(&gz)?.len();
    fs::rename(&gz, blobs.join(&layer_digest))?;
    let put = |bytes: Vec<u8>| -> Result<(String, usize)> {
        let digest = hex::encode(Sha256::digest(&bytes));
        fs::write(blobs.join(&digest), &bytes)?;
        Ok((digest, bytes.len()))
    };
    let (config_digest, config_size) = put(serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        "config": {},
    }))?)?;
    let (manifest_digest, manifest_size) = put(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_size,
        }],
    }))?)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    // index.json last: its presence says the layout is complete
    fs::write(
        &index,
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "src"},
            }],
        }))?,
    )?;
    Ok(dir)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A `docker-registry serve` child on 127.0.0.1:PORT storing into `dir` (logging errors only,
/// into `dir/registry.log`); killed, and its directory removed, on drop.
struct Registry {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Result<Registry> {
        let mut last = String::new();
        // another process may take the free port before the registry binds it
        for _ in 0..3 {
            match Registry::launch(dir)? {
                Ok(r) => return Ok(r),
                Err(log) => last = log,
            }
        }
        bail!("docker-registry did not start:\n{last}")
    }

    fn launch(dir: &Path) -> Result<std::result::Result<Registry, String>> {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        let storage = dir.join("storage");
        fs::create_dir_all(&storage)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n  secret: erofs-forge-bench\n",
                storage.display()
            ),
        )?;
        let log_path = dir.join("registry.log");
        let log = fs::File::create(&log_path)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn docker-registry (Debian package docker-registry)")?;
        let mut r = Registry {
            child,
            addr,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = r.child.try_wait()? {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                return Ok(Err(format!("exited ({status}): {log}")));
            }
            if http_status(&r.addr, "/v2/") == Some(200) {
                return Ok(Ok(r));
            }
            if Instant::now() > deadline {
                bail!("docker-registry on {} did not answer GET /v2/", r.addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The status code of `GET path` (HTTP/1.0), or None when nothing answers.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let sa = addr.parse().ok()?;
    let mut c = TcpStream::connect_timeout(&sa, Duration::from_secs(1)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
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
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
