//! The cargo-fuzz targets of `fuzz/`, run two ways: `cargo xtask fuzz`, CI's short run (N
//! seconds per target, one after the other, under AddressSanitizer), and `cargo xtask
//! campaign`, the long run (N executions per target, one libFuzzer process per core, without a
//! sanitizer, on a corpus that later campaigns add to).
//!
//! The campaign drops ASan because it costs 3–10× the executions per second, and the main
//! crate is `#![forbid(unsafe_code)]`: what a long run can still find there is a panic, an
//! overflow (the build keeps debug assertions, so arithmetic overflow panics), a hang (the
//! timeout) or an allocation beyond the RSS limit, and all of those libFuzzer reports without
//! ASan. CI's short runs keep ASan for the unsafe code in `crates/`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::root;

pub const TARGETS: [&str; 11] = [
    "v5_bootstrap",
    "v6_bootstrap",
    "blob_meta",
    "tar_reader",
    "roundtrip",
    "blob_toc",
    "prefetch_table",
    "zran_meta",
    "estargz_ref",
    "encrypted_ci",
    "oci_json",
];

/// The campaign's input length cap, for a target whose seeds are far longer than what it
/// needs: zran_meta's seed carries a whole 164 KB layer, and inflating its spans made each
/// execution take a millisecond (1,100/s; 45,000/s under 16 KiB).
fn campaign_max_len(target: &str) -> Option<usize> {
    (target == "zran_meta").then_some(16 << 10)
}

/// When a run ends.
#[derive(Clone, Copy)]
enum Stop {
    Seconds(u64),
    Runs(u64),
}

/// How one target is run: CI's short run or the campaign.
#[derive(Clone, Copy)]
struct Plan {
    stop: Stop,
    campaign: bool,
}

impl Plan {
    /// Where a target's corpus and log live.
    fn dirs(self, target: &str) -> (PathBuf, PathBuf) {
        let t = root().join("target");
        if self.campaign {
            let base = t.join("fuzz-campaign");
            (base.join(target).join("corpus"), base.join("logs"))
        } else {
            (t.join("fuzz-corpus").join(target), t.join("fuzz-logs"))
        }
    }

    /// cargo-fuzz's build options: the campaign builds into its own directory, so that CI's
    /// ASan build and it do not rebuild each other.
    fn build_args(self) -> Vec<String> {
        if !self.campaign {
            return Vec::new();
        }
        let dir = root().join("target/fuzz-campaign/build");
        ["-s", "none", "--debug-assertions", "--target-dir"]
            .iter()
            .map(|s| s.to_string())
            .chain([dir.display().to_string()])
            .collect()
    }
}

/// One target's run: executions, seconds, and whether libFuzzer reported a crash.
struct FuzzRun {
    target: String,
    execs: u64,
    seconds: u64,
    corpus: usize,
    crashed: bool,
    log: PathBuf,
}

impl FuzzRun {
    fn line(&self) -> String {
        format!(
            "{:<14} {:>11} executions in {:>5}s ({:>7.0}/s), corpus {:>5}{}",
            self.target,
            self.execs,
            self.seconds,
            self.execs as f64 / self.seconds.max(1) as f64,
            self.corpus,
            if self.crashed {
                format!(
                    " CRASH, see {} and fuzz/artifacts/{}/",
                    self.log.display(),
                    self.target
                )
            } else {
                String::new()
            }
        )
    }
}

