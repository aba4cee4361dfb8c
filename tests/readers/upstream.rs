//! Upstream's readers, run on what erofs-forge wrote: nydusd serving a bootstrap over FUSE
//! (localfs backend, blob cache; as `fixtures/upstream/decode/nydusd-manifest-validate.sh`
//! of the shared fixtures does) and `nydus-image check`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crate::common::{manifest, s, Desc};

/// The upstream binaries, from `EROFS_FORGE_UPSTREAM` (a directory holding `nydusd` and
/// `nydus-image`). There is no fallback: without them this task fails, it never skips.
pub struct Upstream {
    nydusd: PathBuf,
    nydus_image: PathBuf,
}

impl Upstream {
    pub fn from_env() -> Upstream {
        let dir = std::env::var_os("EROFS_FORGE_UPSTREAM").unwrap_or_else(|| {
            panic!(
                "EROFS_FORGE_UPSTREAM is not set: run `cargo xtask readers --upstream DIR` \
                 with DIR holding upstream's nydusd and nydus-image"
            )
        });
        let dir = PathBuf::from(dir);
        let up = Upstream {
            nydusd: dir.join("nydusd"),
            nydus_image: dir.join("nydus-image"),
        };
        for b in [&up.nydusd, &up.nydus_image] {
            let ok = Command::new(b)
                .arg("--version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(ok, "{} does not run", b.display());
        }
        assert!(
            Path::new("/dev/fuse").exists(),
            "nydusd needs /dev/fuse (and root)"
        );
        up
    }

    /// `nydus-image check --bootstrap BOOT --blob-dir BLOBS`: exit 0, or its last lines.
    pub fn check(&self, boot: &Path, blobs: &Path) -> Result<(), String> {
        let out = Command::new(&self.nydus_image)
            .args(["check", "--log-level", "warn", "--bootstrap", s(boot)])
            .args(["--blob-dir", s(blobs)])
            .output()
            .map_err(|e| format!("spawn nydus-image: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "nydus-image check exit {}: {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 3)
        ))
    }

    /// nydusd mounts `boot` over the blobs in `blobs`; what it serves must equal `expect`.
    /// With `v5`, hardlinked symlinks, devices and fifos may come back as separate inodes: RAFS
    /// v5 cannot share them (formats/rafs-v5.md §12).
    pub fn serves(
        &self,
        boot: &Path,
        blobs: &Path,
        expect: &Path,
        work: &Path,
        v5: bool,
    ) -> Result<(), String> {
        let daemon = self.mount(boot, blobs, work)?;
        // a read error (nydusd answering EIO) is a verdict, not a crash of the whole task
        let served = std::panic::catch_unwind(|| manifest(&daemon.mnt));
        drop(daemon);
        let Ok(served) = served else {
            return Err(format!("reading the mount failed: {}", nydusd_log(work)));
        };
        let d = differences(&manifest(expect), &served, Served { v5, nydusd: true });
        if d.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} differences: {}",
            d.len(),
            d[..d.len().min(6)].join("; ")
        ))
    }

    /// nydusd serving `boot` over the blobs in `blobs` at `work/mnt`, until dropped.
    pub fn mount(&self, boot: &Path, blobs: &Path, work: &Path) -> Result<Daemon, String> {
        let mnt = work.join("mnt");
        let cache = work.join("cache");
        fs::create_dir_all(&mnt).unwrap();
        fs::create_dir_all(&cache).unwrap();
        let cfg = work.join("nydusd.json");
        let config = serde_json::json!({
            "device": {
                "backend": {"type": "localfs", "config": {"dir": fs::canonicalize(blobs).unwrap()}},
                "cache": {"type": "blobcache", "config": {"work_dir": cache}}
            },
            "mode": "direct",
            "digest_validate": false,
            "iostats_files": false,
            "enable_xattr": true
        });
        fs::write(&cfg, config.to_string()).unwrap();
        let log = work.join("nydusd.log");
        let child = Command::new(&self.nydusd)
            .args(["--config", s(&cfg), "--mountpoint", s(&mnt)])
            .args(["--bootstrap", s(&fs::canonicalize(boot).unwrap())])
            .args(["--log-level", "warn", "--rlimit-nofile", "0"])
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                fs::File::create(work.join("nydusd.err")).unwrap(),
            ))
            .spawn()
            .map_err(|e| format!("spawn nydusd: {e}"))?;
        let mut daemon = Daemon { child, mnt };
        daemon.wait_mounted(work)?;
        Ok(daemon)
    }
}

