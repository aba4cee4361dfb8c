//! Developer tasks: `cargo xtask <task>`.
//!
//! - `full-tree DIR [--big]`   build the every-entry-kind tree (root)
//! - `debian DIR`              debootstrap a Debian bookworm minbase tree (root, network)
//! - `kernel-check [DIR...]`   build images of each tree with each compressor and mount them
//! - `bench [DIR...]`          time `create` at 1 and 2 threads (median of 5) next to the stage
//!   bound; MB/s, files/s, peak RSS, speed-up, identical output; default corpora: the sample and
//!   whichever of target/xtask-trees/{debian,small,dedup,linux} exist
//! - `linux DIR`               unpack the Linux 6.1 source (Debian's linux-source-6.1)
//! - `corpus small|dedup DIR`  generate a many-small-files or a dedup-heavy corpus
//! - `roundtrip [DIR...]`      create (v5, v6 × compressors × digesters) → check → unpack → diff
//! - `fuzz [--seconds N] [TARGET...]`  run each cargo-fuzz target (fuzz/) for N seconds, one at a
//!   time, seeded from fuzz/seeds; prints executions per target (skips when cargo-fuzz or the
//!   nightly features it needs are not available, or fails with `--no-skip`)
//! - `campaign [--runs N] [--jobs J] [TARGET...]`  the long fuzz campaign: every target (or
//!   those named) to N executions (default 10 000 000), J libFuzzer processes at once (default:
//!   the cores), without a sanitizer, on a corpus kept in target/fuzz-campaign/
//! - `bench-mkfs [--runs N] [TAR...]`  containerd's mkfs.erofs calls, erofs-forge against
//!   erofs-utils 1.9, tar on a pipe: wall, CPU, peak RSS, image size (target/bench-mkfs.json)
//! - `bench-convert [--runs N] [--layout OCI_DIR:TAG]`  registry to registry on local
//!   `docker-registry`s: `skopeo copy` (the floor), `erofs-forge convert`, and skopeo + `create
//!   -t oci` + skopeo; wall, CPU, peak RSS, image sizes (default source: the Debian tree's tar)
//! - `readers --upstream DIR` upstream's nydusd and `nydus-image check` on one image per
//!   command and mode (tests/readers/); fails, never skips, without DIR's binaries
//! - `layers`                  check src/'s imports against the layer table (no upward edge, no cycle)
//! - `citations`               check that every `formats/*.md §N` cited in the code resolves
//! - `test [--fuzz-seconds N]`  the README's test command: install what the tests need (Debian
//!   packages as root, cargo-fuzz), fuzz each target N s (default 20), `cargo test`; fails when
//!   any test failed or was ignored

mod bench_convert;
mod bench_mkfs;
mod citations;
mod fuzz;
mod layers;
mod readers;
mod test;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn release_binary() -> Result<PathBuf> {
    run(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--release",
        "--quiet",
        "--bin",
        "erofs-forge",
    ]))?;
    Ok(root().join("target/release/erofs-forge"))
}

