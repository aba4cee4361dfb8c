//! Hostile and unlucky conditions: a full disk, a build killed midway, outputs that cannot be
//! written, and images crafted to make `unpack --output-dir` write outside its directory.

use crate::common::*;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Every name in `dir` (not recursive), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn is_temp(name: &str) -> bool {
    name.starts_with(".erofs-forge.") && name.ends_with(".tmp")
}

/// A tree with one incompressible file of `size` bytes.
fn random_tree(root: &Path, size: usize) {
    std::fs::create_dir_all(root).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(root.join("noise"), data).unwrap();
    std::fs::write(root.join("small"), b"small file\n").unwrap();
}

struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn disk_full_is_reported_once_and_leaves_nothing() {
    if !is_root() {
        missing(
            "disk_full_is_reported_once_and_leaves_nothing",
            "mounting a tmpfs needs root",
        );
    }
    let work = scratch();
    let src = work.path().join("src");
    random_tree(&src, 6 << 20);
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    if !st.success() {
        missing(
            "disk_full_is_reported_once_and_leaves_nothing",
            "cannot mount a tmpfs here",
        );
    }
    let _guard = Tmpfs(mnt.clone());
    for compressor in ["none", "zstd"] {
        let cache = mnt.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let err = forge_fails(&[
            "create",
            "--compressor",
            compressor,
            "-D",
            mnt.to_str().unwrap(),
            "--blob-cache-dir",
            cache.to_str().unwrap(),
            "-B",
            mnt.join("boot").to_str().unwrap(),
            "-J",
            mnt.join("out.json").to_str().unwrap(),
            src.to_str().unwrap(),
        ]);
        assert_eq!(
            err.matches("no space left on device").count(),
            1,
            "reported once: {err}"
        );
        assert!(
            err.contains(&format!("writing {}", mnt.display())),
            "names the output: {err}"
        );
        assert!(err.contains("needed at least"), "says how much: {err}");
        assert!(!err.contains("os error"), "no repeated OS error: {err}");
        assert_eq!(names(&mnt), vec!["cache".to_string()], "{compressor}");
        assert!(
            names(&cache).is_empty(),
            "{compressor}: {:?}",
            names(&cache)
        );
        std::fs::remove_dir(&cache).unwrap();
    }
    // a build that fits still succeeds there (the failed ones freed their space)
    let small = work.path().join("small");
    random_tree(&small, 100 << 10);
    forge(&[
        "create",
        "-D",
        mnt.to_str().unwrap(),
        "-B",
        mnt.join("boot").to_str().unwrap(),
        small.to_str().unwrap(),
    ]);
    assert!(mnt.join("boot").is_file());
}

