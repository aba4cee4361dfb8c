//! `cargo xtask readers --upstream DIR`: upstream's readers (nydusd over FUSE, `nydus-image
//! check`) on one image per command and mode (tests/readers/). DIR holds upstream's `nydusd`
//! and `nydus-image`; there is no default and no skip: without them the task fails, since a
//! second opinion that did not run must not read as one that agreed.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The upstream directory named by `--upstream DIR`.
fn parse(args: &[String]) -> Result<PathBuf> {
    match args {
        [flag, dir] if flag == "--upstream" => Ok(PathBuf::from(dir)),
        _ => bail!("usage: readers --upstream DIR (DIR holding upstream's nydusd and nydus-image)"),
    }
}

/// Runs the readers test target with the upstream binaries; fails when they are missing.
pub fn readers(args: &[String]) -> Result<()> {
    let dir = parse(args)?;
    for bin in ["nydusd", "nydus-image"] {
        let p = dir.join(bin);
        let runs = Command::new(&p)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !runs {
            bail!("readers: {} is missing or does not run", p.display());
        }
    }
    let dir = dir.canonicalize().context("--upstream")?;
    println!("readers: upstream binaries from {}", dir.display());
    crate::run(
        Command::new(env!("CARGO"))
            .current_dir(crate::root())
            .env("EROFS_FORGE_UPSTREAM", &dir)
            .args([
                "test",
                "--test",
                "readers",
                "--",
                "--nocapture",
                "--test-threads=1",
            ]),
    )
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_upstream_directory_is_required() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--upstream".into()]).is_err());
        let dir = parse(&["--upstream".into(), "/x".into()]).unwrap();
        assert_eq!(dir, std::path::PathBuf::from("/x"));
    }
}
