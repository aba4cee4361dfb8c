//! `cargo xtask bench-mkfs [--runs N] [TAR...]`: containerd's mkfs.erofs calls, erofs-forge
//! against erofs-utils 1.9 (built by tests/tools/build-erofs-utils.sh), on the same tars fed
//! through a pipe: wall, CPU, peak RSS and image size, the median of N runs (default 3).
//! Default tars: made once from `target/xtask-trees/{debian,linux}` (`cargo xtask debian`,
//! `cargo xtask linux`). The fsmerge call merges each tool's own differ-call images of every
//! tar. Writes `target/bench-mkfs.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The calls, after `mkfs.erofs` and before the image: containerd's differ (call 1), with the
/// configured compressors of call 2.
const CALLS: &[(&str, &[&str])] = &[
    ("1 differ", &[]),
    ("2 -zlz4hc", &["-zlz4hc"]),
    ("2 -zzstd", &["-zzstd"]),
    ("2 -zlz4hc -C65536", &["-zlz4hc", "-C65536"]),
];
const UUID: &str = "6f1c1b5e-6d2a-4c1e-9a57-3d1f0f6c2b10";

/// One measured run.
struct Row {
    input: String,
    call: String,
    tool: &'static str,
    wall: f64,
    cpu: f64,
    rss_mib: f64,
    size: u64,
}

pub fn bench_mkfs(args: &[String]) -> Result<()> {
    let mut runs = 3usize;
    let mut tars: Vec<PathBuf> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().context("--runs N")?.parse()?,
            other => tars.push(PathBuf::from(other)),
        }
    }
    let work = crate::work_dir("bench-mkfs")?;
    if tars.is_empty() {
        tars = default_tars()?;
    }
    let tools = tools(&work)?;
    let mut rows = Vec::new();
    for tar in &tars {
        let name = tar
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for (call, extra) in CALLS {
            for (tool, bin) in &tools {
                let out = work.join(format!(
                    "{tool}-{name}-{}.erofs",
                    call.replace([' ', '-'], "")
                ));
                let mut samples = Vec::new();
                for _ in 0..runs {
                    samples.push(run_call(bin, tar, extra, &out)?);
                }
                rows.push(row(&name, call, tool, samples, &out)?);
            }
        }
    }
    rows.extend(merges(&work, &tools, &tars, runs)?);
    report(&rows)
}

/// The two binaries, each under the name mkfs.erofs.
fn tools(work: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    let ours = crate::release_binary()?;
    let link_dir = work.join("bin");
    std::fs::create_dir_all(&link_dir)?;
    let link = link_dir.join("mkfs.erofs");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&ours, &link)?;
    let reference = crate::root().join("target/erofs-utils-1.9");
    crate::run(
        Command::new("bash")
            .arg(crate::root().join("tests/tools/build-erofs-utils.sh"))
            .arg(&reference),
    )?;
    Ok(vec![
        ("erofs-forge", link),
        ("erofs-utils 1.9", reference.join("bin/mkfs.erofs")),
    ])
}

/// Tars of the default trees, made once.
fn default_tars() -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for name in ["debian", "linux"] {
        if let Some(tar) = tree_tar(name)? {
            out.push(tar);
        }
    }
    if out.is_empty() {
        bail!("no tar given and no tree in target/xtask-trees (cargo xtask debian DIR)");
    }
    Ok(out)
}

/// `target/xtask-trees/NAME.tar` of the tree `target/xtask-trees/NAME`, made once (written
/// under a temporary name and renamed, so that an interrupted run leaves no partial tar);
/// `None` without the tree.
pub fn tree_tar(name: &str) -> Result<Option<PathBuf>> {
    let tree = crate::root().join("target/xtask-trees").join(name);
    if !tree.exists() {
        return Ok(None);
    }
    let tar = crate::root().join(format!("target/xtask-trees/{name}.tar"));
    if !tar.exists() {
        let tmp = tar.with_extension("tar.partial");
        crate::run(
            Command::new("tar")
                .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
                .arg(&tree)
                .arg("-cf")
                .arg(&tmp)
                .arg("."),
        )?;
        std::fs::rename(&tmp, &tar)?;
    }
    Ok(Some(tar))
}

/// One call with the tar on stdin through a pipe (`cat TAR | mkfs.erofs ...`).
fn run_call(bin: &Path, tar: &Path, extra: &[&str], out: &Path) -> Result<crate::Measured> {
    let _ = std::fs::remove_file(out);
    let mut argv = vec![
        format!("{}", bin.display()),
        "--tar=f".into(),
        "--aufs".into(),
        "--quiet".into(),
        "-Enoinline_data".into(),
        "-b4096".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.extend(["-U".into(), UUID.into(), format!("{}", out.display())]);
    let script = format!("cat '{}' | {}", tar.display(), shell_words(&argv));
    crate::measure(&["sh".into(), "-c".into(), script])
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The fsmerge call over each tool's differ-call images of every tar.
fn merges(
    work: &Path,
    tools: &[(&'static str, PathBuf)],
    tars: &[PathBuf],
    runs: usize,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (tool, bin) in tools {
        let layers: Vec<String> = tars
            .iter()
            .map(|t| {
                let name = t
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                format!(
                    "{}",
                    work.join(format!("{tool}-{name}-1differ.erofs")).display()
                )
            })
            .collect();
        let out = work.join(format!("{tool}-fsmeta.erofs"));
        let mut samples = Vec::new();
        for _ in 0..runs {
            let _ = std::fs::remove_file(&out);
            let mut argv = vec![
                format!("{}", bin.display()),
                "--aufs".into(),
                "--ovlfs-strip=1".into(),
                "--quiet".into(),
                format!("{}", out.display()),
            ];
            argv.extend(layers.iter().cloned());
            samples.push(crate::measure(&argv)?);
        }
        rows.push(row("all layers", "4 fsmerge", tool, samples, &out)?);
    }
    Ok(rows)
}

fn row(
    input: &str,
    call: &str,
    tool: &'static str,
    samples: Vec<crate::Measured>,
    out: &Path,
) -> Result<Row> {
    let wall = crate::median(samples.iter().map(|s| s.wall).collect());
    let cpu = crate::median(samples.iter().map(|s| s.cpu).collect());
    let rss = samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0);
    Ok(Row {
        input: input.into(),
        call: call.into(),
        tool,
        wall,
        cpu,
        rss_mib: rss as f64 / 1024.0,
        size: std::fs::metadata(out)
            .with_context(|| format!("{}", out.display()))?
            .len(),
    })
}

fn report(rows: &[Row]) -> Result<()> {
    println!(
        "| input | call | tool | wall s | CPU s | peak RSS MiB | image MiB | wall vs erofs-utils |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for r in rows {
        let reference = rows
            .iter()
            .find(|o| o.input == r.input && o.call == r.call && o.tool != "erofs-forge");
        let speed = match (r.tool, reference) {
            ("erofs-forge", Some(o)) if r.wall > 0.0 => format!("{:.2}× faster", o.wall / r.wall),
            _ => String::new(),
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.1} | {} |",
            r.input,
            r.call,
            r.tool,
            r.wall,
            r.cpu,
            r.rss_mib,
            r.size as f64 / 1048576.0,
            speed
        );
        json.push(serde_json::json!({
            "input": r.input, "call": r.call, "tool": r.tool, "wall": r.wall, "cpu": r.cpu,
            "max_rss_mib": r.rss_mib, "size": r.size,
        }));
    }
    std::fs::write(
        crate::root().join("target/bench-mkfs.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    Ok(())
}