#[test]
fn failed_output_leaves_no_final_names() {
    let work = scratch();
    let src = work.path().join("src");
    random_tree(&src, 300 << 10);
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // the JSON cannot be written: nothing else may appear either
    let err = forge_fails(&[
        "create",
        "-D",
        out.to_str().unwrap(),
        "-B",
        out.join("boot").to_str().unwrap(),
        "-J",
        work.path().join("missing/dir/out.json").to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    assert!(err.contains("missing/dir"), "{err}");
    assert!(names(&out).is_empty(), "{:?}", names(&out));
    // merge: same with its bootstrap
    forge(&[
        "create",
        "-D",
        out.to_str().unwrap(),
        "-B",
        out.join("boot").to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let merged = work.path().join("merged");
    forge_fails(&[
        "merge",
        "-B",
        merged.to_str().unwrap(),
        "-J",
        work.path().join("missing/m.json").to_str().unwrap(),
        out.join("boot").to_str().unwrap(),
    ]);
    assert!(!merged.exists());
    assert!(names(work.path()).iter().all(|n| !is_temp(n)));
}

#[test]
fn tmp_dir_holds_scratch_and_ends_empty() {
    let work = scratch();
    let src = work.path().join("src");
    random_tree(&src, 300 << 10);
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // another filesystem when there is one: finished outputs are copied, then renamed
    let shm = Path::new("/dev/shm");
    let other = shm.is_dir()
        && std::fs::metadata(shm).unwrap().dev() != std::fs::metadata(work.path()).unwrap().dev();
    let tmp = if other {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir_in(work.path()).unwrap()
    };
    forge(&[
        "create",
        "--tmp-dir",
        tmp.path().to_str().unwrap(),
        "-D",
        out.to_str().unwrap(),
        "-B",
        out.join("boot").to_str().unwrap(),
        "--blob-cache-dir",
        out.to_str().unwrap(),
        "-J",
        out.join("out.json").to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));
    let got = names(&out);
    assert!(got.iter().all(|n| !is_temp(n)), "{got:?}");
    assert_eq!(
        got.len(),
        5,
        "boot, json, blob, .blob.data, .blob.meta: {got:?}"
    );
    forge(&[
        "check",
        out.join("boot").to_str().unwrap(),
        "-D",
        out.to_str().unwrap(),
    ]);
    let err = forge_fails(&[
        "create",
        "--tmp-dir",
        work.path().join("nope").to_str().unwrap(),
        "-D",
        out.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    assert!(err.contains("--tmp-dir"), "{err}");
}

/// A tar header for one regular file of `size` bytes.
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Starts `create` reading a tar from a pipe we hold, feeds it part of a large file, and waits
/// until the build has its temporary blob open. Returns the child and the output directory.
fn start_stalled_build(work: &Path) -> (std::process::Child, PathBuf) {
    let out = work.join("out");
    std::fs::create_dir(&out).unwrap();
    let mut child = Command::new(bin())
        .args(["create", "-t", "tar-rafs", "--compressor", "none", "-D"])
        .arg(&out)
        .arg("-B")
        .arg(out.join("boot"))
        .arg("-J")
        .arg(out.join("out.json"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&tar_header("big", 1 << 30)).unwrap();
    // 8 MiB of data: several chunks reach the blob, the rest of the GiB never comes
    let block = vec![0x5au8; 1 << 20];
    for _ in 0..8 {
        stdin.write_all(&block).unwrap();
    }
    // keep the pipe open (the build waits for more) until the child is gone
    std::thread::spawn(move || {
        let _keep = stdin;
        std::thread::park();
    });
    // wait (without a deadline: the build makes progress or the test harness times out) until
    // the temporary blob holds data
    loop {
        let grown = std::fs::read_dir(&out).unwrap().any(|e| {
            let e = e.unwrap();
            is_temp(&e.file_name().to_string_lossy())
                && e.metadata().map(|m| m.len() >= 1 << 20).unwrap_or(false)
        });
        if grown {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("create ended early: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, out)
}

#[test]
fn sigkill_mid_build_leaves_no_final_output() {
    let work = scratch();
    let (mut child, out) = start_stalled_build(work.path());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let left = names(&out);
    // no handler runs on SIGKILL: temporary files may remain, final names may not
    assert!(left.iter().all(|n| is_temp(n)), "{left:?}");
    println!("after SIGKILL, temporary files left: {left:?}");
}

#[test]
fn sigterm_and_sigint_mid_build_remove_temporary_files() {
    for (sig, code) in [("TERM", 143), ("INT", 130)] {
        let work = scratch();
        let (mut child, out) = start_stalled_build(work.path());
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(code), "SIG{sig}: {err}");
        assert!(err.contains("interrupted by signal"), "{err}");
        assert!(names(&out).is_empty(), "SIG{sig}: {:?}", names(&out));
    }
}

// ------------------------------------------------------------------ unpack safety

/// The canary beside the output directory, which no unpack may touch.
fn canary(work: &Path) -> PathBuf {
    let c = work.join("canary");
    std::fs::create_dir(&c).unwrap();
    std::fs::write(c.join("x"), b"canary").unwrap();
    c
}

fn canary_intact(c: &Path) {
    assert_eq!(names(c), vec!["x".to_string()]);
    assert_eq!(std::fs::read(c.join("x")).unwrap(), b"canary");
    assert!(std::fs::symlink_metadata(c.join("x")).unwrap().is_file());
}

/// Builds a v6 image of `src` into `work/img-NAME` and returns (bootstrap, blob dir).
fn build(src: &Path, work: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = work.join(format!("img-{name}"));
    std::fs::create_dir(&dir).unwrap();
    let boot = dir.join("boot");
    forge(&[
        "create",
        "-D",
        dir.to_str().unwrap(),
        "-B",
        boot.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    (boot, dir)
}

#[test]
fn unpack_never_writes_outside_the_output_directory() {
    let work = scratch();
    let canary = canary(work.path());
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    std::fs::write(src.join("d/file"), b"data").unwrap();
    std::os::unix::fs::symlink(&canary, src.join("abs")).unwrap();
    std::os::unix::fs::symlink(canary.join("x"), src.join("abs-file")).unwrap();
    std::os::unix::fs::symlink("../../canary", src.join("d/up")).unwrap();
    std::os::unix::fs::symlink("../../../../canary/x", src.join("d/e/up-file")).unwrap();
    std::fs::hard_link(src.join("d/file"), src.join("hard")).unwrap();
    std::fs::hard_link(src.join("d/file"), src.join("d/e/hard2")).unwrap();
    let (boot, blobs) = build(&src, work.path(), "links");
    let out = work.path().join("out");
    forge(&[
        "unpack",
        boot.to_str().unwrap(),
        "-D",
        blobs.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    canary_intact(&canary);
    // links stay links; hardlinks share one inode inside the output
    assert_eq!(std::fs::read_link(out.join("abs")).unwrap(), canary);
    assert_eq!(
        std::fs::read_link(out.join("d/up")).unwrap(),
        Path::new("../../canary")
    );
    let a = std::fs::metadata(out.join("d/file")).unwrap();
    let b = std::fs::metadata(out.join("d/e/hard2")).unwrap();
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    assert_eq!(a.nlink(), 3);
    // unpacking again into the now non-empty directory is refused, and changes nothing; the
    // tar asked for in the same run is not left behind either
    let tar = work.path().join("out.tar");
    let err = forge_fails(&[
        "unpack",
        boot.to_str().unwrap(),
        "-D",
        blobs.to_str().unwrap(),
        "-o",
        tar.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("not empty"), "{err}");
    assert!(!tar.exists());
    // an output directory that is a symlink (to the canary) is refused
    let link_out = work.path().join("link-out");
    std::os::unix::fs::symlink(&canary, &link_out).unwrap();
    let err = forge_fails(&[
        "unpack",
        boot.to_str().unwrap(),
        "-D",
        blobs.to_str().unwrap(),
        "--output-dir",
        link_out.to_str().unwrap(),
    ]);
    assert!(err.contains("not a directory"), "{err}");
    canary_intact(&canary);
    assert!(names(work.path()).iter().all(|n| !is_temp(n)));
}

/// Replaces the only occurrence of `from` in the bootstrap with `to` (same length).
fn patch(boot: &Path, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut b = std::fs::read(boot).unwrap();
    let hits: Vec<usize> = b
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{:?} occurs {} times", from, hits.len());
    b[hits[0]..hits[0] + to.len()].copy_from_slice(to);
    std::fs::write(boot, b).unwrap();
}

#[test]
fn unpack_rejects_crafted_dirent_names() {
    let work = scratch();
    let canary = canary(work.path());
    // (case, file to create, bytes to find, bytes to put, what the error must say)
    type Case<'a> = (&'a str, &'a str, &'a [u8], &'a [u8], &'a str);
    let cases: [Case; 4] = [
        (
            "slash",
            "evilXslash",
            b"evilXslash",
            b"evil/slash",
            "invalid file name",
        ),
        ("dotdot", "~^", b"~^", b"..", "invalid file name"),
        ("empty", "~~~~", b"~~~~", b"\0~~~", "invalid file name"),
        ("nul", "nu0l", b"nu0l", b"nu\0l", "invalid file name"),
    ];
    for (case, file, from, to, want) in cases {
        let src = work.path().join(format!("src-{case}"));
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d").join(file), b"payload").unwrap();
        std::fs::write(src.join("d/aaa"), b"a").unwrap();
        std::fs::write(src.join("d/zzz"), b"z").unwrap();
        let (boot, blobs) = build(&src, work.path(), case);
        patch(&boot, from, to);
        let out = work.path().join(format!("out-{case}"));
        let err = forge_fails(&[
            "unpack",
            boot.to_str().unwrap(),
            "-D",
            blobs.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ]);
        assert!(err.contains(want), "{case}: {err}");
        assert!(!out.exists(), "{case}: a partial output directory was left");
        canary_intact(&canary);
    }
    // a symlink and a directory under the same name: the directory's children must never be
    // written through the symlink
    let src = work.path().join("src-shadow");
    std::fs::create_dir_all(src.join("suc")).unwrap();
    std::fs::write(src.join("suc/x"), b"overwritten!").unwrap();
    std::os::unix::fs::symlink(&canary, src.join("sub")).unwrap();
    let (boot, blobs) = build(&src, work.path(), "shadow");
    patch(&boot, b"suc", b"sub");
    let out = work.path().join("out-shadow");
    let err = forge_fails(&[
        "unpack",
        boot.to_str().unwrap(),
        "-D",
        blobs.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(!err.is_empty());
    println!("shadowing directory: {err}");
    assert!(!out.exists());
    canary_intact(&canary);
    assert!(names(work.path()).iter().all(|n| !is_temp(n)));
}

#[test]
fn tar_entries_through_a_symlink_are_rejected() {
    let work = scratch();
    let mut t = Vec::new();
    let mut link = tar_header("sub", 0);
    link[156] = b'2';
    link[157..166].copy_from_slice(b"../canary");
    link[148..156].fill(b' ');
    let sum: u32 = link.iter().map(|b| u32::from(*b)).sum();
    link[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    t.extend_from_slice(&link);
    t.extend_from_slice(&tar_header("sub/evil", 5));
    t.extend_from_slice(&[b'e'; 512]);
    t.extend_from_slice(&[0; 1024]);
    let tar = work.path().join("evil.tar");
    std::fs::write(&tar, t).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let err = forge_fails(&[
        "create",
        "-t",
        "tar-rafs",
        "-D",
        out.to_str().unwrap(),
        "-B",
        out.join("boot").to_str().unwrap(),
        tar.to_str().unwrap(),
    ]);
    assert!(err.contains("sub/evil"), "{err}");
    assert!(err.contains("is not a directory"), "{err}");
    assert!(names(&out).is_empty(), "{:?}", names(&out));
}

// ------------------------------------------------------------------ limits

/// A PAX header block of type `kind` (`x` or `g`) followed by its records.
fn pax(kind: u8, records: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let base = k.len() + v.len() + 3;
        let mut len = base + 1;
        while len != base + len.to_string().len() {
            len = base + len.to_string().len();
        }
        body.extend_from_slice(format!("{len} {k}=").as_bytes());
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    let mut h = tar_header("PaxHeader", body.len() as u64);
    h[156] = kind;
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(&body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn read(tar: &[u8]) -> Result<erofs_forge::Tree, String> {
    struct Skip;
    impl erofs_forge::fuzzing::FileData for Skip {
        fn file(
            &mut self,
            _: erofs_forge::InodeId,
            _: &mut dyn std::io::Read,
            _: u64,
            _: erofs_forge::fuzzing::DataLocation,
            _: &Path,
        ) -> erofs_forge::Result<Option<Vec<erofs_forge::ChunkId>>> {
            Ok(None)
        }
    }
    let mut input = tar;
    erofs_forge::fuzzing::read_tar(&mut input, Path::new("t.tar"), &mut Skip)
        .map_err(|e| e.to_string())
}

fn with_entry(mut t: Vec<u8>) -> Vec<u8> {
    t.extend_from_slice(&tar_header("f", 0));
    t.extend_from_slice(&[0; 1024]);
    t
}

#[test]
fn tar_xattr_limits_give_clear_errors() {
    // a value over XATTR_SIZE_MAX
    let t = with_entry(pax(b'x', &[("SCHILY.xattr.user.big", vec![b'v'; 65537])]));
    let err = read(&t).unwrap_err();
    assert!(err.contains("the limit is 65536"), "{err}");
    // a name over XATTR_NAME_MAX
    let name = format!("SCHILY.xattr.user.{}", "n".repeat(251));
    let t = with_entry(pax(b'x', &[(name.as_str(), b"v".to_vec())]));
    let err = read(&t).unwrap_err();
    assert!(
        err.contains("xattr name of 256 bytes (the limit is 255)"),
        "{err}"
    );
    // too many xattr bytes on one entry
    let many: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("SCHILY.xattr.user.k{i}"), vec![b'v'; 60000]))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = many.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let err = read(&with_entry(pax(b'x', &refs))).unwrap_err();
    assert!(
        err.contains("bytes of xattrs (the limit is 262144)"),
        "{err}"
    );
    // global headers: copied into every entry, so capped at 64 KiB in all
    let mut t = Vec::new();
    for i in 0..3 {
        let k = format!("SCHILY.xattr.user.g{i}");
        t.extend(pax(b'g', &[(k.as_str(), vec![b'v'; 30000])]));
    }
    let err = read(&with_entry(t)).unwrap_err();
    assert!(err.contains("global headers set"), "{err}");
    // repeating the same global name replaces it: no growth
    let mut t = Vec::new();
    for _ in 0..10 {
        t.extend(pax(b'g', &[("SCHILY.xattr.user.g", vec![b'v'; 30000])]));
    }
    let tree = read(&with_entry(t)).unwrap();
    let f = tree[erofs_forge::EntryId::ROOT].children[0];
    assert_eq!(tree.inode_of(f).xattrs.len(), 1);
}

#[test]
fn pax_header_size_is_capped() {
    let mut h = tar_header("PaxHeader", 17 << 20);
    h[156] = b'x';
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let err = read(&with_entry(h.to_vec())).unwrap_err();
    assert!(err.contains("the limit is 16777216"), "{err}");
}