fn work_dir(name: &str) -> Result<PathBuf> {
    let d = root().join("target/xtask").join(name);
    if d.exists() {
        std::fs::remove_dir_all(&d)?;
    }
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn default_trees() -> Result<Vec<PathBuf>> {
    let mut trees = vec![root().join("fixtures/sample")];
    let full = root().join("target/xtask-trees/full");
    if !full.exists() {
        full_tree(&full, false)?;
    }
    trees.push(full);
    let debian = root().join("target/xtask-trees/debian");
    if debian.exists() {
        trees.push(debian);
    } else {
        eprintln!(
            "note: no Debian tree; run `cargo xtask debian target/xtask-trees/debian` to add one"
        );
    }
    Ok(trees)
}

/// The bench corpora present under target/xtask-trees, in order of size; says how to make
/// the missing ones.
fn bench_trees() -> Result<Vec<PathBuf>> {
    let mut trees = vec![root().join("fixtures/sample")];
    let made = root().join("target/xtask-trees");
    for (name, how) in [
        ("debian", "cargo xtask debian target/xtask-trees/debian"),
        ("small", "cargo xtask corpus small target/xtask-trees/small"),
        ("dedup", "cargo xtask corpus dedup target/xtask-trees/dedup"),
        ("linux", "cargo xtask linux target/xtask-trees/linux"),
    ] {
        let tree = made.join(name);
        if tree.exists() {
            trees.push(tree);
        } else {
            eprintln!("note: no {name} corpus; `{how}` adds it");
        }
    }
    Ok(trees)
}

/// Unpacks the Linux 6.1 source that Debian's linux-source-6.1 package ships (installing the
/// package when it is missing; root).
fn linux_tree(dir: &Path) -> Result<()> {
    let archive = Path::new("/usr/src/linux-source-6.1.tar.xz");
    if !archive.exists() {
        run(Command::new("apt-get").args(["install", "-y", "linux-source-6.1"]))?;
    }
    std::fs::create_dir_all(dir)?;
    run(Command::new("tar")
        .args(["-xJf"])
        .arg(archive)
        .arg("-C")
        .arg(dir)
        .arg("--strip-components=1"))
}

fn full_tree(dir: &Path, big: bool) -> Result<()> {
    let mut c = Command::new("bash");
    c.arg(root().join("fixtures/make-full-tree.sh")).arg(dir);
    if big {
        c.arg("--big");
    }
    run(&mut c)
}

fn mount_check(bootstrap: &Path, device: &Path, source: &Path) -> Result<()> {
    let tool = root().join("../shared/tools/erofs-mount-check");
    if !tool.exists() {
        bail!(
            "{} not found: run the kernel checks through `cargo test` instead",
            tool.display()
        );
    }
    run(Command::new(tool)
        .arg(bootstrap)
        .arg("--device")
        .arg(device)
        .arg("--expect")
        .arg(source))
}

fn kernel_check(trees: Vec<PathBuf>) -> Result<()> {
    let bin = release_binary()?;
    for tree in trees {
        for compressor in ["none", "lz4_block", "zstd"] {
            let out = work_dir("kernel-check")?;
            let cache = out.join("cache");
            std::fs::create_dir(&cache)?;
            let boot = out.join("bootstrap");
            run(Command::new(&bin)
                .args(["create", "--compressor", compressor, "-D"])
                .arg(&out)
                .arg("--blob-cache-dir")
                .arg(&cache)
                .arg("-B")
                .arg(&boot)
                .arg(&tree))?;
            let data = std::fs::read_dir(&cache)?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<Vec<_>>>()?
                .into_iter()
                .find(|p| p.to_string_lossy().ends_with(".blob.data"));
            let Some(data) = data else {
                bail!("no .blob.data for {}", tree.display())
            };
            println!("== {} with {compressor}", tree.display());
            mount_check(&boot, &data, &tree)?;
        }
        let out = work_dir("kernel-check-inline")?;
        let cache = out.join("cache");
        std::fs::create_dir(&cache)?;
        run(Command::new(&bin)
            .args(["create", "--blob-inline-meta", "-D"])
            .arg(&out)
            .arg("--blob-cache-dir")
            .arg(&cache)
            .arg(&tree))?;
        let blob = std::fs::read_dir(&out)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.is_file());
        let Some(blob) = blob else {
            bail!("no blob written")
        };
        let boot = out.join("extracted.boot");
        run(Command::new(&bin)
            .arg("extract-bootstrap")
            .arg(&blob)
            .arg("-o")
            .arg(&boot))?;
        let data = cache.join(format!(
            "{}.blob.data",
            blob.file_name().unwrap().to_string_lossy()
        ));
        println!("== {} with --blob-inline-meta", tree.display());
        mount_check(&boot, &data, &tree)?;
        blob_feature_check(&bin, &tree)?;
    }
    Ok(())
}

