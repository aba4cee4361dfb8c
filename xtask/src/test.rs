//! `cargo xtask test`: the one test command of the README and of `.ci/run`.
//!
//! It installs what the tests need (Debian packages and, built from Debian's source package by
//! `tests/tools/build-erofs-utils.sh`, the reference mkfs.erofs of erofs-utils 1.9 in
//! `target/erofs-utils-1.9` when run as root; cargo-fuzz), runs every fuzz target briefly, then
//! `cargo test`, and fails when any test was ignored: the CLI tests mark themselves ignored
//! when `build.rs` finds a requirement missing, so a skipped check can never pass as a passed
//! one.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Debian packages the tests call: the kernel-mount and fsck checks (erofs-utils), the full
/// fixture tree (attr, acl, libcap2-bin, python3), dm-verity (cryptsetup-bin), tar layers (tar,
/// gzip, zstd, xz-utils), OCI images (umoci, skopeo), a real registry to push to and pull from
/// (docker-registry, with apache2-utils' htpasswd for its auth), `report --html` rendered headless
/// (chromium).
/// (erofs-utils here is Debian's 1.5; the mkfs.erofs front end is compared with 1.9, which
/// [`install_erofs_utils_19`] builds beside, never installing it.)
const PACKAGES: &[&str] = &[
    "erofs-utils",
    "attr",
    "acl",
    "libcap2-bin",
    "python3",
    // the independent decryption of an encrypted blob (tests/tools/decrypt.py)
    "python3-cryptography",
    "python3-zstandard",
    "cryptsetup-bin",
    "tar",
    "gzip",
    "zstd",
    "xz-utils",
    "umoci",
    "debootstrap",
    "openssl",
    "curl",
    "skopeo",
    "docker-registry",
    "apache2-utils",
    "chromium",
];

/// Runs `cargo xtask test [--fuzz-seconds N]`.
pub fn test(args: &[String]) -> Result<()> {
    // 11 targets: about 4 minutes of fuzzing in all
    let mut fuzz_seconds = 20u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--fuzz-seconds" => {
                fuzz_seconds = it
                    .next()
                    .context("--fuzz-seconds needs a value")?
                    .parse()
                    .context("--fuzz-seconds")?
            }
            other => bail!("unknown test argument {other:?}; usage: test [--fuzz-seconds N]"),
        }
    }
    install_packages()?;
    install_erofs_utils_19()?;
    install_debian_tar()?;
    if fuzz_seconds > 0 {
        install_cargo_fuzz()?;
        crate::fuzz::fuzz(&[
            "--seconds".into(),
            fuzz_seconds.to_string(),
            "--no-skip".into(),
        ])?;
    } else {
        println!("test: fuzzing not run (--fuzz-seconds 0)");
    }
    let summary = cargo_test()?;
    println!(
        "test: {} passed, {} failed, {} ignored in {} test binaries",
        summary.passed, summary.failed, summary.ignored, summary.binaries
    );
    if summary.failed > 0 {
        bail!("{} tests failed", summary.failed);
    }
    if summary.ignored > 0 {
        bail!(
            "{} tests were ignored (a requirement is missing; see build.rs):\n{}",
            summary.ignored,
            summary.ignored_names.join("\n")
        );
    }
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let have_apt = Command::new("apt-get").arg("--version").output().is_ok();
    if !is_root() || !have_apt {
        println!(
            "test: cannot install {missing:?} (needs root and apt-get); tests that need them \
             will show as ignored and make this task fail"
        );
        return Ok(());
    }
    println!("test: installing {missing:?}");
    crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(&missing),
    )
}

/// Where `tests/tools/build-erofs-utils.sh` puts erofs-utils 1.9 (`build.rs` looks there).
const EROFS_UTILS_19: &str = "target/erofs-utils-1.9";