/// A tarfs bootstrap mounted by the kernel with its tar (the one file in `blobs`) as the
/// device, as nydus-snapshotter mounts it; what it serves must equal `expect`.
pub fn kernel_serves(boot: &Path, blobs: &Path, expect: &Path) -> Result<(), String> {
    let tar = fs::read_dir(blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .ok_or("no tar in the blob directory")?;
    let m = crate::common::mount(boot, &[tar]);
    let d = differences(
        &manifest(expect),
        &manifest(m.dir.path()),
        Served {
            v5: false,
            nydusd: false,
        },
    );
    if d.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} differences: {}",
        d.len(),
        d[..d.len().min(6)].join("; ")
    ))
}

/// Who served a tree, for the differences that are that reader's rules rather than the
/// image's.
#[derive(Clone, Copy)]
struct Served {
    /// A RAFS v5 image: hardlinked symlinks, devices and fifos are separate inodes
    /// (formats/rafs-v5.md §12).
    v5: bool,
    /// nydusd (root mode and zero mtimes, below).
    nydusd: bool,
}

/// Each path whose entries differ, with the fields that differ (`common::diff` prints whole
/// entries, too long for one line per image).
fn differences(
    a: &BTreeMap<Vec<u8>, Desc>,
    b: &BTreeMap<Vec<u8>, Desc>,
    by: Served,
) -> Vec<String> {
    let mut out = Vec::new();
    for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let path = String::from_utf8_lossy(key);
        let (Some(x), Some(y)) = (a.get(key), b.get(key)) else {
            let side = if a.contains_key(key) {
                "missing"
            } else {
                "extra"
            };
            out.push(format!("/{path} {side}"));
            continue;
        };
        let fields: Vec<&str> = [
            ("kind", x.kind != y.kind),
            // nydusd serves the root as 0755 whatever it is (rafs/src/fs.rs `get_inode_attr`)
            ("mode", x.mode != y.mode && !(by.nydusd && key.is_empty())),
            ("owner", (x.uid, x.gid) != (y.uid, y.gid)),
            ("size", x.size != y.size),
            ("data", x.sha256 != y.sha256),
            ("target", x.target != y.target),
            ("rdev", x.rdev != y.rdev),
            ("xattrs", x.xattrs != y.xattrs),
            (
                "hardlink",
                x.hardlink != y.hardlink && !(by.v5 && x.kind != 'f'),
            ),
            // nydusd serves an mtime of 0 as the time it started (rafs/src/fs.rs, "older rafs
            // image or the root inode doesn't include mtime")
            (
                "mtime",
                x.mtime != y.mtime && !(by.nydusd && x.mtime == (0, 0)),
            ),
        ]
        .into_iter()
        .filter(|(_, differ)| *differ)
        .map(|(f, _)| f)
        .collect();
        if !fields.is_empty() {
            out.push(format!("/{path} {}", fields.join(",")));
        }
    }
    out
}

/// A running nydusd; unmounted and stopped when dropped.
pub struct Daemon {
    child: Child,
    /// Where it serves the image.
    pub mnt: PathBuf,
}

impl Daemon {
    fn mounted(&self) -> bool {
        let want = format!(" {} fuse", self.mnt.display());
        fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&want))
    }

    /// Until the FUSE mount appears (10 s at most), or nydusd exits.
    fn wait_mounted(&mut self, work: &Path) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.mounted() {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("nydusd exited ({st}): {}", nydusd_log(work)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "nydusd did not mount in 10 s: {}",
            nydusd_log(work)
        ))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.mounted() {
            let _ = Command::new("umount").arg(&self.mnt).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nydusd_log(work: &Path) -> String {
    let mut all = String::new();
    for f in ["nydusd.log", "nydusd.err"] {
        all.push_str(&fs::read_to_string(work.join(f)).unwrap_or_default());
    }
    // its lines carry colour codes, timestamps and source locations: keep the messages
    let plain: Vec<String> = all
        .lines()
        .map(strip_ansi)
        .map(|l| match l.split_once("] ") {
            Some((_, rest)) => rest
                .rsplit_once("] ")
                .map_or(rest, |r| r.1)
                .trim()
                .to_string(),
            None => l.trim().to_string(),
        })
        .filter(|l| !l.is_empty() && l != "Stack:" && l != "Error:" && !l.starts_with("at "))
        .collect();
    plain[plain.len().saturating_sub(3)..]
        .join(" | ")
        .chars()
        .take(500)
        .collect()
}

/// `line` without terminal escape sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