/// `--batch-size` and `--encrypt` builds of `tree`: `check`, `unpack` compared with the tree,
/// and the kernel mount of `export --block` compared with the tree.
fn blob_feature_check(bin: &Path, tree: &Path) -> Result<()> {
    let cases: [&[&str]; 3] = [
        &["--batch-size", "0x10000"],
        &["--encrypt"],
        &["--encrypt", "--batch-size", "0x10000"],
    ];
    for flags in cases {
        let out = work_dir("kernel-check-features")?;
        let boot = out.join("bootstrap");
        run(Command::new(bin)
            .arg("create")
            .args(flags)
            .arg("-D")
            .arg(&out)
            .arg("-B")
            .arg(&boot)
            .arg(tree))?;
        run(Command::new(bin)
            .arg("check")
            .arg(&boot)
            .arg("-D")
            .arg(&out))?;
        let unpacked = out.join("tree");
        run(Command::new(bin)
            .arg("unpack")
            .arg(&boot)
            .arg("-D")
            .arg(&out)
            .arg("--output-dir")
            .arg(&unpacked))?;
        println!("== {} {}: unpack", tree.display(), flags.join(" "));
        run(Command::new("python3")
            .arg(root().join("tests/tools/manifest.py"))
            .arg("diff")
            .arg(tree)
            .arg(&unpacked)
            .arg("--mtime"))?;
        std::fs::remove_dir_all(&unpacked)?;
        let disk = out.join("disk");
        run(Command::new(bin)
            .args(["export", "--block", "-B"])
            .arg(&boot)
            .arg("-D")
            .arg(&out)
            .arg("-O")
            .arg(&disk))?;
        println!("== {} {}: export --block", tree.display(), flags.join(" "));
        run(
            Command::new(root().join("../shared/tools/erofs-mount-check"))
                .arg(&disk)
                .arg("--expect")
                .arg(tree),
        )?;
    }
    Ok(())
}

pub(crate) struct Measured {
    pub(crate) wall: f64,
    pub(crate) cpu: f64,
    pub(crate) max_rss_kib: i64,
}

/// Runs of each build and of its stage bound; the medians count.
const RUNS: usize = 5;

/// The stage bound of `tree`, once: the seconds `erofs-forge bench-bound` reports for reading,
/// digesting and compressing its file data alone (the walk before it is not counted).
fn stage_bound(bin: &Path, tree: &Path, compressor: &str, threads: &str) -> Result<f64> {
    warm(tree);
    let out = Command::new(bin)
        .arg("bench-bound")
        .arg(tree)
        .args(["--compressor", compressor, "--threads", threads])
        .output()?;
    if !out.status.success() {
        bail!(
            "bench-bound failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["seconds"].as_f64().context("bench-bound output")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `cmd` in a child of a fresh `xtask measure` process so that RUSAGE_CHILDREN covers
/// exactly that one command.
fn measure(cmd: &[String]) -> Result<Measured> {
    let me = std::env::current_exe()?;
    let out = Command::new(me).arg("measure").args(cmd).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(Measured {
        wall: v["wall"].as_f64().unwrap_or(0.0),
        cpu: v["cpu"].as_f64().unwrap_or(0.0),
        max_rss_kib: v["max_rss_kib"].as_i64().unwrap_or(0),
    })
}

fn measure_child(cmd: &[String]) -> Result<()> {
    use nix::sys::resource::{getrusage, UsageWho};
    let t = Instant::now();
    let out = Command::new(&cmd[0]).args(&cmd[1..]).output()?;
    let wall = t.elapsed().as_secs_f64();
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("command failed");
    }
    let u = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let secs = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    println!(
        "{}",
        serde_json::json!({"wall": wall, "cpu": secs(u.user_time()) + secs(u.system_time()), "max_rss_kib": u.max_rss()})
    );
    Ok(())
}

fn data_bytes(tree: &Path) -> u64 {
    fn walk(p: &Path, n: &mut (u64, u64)) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if let Ok(m) = e.path().symlink_metadata() {
                    if m.is_dir() {
                        walk(&e.path(), n);
                    } else if m.is_file() {
                        n.0 += m.len();
                    }
                    n.1 += 1;
                }
            }
        }
    }
    let mut n = (0, 0);
    walk(tree, &mut n);
    n.0
}

fn digest_outputs(dir: &Path) -> Result<String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for n in names {
        h.update(n.file_name().unwrap().to_string_lossy().as_bytes());
        h.update(std::fs::read(&n)?);
    }
    Ok(hex::encode(h.finalize()))
}

/// Reads every file under `path` (or `path` itself), so that a run starts with the source in
/// the page cache: on a VM whose cache is small, the previous run's output evicts it.
fn warm(path: &Path) {
    fn walk(p: &Path, buf: &mut [u8]) {
        use std::io::Read;
        let Ok(meta) = p.symlink_metadata() else {
            return;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    walk(&e.path(), buf);
                }
            }
        } else if meta.is_file() {
            if let Ok(mut f) = std::fs::File::open(p) {
                while matches!(f.read(buf), Ok(n) if n > 0) {}
            }
        }
    }
    walk(path, &mut vec![0u8; 1 << 20]);
}