/// Builds the reference erofs-utils 1.9 (`mkfs.erofs`, `fsck.erofs`, `dump.erofs`) the mkfs
/// tests compare with, unless already built (the script returns at once then).
fn install_erofs_utils_19() -> Result<()> {
    if !is_root() {
        println!(
            "test: cannot build erofs-utils 1.9 into {EROFS_UTILS_19} (needs root and apt-get); \
             the mkfs tests will show as ignored and make this task fail"
        );
        return Ok(());
    }
    crate::run(
        Command::new("bash")
            .current_dir(crate::root())
            .args(["tests/tools/build-erofs-utils.sh", EROFS_UTILS_19]),
    )
    .context("building erofs-utils 1.9 (tests/tools/build-erofs-utils.sh)")
}

/// Where the Debian image of the convert tests comes from (`build.rs` looks there): a
/// directory of its own, not the tree's, which cargo would scan on every build.
const DEBIAN_TAR: &str = "target/debian-image/debian.tar";

/// A Debian bookworm minbase tree, debootstrapped once and tarred, its tar linked to
/// `DEBIAN_TAR`: the convert tests push it to a registry as a one-layer image.
fn install_debian_tar() -> Result<()> {
    let dest = crate::root().join(DEBIAN_TAR);
    if dest.exists() {
        return Ok(());
    }
    if !is_root() {
        println!(
            "test: cannot debootstrap a Debian tree (needs root); the Debian image tests will \
             show as ignored and make this task fail"
        );
        return Ok(());
    }
    let tree = crate::root().join("target/xtask-trees/debian");
    if !tree.join("etc/debian_version").exists() {
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(&tree)?;
        crate::run(Command::new("debootstrap").args([
            "--variant=minbase",
            "bookworm",
            &tree.to_string_lossy(),
            "http://deb.debian.org/debian",
        ]))
        .context("debootstrap a Debian bookworm minbase tree")?;
    }
    let tar = crate::bench_mkfs::tree_tar("debian")?.context("no Debian tree to tar")?;
    std::fs::create_dir_all(dest.parent().context("DEBIAN_TAR has a parent")?)?;
    std::fs::hard_link(&tar, &dest).or_else(|_| std::fs::copy(&tar, &dest).map(|_| ()))?;
    Ok(())
}

fn install_cargo_fuzz() -> Result<()> {
    let cargo = env!("CARGO");
    let have = Command::new(cargo)
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        println!("test: installing cargo-fuzz");
        crate::run(Command::new(cargo).args(["install", "cargo-fuzz", "--locked", "--quiet"]))?;
    }
    Ok(())
}

/// Totals over every `test result:` line of one `cargo test` run.
#[derive(Default, Debug, PartialEq)]
struct Summary {
    binaries: u64,
    passed: u64,
    failed: u64,
    ignored: u64,
    ignored_names: Vec<String>,
}

impl Summary {
    /// Folds one line of libtest output in.
    fn add_line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.binaries += 1;
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        } else if line.starts_with("test ") && line.contains(" ... ignored") {
            self.ignored_names.push(line.to_string());
        }
    }
}

/// Runs `cargo test`, echoing its output, and adds up its summary lines.
fn cargo_test() -> Result<Summary> {
    let mut child = Command::new(env!("CARGO"))
        .current_dir(crate::root())
        .args(["test", "--workspace"])
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut summary = Summary::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        summary.add_line(&line);
    }
    let status = child.wait()?;
    if !status.success() && summary.failed == 0 {
        bail!("cargo test failed ({status}) before reporting a failed test");
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn summary_adds_every_binary_and_names_ignored_tests() {
        let mut s = Summary::default();
        for l in [
            "test a ... ok",
            "test kernel::mounts ... ignored, needs a kernel EROFS mount",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s",
        ] {
            s.add_line(l);
        }
        assert_eq!((s.binaries, s.passed, s.failed, s.ignored), (2, 5, 1, 1));
        assert_eq!(s.ignored_names.len(), 1);
    }
}
