//! Helpers shared by the CLI tests: running the binary, building fixture trees, mounting
//! images with the kernel and comparing trees entry by entry.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_erofs-forge")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs erofs-forge and returns its output; panics with stderr when it fails.
pub fn forge(args: &[&str]) -> Output {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("spawn erofs-forge");
    assert!(
        out.status.success(),
        "erofs-forge {:?} failed:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    audit_bootstraps(args);
    out
}

/// Holds every bootstrap a successful writing command produced to nydusd's load-time rules
/// (`erofs_forge::read::nydusd`, formats/blob.md §12): the kernel ignores blob ids and
/// features, so the mount checks cannot see a table nydusd would fail to serve.
pub fn audit_bootstraps(args: &[&str]) {
    let writes = ["create", "merge", "compact", "optimize", "chunkdict"];
    if !args.first().is_some_and(|c| writes.contains(c)) {
        return;
    }
    let inline = args.contains(&"--blob-inline-meta") || args.contains(&"--inline-bootstrap");
    let mut outputs = Vec::new();
    for w in args.windows(2) {
        let boot = ["-B", "--bootstrap", "--output-bootstrap"].contains(&w[0]);
        if boot || (inline && ["-b", "--blob"].contains(&w[0])) {
            outputs.push(Path::new(w[1]));
        }
    }
    for p in outputs.into_iter().filter(|p| p.is_file()) {
        let loaded = erofs_forge::read::load(p)
            .unwrap_or_else(|e| panic!("{args:?}: {} does not load: {e}", p.display()));
        let broken = erofs_forge::read::nydusd::violations(&loaded.image);
        assert!(
            broken.is_empty(),
            "{args:?}: nydusd could not serve {}:\n{}",
            p.display(),
            broken.join("\n")
        );
    }
}

/// Runs erofs-forge expecting failure; returns stderr.
pub fn forge_fails(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("spawn erofs-forge");
    assert!(!out.status.success(), "erofs-forge {:?} should fail", args);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn is_root() -> bool {
    // SAFETY-free check: the effective uid is in /proc/self/status
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Why this machine cannot mount EROFS images, if it cannot.
pub fn cannot_mount() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.contains("erofs") {
        let _ = Command::new("modprobe").arg("erofs").status();
        if !std::fs::read_to_string("/proc/filesystems")
            .unwrap_or_default()
            .contains("erofs")
        {
            return Some("the kernel has no erofs".into());
        }
    }
    if !have("losetup") {
        return Some("no losetup".into());
    }
    None
}

/// Why the full fixture tree cannot be built here, if it cannot.
pub fn cannot_build_full_tree() -> Option<String> {
    if !is_root() {
        return Some("building devices and owners needs root".into());
    }
    for t in ["setfattr", "setfacl", "setcap", "python3", "mknod"] {
        if !have(t) {
            return Some(format!("{t} is not installed"));
        }
    }
    None
}

/// Builds `fixtures/make-full-tree.sh` into `dir`.
pub fn full_tree(dir: &Path, big: bool) {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("fixtures/make-full-tree.sh")).arg(dir);
    if big {
        cmd.arg("--big");
    }
    let out = cmd.output().expect("run make-full-tree.sh");
    assert!(
        out.status.success(),
        "make-full-tree.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch directory on the same filesystem as the repository (never a fixed /tmp).
pub fn scratch() -> tempfile::TempDir {
    let base = repo().join("target/test-scratch");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// One entry of a tree, with everything an image must preserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: String,
    pub target: Vec<u8>,
    pub rdev: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub hardlink: Option<Vec<u8>>,
    pub mtime: (i64, i64),
}

/// Describes every entry under `root` (never following symlinks), keyed by relative path.
/// `mtime` says whether to record the root directory's mtime too.
pub fn manifest(root: &Path) -> BTreeMap<Vec<u8>, Desc> {
    let mut out = BTreeMap::new();
    let mut first_of: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut entries: Vec<(Vec<u8>, PathBuf)> = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            (rel, e.path().to_path_buf())
        })
        .collect();
    entries.sort();
    for (rel, path) in &entries {
        let m = std::fs::symlink_metadata(path).unwrap();
        if !m.is_dir() && m.nlink() > 1 {
            first_of
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| rel.clone());
        }
    }
    for (rel, path) in entries {
        let m = std::fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_file() {
            'f'
        } else if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else {
            's'
        };
        let sha256 = if kind == 'f' {
            let mut h = Sha256::new();
            let mut f = std::fs::File::open(&path).unwrap();
            std::io::copy(&mut f, &mut h).unwrap();
            hex::encode(h.finalize())
        } else {
            String::new()
        };
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&path)
            .map(|names| {
                names
                    .filter_map(|n| {
                        xattr::get(&path, &n)
                            .ok()
                            .flatten()
                            .map(|v| (n.as_bytes().to_vec(), v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        let hardlink = if kind != 'd' && m.nlink() > 1 {
            first_of.get(&(m.dev(), m.ino())).cloned()
        } else {
            None
        };
        out.insert(
            rel,
            Desc {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if kind == 'f' { m.size() } else { 0 },
                sha256,
                target: if kind == 'l' {
                    std::fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                } else {
                    Vec::new()
                },
                rdev: if kind == 'c' || kind == 'b' {
                    m.rdev()
                } else {
                    0
                },
                xattrs,
                hardlink,
                mtime: (m.mtime(), m.mtime_nsec()),
            },
        );
    }
    out
}

/// Lists the differences between two manifests (empty when equal).
pub fn diff(a: &BTreeMap<Vec<u8>, Desc>, b: &BTreeMap<Vec<u8>, Desc>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push(format!("only in source: {}", String::from_utf8_lossy(k))),
            Some(w) if w != v => d.push(format!(
                "{}: {:?} != {:?}",
                String::from_utf8_lossy(k),
                v,
                w
            )),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            d.push(format!("only in image: {}", String::from_utf8_lossy(k)));
        }
    }
    d
}

/// A mounted EROFS image; unmounted and its loop devices freed on drop.
pub struct Mounted {
    pub dir: tempfile::TempDir,
    loops: Vec<String>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // a process still walking the tree (another test's manifest, a scanner) keeps it busy
        // for a moment: retry, then detach it lazily rather than leave a mount behind
        let unmounted = (0..20).any(|i| {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Command::new("umount")
                .arg(self.dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
        for l in &self.loops {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
    }
}

fn loop_dev(file: &Path) -> String {
    let out = Command::new("losetup")
        .args(["-r", "-f", "--show"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Mounts `image` read-only with `devices` as its extra devices (each through a loop device).
pub fn mount(image: &Path, devices: &[PathBuf]) -> Mounted {
    let mut m = Mounted {
        dir: scratch(),
        loops: Vec::new(),
    };
    let mut opts = String::from("ro");
    for d in devices {
        let l = loop_dev(d);
        opts.push_str(",device=");
        opts.push_str(&l);
        m.loops.push(l);
    }
    let img = loop_dev(image);
    m.loops.push(img.clone());
    let out = Command::new("mount")
        .args(["-t", "erofs", "-o", &opts, &img])
        .arg(m.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    m
}

/// Mounts and compares with `source` (the root's own metadata included).
pub fn assert_mounts_equal(image: &Path, devices: &[PathBuf], source: &Path) {
    let m = mount(image, devices);
    let differences = diff(&manifest(source), &manifest(m.dir.path()));
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

/// The shared kernel checker, when this workspace has it: a second, independent opinion.
pub fn shared_mount_check(image: &Path, devices: &[PathBuf], source: &Path) {
    let tool = repo().join("../shared/tools/erofs-mount-check");
    if !tool.exists() {
        eprintln!("note: {} not present; own comparison only", tool.display());
        return;
    }
    let mut cmd = Command::new(tool);
    cmd.arg(image);
    for d in devices {
        cmd.arg("--device").arg(d);
    }
    let out = cmd.arg("--expect").arg(source).output().unwrap();
    assert!(
        out.status.success(),
        "erofs-mount-check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one file in `dir` ending with `suffix`.
pub fn one_file(dir: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "files ending {suffix} in {}: {found:?}",
        dir.display()
    );
    found[0].clone()
}

/// A requirement is missing at run time. Tests that need one carry
/// `#[cfg_attr(no_x, ignore = ...)]` from the probe in `build.rs`, so cargo counts them as
/// ignored where it is missing; reaching this means the probe found it and it has gone since
/// (rebuild), and the test fails rather than passing without having checked anything.
pub fn missing(test: &str, why: &str) -> ! {
    panic!("{test}: {why} (build.rs found it when the tests were built; rebuild them)")
}

/// A path as the `&str` an argv takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// sha256 of `bytes`, lowercase hex (a blob's id).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// How long one run of the binary may take before a test calls it a hang.
const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs the binary with exactly `args` and `stdin` written to its standard input (then
/// closed), as the clients' `exec.Command` with `cmd.Stdin = strings.NewReader(...)` does.
/// Standard output and error are read while it runs; a run over five minutes fails the test.
pub fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let out = run_program(Path::new(bin()), args, stdin);
    if out.status.success() {
        audit_bootstraps(args);
    }
    out
}

/// [`run_with_stdin`] for any program (the binary under another name, a reference tool).
pub fn run_program(program: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::{Read, Write};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        // the tool may not read stdin at all: a broken pipe is fine
        let _ = input.write_all(&data);
    });
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out_t = read_all(Box::new(child.stdout.take().unwrap()));
    let err_t = read_all(Box::new(child.stderr.take().unwrap()));
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            panic!(
                "{} {args:?} did not finish in {RUN_TIMEOUT:?}",
                program.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    feeder.join().unwrap();
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Fails the test, with stderr, unless the run succeeded.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a FIFO at `p`.
pub fn mkfifo(p: &Path) -> PathBuf {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    p.to_path_buf()
}

/// A FIFO input fed with `bytes` by a thread (errors ignored: the tool may stop reading).
pub fn feed(fifo: &Path, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&fifo) {
            let _ = f.write_all(&bytes);
        }
    })
}

/// A FIFO output read by a thread: to EOF, or only `limit` bytes before it closes its end.
pub fn drain(fifo: &Path, limit: Option<usize>) -> std::thread::JoinHandle<Vec<u8>> {
    use std::io::Read;
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        let mut f = std::fs::File::open(&fifo).unwrap();
        let mut out = Vec::new();
        match limit {
            Some(n) => {
                out.resize(n, 0);
                f.read_exact(&mut out).unwrap();
            }
            None => {
                f.read_to_end(&mut out).unwrap();
            }
        }
        out
    })
}

/// Unblocks a thread still waiting to open `fifo` (the tool never opened its end), so that a
/// failing run cannot hang the test.
pub fn release(fifo: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let nb = libc::O_NONBLOCK;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nb)
        .open(fifo);
    let _ = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nb)
        .open(fifo);
}

/// Runs with FIFO inputs fed and FIFO outputs drained by threads, as the clients set them up;
/// returns the run and what each output FIFO received, after checking that every FIFO is still
/// a FIFO (never replaced by a file).
pub fn run_fifos(
    args: &[&str],
    stdin: &[u8],
    inputs: &[(&Path, Vec<u8>)],
    outputs: &[&Path],
) -> (Output, Vec<Vec<u8>>) {
    let feeders: Vec<_> = inputs.iter().map(|(p, b)| feed(p, b.clone())).collect();
    let readers: Vec<_> = outputs.iter().map(|p| drain(p, None)).collect();
    let out = run_with_stdin(args, stdin);
    for p in inputs
        .iter()
        .map(|(p, _)| *p)
        .chain(outputs.iter().copied())
    {
        release(p);
        let t = std::fs::symlink_metadata(p).unwrap().file_type();
        assert!(t.is_fifo(), "{} is no longer a FIFO", p.display());
    }
    for f in feeders {
        f.join().unwrap();
    }
    let got = readers.into_iter().map(|r| r.join().unwrap()).collect();
    (out, got)
}

/// `export --block` of the image `boot` (blobs in `blobs`) into the disk image `disk`.
pub fn export_block(boot: &Path, blobs: &Path, disk: &Path) {
    forge(&[
        "export",
        "--block",
        "-B",
        s(boot),
        "-D",
        s(blobs),
        "-O",
        s(disk),
    ]);
}