/// The peak memory the README promises for `create` at the default chunk size: a fixed base,
/// a compression context per thread, the batch pool (`4 × threads + 4` batches of at most
/// 1 MiB raw plus as much compressed) and the metadata of each entry (about 420 bytes measured,
/// plus its name, and for a directory source the path it is read from). It does not grow with
/// the file data.
fn rss_bound_kib(threads: u64, entries: u64) -> u64 {
    const BASE_KIB: u64 = 24 * 1024;
    const PER_THREAD_KIB: u64 = 4 * 1024;
    const PER_ENTRY_BYTES: u64 = 1024;
    BASE_KIB
        + threads * PER_THREAD_KIB
        + (4 * threads + 4) * 2 * 1024
        + entries * PER_ENTRY_BYTES / 1024
}

fn count_files(tree: &Path) -> u64 {
    fn walk(p: &Path, n: &mut u64) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                *n += 1;
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), n);
                }
            }
        }
    }
    let mut n = 0;
    walk(tree, &mut n);
    n
}

/// Times `create` from each tree and from a tar of it, for each compressor at 1 and 2 threads,
/// next to the stage bound (read + digest + compress of the same bytes, `bench-bound`) measured
/// in the same run; checks that 1 and 2 threads give identical output.
fn bench(trees: Vec<PathBuf>) -> Result<()> {
    let bin = release_binary()?;
    let mut rows = Vec::new();
    println!(
        "{:<14} {:<4} {:<9} {:>3} {:>7} {:>7} {:>8} {:>9} {:>7} {:>7} {:>7} {:>6} {:>5} {:>5}",
        "tree",
        "src",
        "compress",
        "thr",
        "wall s",
        "cpu s",
        "MB/s",
        "files/s",
        "RSS MiB",
        "max MiB",
        "bound s",
        "ratio",
        "x1",
        "same"
    );
    for tree in trees {
        let bytes = data_bytes(&tree);
        let entries = count_files(&tree);
        let name = tree.file_name().unwrap().to_string_lossy().to_string();
        let tars = root().join("target/xtask/tars");
        std::fs::create_dir_all(&tars)?;
        let tar = tars.join(format!("{name}.tar"));
        if !tar.exists() {
            run(Command::new("tar")
                .args(["--xattrs", "--numeric-owner", "-C"])
                .arg(&tree)
                .arg("-cf")
                .arg(&tar)
                .arg("."))?;
        }
        for (kind, input) in [("dir", &tree), ("tar", &tar)] {
            for compressor in ["zstd", "lz4_block", "none"] {
                let mut first: Option<(String, f64)> = None;
                for threads in ["1", "2"] {
                    let args = |out: &Path| -> Vec<String> {
                        let mut a = vec![bin.display().to_string(), "create".into()];
                        if kind == "tar" {
                            a.extend(["-t".into(), "tar-rafs".into()]);
                        }
                        a.extend([
                            "--compressor".into(),
                            compressor.into(),
                            "--threads".into(),
                            threads.into(),
                            "-D".into(),
                            out.display().to_string(),
                            "-B".into(),
                            out.join("bootstrap").display().to_string(),
                            input.display().to_string(),
                        ]);
                        a
                    };
                    // once unmeasured, to warm up
                    measure(&args(&work_dir("bench")?))?;
                    // build and bound take turns, so both meet the machine in the same state;
                    // each side reports its median run
                    let mut samples: Vec<Measured> = Vec::new();
                    let mut bounds = Vec::new();
                    let mut out = PathBuf::new();
                    for _ in 0..RUNS {
                        out = work_dir("bench")?;
                        // start each run with no dirty pages (a previous run's writeback would
                        // throttle this one's writes) and the source in the page cache
                        run(&mut Command::new("sync"))?;
                        warm(input);
                        samples.push(measure(&args(&out))?);
                        bounds.push(stage_bound(&bin, &tree, compressor, threads)?);
                    }
                    // memory is not noise: the largest peak of all runs is reported
                    let max_rss_kib = samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0);
                    samples.sort_by(|a, b| a.wall.total_cmp(&b.wall));
                    let mut m = samples.swap_remove(samples.len() / 2);
                    m.max_rss_kib = max_rss_kib;
                    let bound = median(bounds);
                    let d = digest_outputs(&out)?;
                    let (same, speedup) = match &first {
                        None => {
                            first = Some((d, m.wall));
                            ("-".to_string(), 1.0)
                        }
                        Some((f, w1)) => (
                            (if *f == d { "yes" } else { "NO" }).to_string(),
                            w1 / m.wall,
                        ),
                    };
                    let mbs = bytes as f64 / 1e6 / m.wall;
                    let ratio = bound / m.wall;
                    let rss_bound = rss_bound_kib(threads.parse()?, entries);
                    let within = m.max_rss_kib as u64 <= rss_bound;
                    println!(
                        "{:<14} {:<4} {:<9} {:>3} {:>7.3} {:>7.3} {:>8.1} {:>9.0} {:>7.1} {:>7.1} {:>7.3} {:>6.2} {:>5.2} {:>5}",
                        name,
                        kind,
                        compressor,
                        threads,
                        m.wall,
                        m.cpu,
                        mbs,
                        entries as f64 / m.wall,
                        m.max_rss_kib as f64 / 1024.0,
                        rss_bound as f64 / 1024.0,
                        bound,
                        ratio,
                        speedup,
                        same
                    );
                    rows.push(serde_json::json!({
                        "tree": name, "source": kind, "data_bytes": bytes, "entries": entries,
                        "compressor": compressor, "threads": threads, "wall_s": m.wall, "cpu_s": m.cpu,
                        "mb_per_s": mbs, "files_per_s": entries as f64 / m.wall, "max_rss_kib": m.max_rss_kib,
                        "stage_bound_s": bound, "ratio_to_bound": ratio, "speedup_vs_1_thread": speedup,
                        "identical_to_1_thread": same, "rss_bound_kib": rss_bound,
                        "rss_within_bound": within,
                    }));
                    if !within {
                        bail!(
                            "{name} {kind} {compressor} {threads} threads: peak RSS {} KiB is over the README bound {rss_bound} KiB",
                            m.max_rss_kib
                        );
                    }
                    if same == "NO" {
                        bail!("output at {threads} threads differs from 1 thread");
                    }
                }
            }
        }
    }
    let path = root().join("target/bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
    println!("results: {}", path.display());
    println!("ratio = stage bound time / build time (>= 1: the build is at least as fast as the bound); x1 = speedup over 1 thread;");
    println!("max MiB = the README's peak-memory bound for that many entries (the bench fails above it); median of {RUNS} runs (build and bound taking turns), page cache warm");
    Ok(())
}