fn cargo_fuzz() -> Command {
    let mut c = Command::new(env!("CARGO"));
    // cargo-fuzz needs -Z flags; a stable toolchain allows them with RUSTC_BOOTSTRAP=1
    c.current_dir(root().join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        .arg("fuzz");
    c
}

/// Why the targets cannot run here, if they cannot; builds them otherwise.
fn unavailable(plan: Plan) -> Option<String> {
    match Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .output()
    {
        Ok(o) if o.status.success() => {}
        _ => {
            return Some(
                "cargo-fuzz is not installed (`cargo install cargo-fuzz` adds it)".to_string(),
            )
        }
    }
    match cargo_fuzz().arg("build").args(plan.build_args()).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            Some(format!(
                "`cargo fuzz build` failed (toolchain without sanitizer support?):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        }
        Err(e) => Some(format!("cannot run cargo: {e}")),
    }
}

fn run_one(target: &str, plan: Plan) -> Result<FuzzRun> {
    let (corpus, logs) = plan.dirs(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&logs)?;
    let seeds = root().join("fuzz/seeds").join(target);
    std::fs::create_dir_all(&seeds)?;
    let log = logs.join(format!("{target}.log"));
    let file = std::fs::File::create(&log)?;
    let mut args = vec![
        match plan.stop {
            Stop::Seconds(s) => format!("-max_total_time={s}"),
            Stop::Runs(n) => format!("-runs={n}"),
        },
        "-print_final_stats=1".to_string(),
        "-timeout=20".to_string(),
    ];
    if plan.campaign {
        args.push("-rss_limit_mb=2048".into());
        args.extend(campaign_max_len(target).map(|n| format!("-max_len={n}")));
    } else {
        args.push("-rss_limit_mb=3072".into());
    }
    let started = std::time::Instant::now();
    let status = cargo_fuzz()
        .arg("run")
        .args(plan.build_args())
        .arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .args(&args)
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .context("spawn cargo fuzz run")?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stat = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    Ok(FuzzRun {
        target: target.to_string(),
        execs: stat("stat::number_of_executed_units:").unwrap_or(0),
        // libFuzzer's final stats have no running time: the wall clock, build check included
        seconds: started.elapsed().as_secs(),
        corpus: std::fs::read_dir(&corpus).map_or(0, |d| d.count()),
        crashed: !status.success(),
        log,
    })
}

/// The targets named in `args` (all when none is). Any other argument goes to `take` with the
/// one after it, which says whether it used that one as the flag's value.
fn parse(
    args: &[String],
    mut take: impl FnMut(&str, Option<&String>) -> Result<bool>,
) -> Result<Vec<String>> {
    let mut targets = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        if TARGETS.contains(&a.as_str()) {
            targets.push(a.clone());
        } else if take(a, it.peek().copied())? {
            it.next();
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    Ok(targets)
}

fn number(flag: &str, value: Option<&String>) -> Result<u64> {
    value
        .with_context(|| format!("{flag} needs a value"))?
        .parse()
        .with_context(|| flag.to_string())
}

fn fail_on_crash(runs: &[FuzzRun]) -> Result<()> {
    let crashed: Vec<&str> = runs
        .iter()
        .filter(|r| r.crashed)
        .map(|r| r.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {crashed:?}");
    }
    Ok(())
}

/// `fuzz`'s arguments: the targets, the seconds per target and whether to fail instead of
/// skipping when cargo-fuzz cannot run.
struct FuzzArgs {
    targets: Vec<String>,
    seconds: u64,
    no_skip: bool,
}

fn fuzz_args(args: &[String]) -> Result<FuzzArgs> {
    let mut seconds = 60u64;
    let mut no_skip = false;
    let targets = parse(args, |flag, value| match flag {
        "--seconds" => number(flag, value).map(|n| {
            seconds = n;
            true
        }),
        "--no-skip" => {
            no_skip = true;
            Ok(false)
        }
        _ => bail!("unknown fuzz argument {flag:?}; targets: {TARGETS:?}"),
    })?;
    Ok(FuzzArgs {
        targets,
        seconds,
        no_skip,
    })
}

/// `cargo xtask fuzz [--seconds N] [--no-skip] [TARGET...]`
pub fn fuzz(args: &[String]) -> Result<()> {
    let FuzzArgs {
        targets,
        seconds,
        no_skip,
    } = fuzz_args(args)?;
    let plan = Plan {
        stop: Stop::Seconds(seconds),
        campaign: false,
    };
    if let Some(why) = unavailable(plan) {
        if no_skip {
            bail!("fuzz: cannot run: {why}");
        }
        println!("fuzz: SKIPPED: {why}");
        return Ok(());
    }
    let mut runs = Vec::new();
    // one target at a time: libFuzzer runs one process on one core
    for t in &targets {
        println!("fuzz: {t} for {seconds}s ...");
        let r = run_one(t, plan)?;
        println!("fuzz: {}", r.line());
        runs.push(r);
    }
    fail_on_crash(&runs)
}

/// `cargo xtask campaign [--runs N] [--jobs J] [TARGET...]`: J lanes, each taking the next
/// target from one queue; a summary line per target is also appended to
/// target/fuzz-campaign/summary.txt, so that campaigns over several sessions add up.
pub fn campaign(args: &[String]) -> Result<()> {
    let mut runs_each = 10_000_000u64;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let targets = parse(args, |flag, value| {
        match flag {
            "--runs" => runs_each = number(flag, value)?,
            "--jobs" => jobs = number(flag, value)?.max(1),
            _ => bail!("unknown campaign argument {flag:?}; targets: {TARGETS:?}"),
        }
        Ok(true)
    })?;
    let plan = Plan {
        stop: Stop::Runs(runs_each),
        campaign: true,
    };
    if let Some(why) = unavailable(plan) {
        bail!("campaign: cannot run: {why}");
    }
    let queue = Mutex::new(targets.into_iter().collect::<VecDeque<_>>());
    let done = Mutex::new(Vec::new());
    let summary = root().join("target/fuzz-campaign/summary.txt");
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| lane(&queue, &done, plan, &summary));
        }
    });
    let runs = done.into_inner().unwrap_or_default();
    println!(
        "campaign: {runs_each} executions per target; {}",
        summary.display()
    );
    for r in &runs {
        println!("campaign: {}", r.line());
    }
    fail_on_crash(&runs)
}

fn lane(queue: &Mutex<VecDeque<String>>, done: &Mutex<Vec<FuzzRun>>, plan: Plan, summary: &Path) {
    loop {
        let Some(t) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
            return;
        };
        let r = match run_one(&t, plan) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("campaign: {t}: {e:#}");
                continue;
            }
        };
        let line = format!("{} {}\n", utc_now(), r.line());
        print!("campaign: {line}");
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(summary)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Ok(mut d) = done.lock() {
            d.push(r);
        }
    }
}

/// The UTC time now as `YYYY-MM-DD HH:MM:SS`, to date the summary's lines.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs as i64)
}

fn utc(secs: i64) -> String {
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (proleptic Gregorian): eras of 400 years, years starting in March
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_takes_flags_values_and_targets() {
        let got = fuzz_args(&args(&["--seconds", "20", "--no-skip", "zran_meta"])).unwrap();
        assert_eq!(got.targets, ["zran_meta"]);
        assert_eq!((got.seconds, got.no_skip), (20, true));
        let all = fuzz_args(&[]).unwrap();
        assert_eq!(all.targets.len(), TARGETS.len());
        assert_eq!((all.seconds, all.no_skip), (60, false));
        assert!(fuzz_args(&args(&["nonsense"])).is_err());
        assert!(fuzz_args(&args(&["--seconds"])).is_err());
    }

    #[test]
    fn utc_dates_match_the_calendar() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_395_928), "2026-12-04 14:52:08");
        assert_eq!(utc(4_107_542_399), "2100-02-28 23:59:59");
    }
}