/// Generated corpora: `small` (many small files) and `dedup` (copies of one tree with edits).
fn corpus(kind: &str, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    match kind {
        "small" => {
            // an npm-like tree: 60k files of 0-8 KiB text in 3k directories
            for d in 0..3000 {
                let sub = dir.join(format!("pkg{d:04}/lib"));
                std::fs::create_dir_all(&sub)?;
                for f in 0..20 {
                    let len = (rnd() % 8192) as usize;
                    let body: String = (0..len)
                        .map(|i| (b'a' + ((i as u64 * 7 + rnd() % 3) % 26) as u8) as char)
                        .collect();
                    std::fs::write(sub.join(format!("m{f}.js")), body)?;
                }
            }
        }
        "dedup" => {
            let base = root().join("target/xtask-trees/debian/usr/share");
            if !base.exists() {
                bail!("the dedup corpus copies the Debian tree: run `cargo xtask debian target/xtask-trees/debian` first");
            }
            for i in 0..4 {
                let copy = dir.join(format!("copy{i}"));
                run(Command::new("cp").arg("-a").arg(&base).arg(&copy))?;
                std::fs::write(copy.join("edited"), format!("copy {i}"))?;
            }
        }
        other => bail!("unknown corpus {other:?}: small or dedup"),
    }
    Ok(())
}

fn roundtrip(trees: Vec<PathBuf>) -> Result<()> {
    let bin = release_binary()?;
    let manifest = root().join("tests/tools/manifest.py");
    for tree in trees {
        for v in ["5", "6"] {
            for c in ["none", "lz4_block", "zstd"] {
                for d in ["blake3", "sha256"] {
                    let out = work_dir("roundtrip")?;
                    let boot = out.join("bootstrap");
                    let quiet = |c: &mut Command| -> Result<()> {
                        let o = c.output()?;
                        if !o.status.success() {
                            bail!("{c:?}: {}", String::from_utf8_lossy(&o.stderr));
                        }
                        Ok(())
                    };
                    quiet(
                        Command::new(&bin)
                            .args([
                                "create",
                                "--fs-version",
                                v,
                                "--compressor",
                                c,
                                "--digester",
                                d,
                                "-D",
                            ])
                            .arg(&out)
                            .arg("-B")
                            .arg(&boot)
                            .arg(&tree),
                    )?;
                    quiet(
                        Command::new(&bin)
                            .arg("check")
                            .arg(&boot)
                            .arg("-D")
                            .arg(&out),
                    )?;
                    quiet(
                        Command::new(&bin)
                            .arg("unpack")
                            .arg(&boot)
                            .arg("-D")
                            .arg(&out)
                            .arg("--output-dir")
                            .arg(out.join("tree")),
                    )?;
                    print!("{} v{v} {c} {d}: ", tree.display());
                    std::io::Write::flush(&mut std::io::stdout())?;
                    let mut cmd = Command::new("python3");
                    cmd.arg(&manifest)
                        .arg("diff")
                        .arg(&tree)
                        .arg(out.join("tree"))
                        .arg("--mtime")
                        .arg("--quiet");
                    if v == "5" {
                        // v5 keeps only regular files as hardlinks
                        cmd.args(["--ignore", "hardlink"]);
                    }
                    run(&mut cmd)?;
                    println!("equal");
                }
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let paths = |from: usize| -> Vec<PathBuf> { args[from..].iter().map(PathBuf::from).collect() };
    match args.first().map(String::as_str) {
        Some("full-tree") => {
            let dir = args.get(1).context("usage: full-tree DIR [--big]")?;
            full_tree(
                Path::new(dir),
                args.get(2).map(String::as_str) == Some("--big"),
            )
        }
        Some("debian") => {
            let dir = args.get(1).context("usage: debian DIR")?;
            run(Command::new("debootstrap").args([
                "--variant=minbase",
                "bookworm",
                dir,
                "http://deb.debian.org/debian",
            ]))
        }
        Some("kernel-check") => kernel_check(if args.len() > 1 {
            paths(1)
        } else {
            default_trees()?
        }),
        Some("bench") => bench(if args.len() > 1 {
            paths(1)
        } else {
            bench_trees()?
        }),
        Some("linux") => linux_tree(Path::new(args.get(1).context("usage: linux DIR")?)),
        Some("measure") => measure_child(&args[1..]),
        Some("corpus") => {
            let kind = args.get(1).context("usage: corpus small|dedup DIR")?;
            let dir = args.get(2).context("usage: corpus small|dedup DIR")?;
            corpus(kind, Path::new(dir))
        }
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("campaign") => fuzz::campaign(&args[1..]),
        Some("test") => test::test(&args[1..]),
        Some("readers") => readers::readers(&args[1..]),
        Some("bench-mkfs") => bench_mkfs::bench_mkfs(&args[1..]),
        Some("bench-convert") => bench_convert::bench_convert(&args[1..]),
        Some("layers") => layers::check(&root()),
        Some("citations") => citations::check(&root()),
        Some("roundtrip") => roundtrip(if args.len() > 1 {
            paths(1)
        } else {
            default_trees()?
        }),
        _ => {
            eprintln!("tasks: full-tree DIR [--big] | debian DIR | linux DIR | kernel-check [TREE...] | bench [TREE...] | roundtrip [TREE...] | corpus small|dedup DIR | fuzz [--seconds N] [--no-skip] [TARGET...] | campaign [--runs N] [--jobs J] [TARGET...] | test [--fuzz-seconds N] | readers --upstream DIR | bench-mkfs [--runs N] [TAR...] | bench-convert [--runs N] [--layout OCI_DIR:TAG] | layers | citations");
            std::process::exit(2)
        }
    }
}
