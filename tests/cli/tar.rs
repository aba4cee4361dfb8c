//! Tar sources through the CLI: GNU tar archives of the full fixture tree (plain, gzip, zstd,
//! xz, through a pipe) mounted by the kernel, tarfs images with the tar as their device,
//! upstream byte compatibility, and archives crafted to be hostile.

use crate::common::*;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

// ---------------------------------------------------------------------------------------------
// A tiny tar writer, so hostile archives can be written byte by byte.

#[derive(Clone, Copy)]
enum Magic {
    Posix,
    Gnu,
}

struct H {
    name: Vec<u8>,
    kind: u8,
    size: u64,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Vec<u8>,
    dev: (u32, u32),
    magic: Magic,
    /// Raw overrides applied to the block before the checksum: (offset, bytes).
    patch: Vec<(usize, Vec<u8>)>,
}

fn h(name: &[u8], kind: u8) -> H {
    H {
        name: name.to_vec(),
        kind,
        size: 0,
        mode: if kind == b'5' { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        link: Vec::new(),
        dev: (0, 0),
        magic: Magic::Posix,
        patch: Vec::new(),
    }
}

fn octal(block: &mut [u8; 512], at: usize, len: usize, v: u64) {
    let s = format!("{:0width$o}\0", v, width = len - 1);
    block[at..at + len].copy_from_slice(s.as_bytes());
}

impl H {
    fn block(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        let n = self.name.len().min(100);
        b[..n].copy_from_slice(&self.name[..n]);
        octal(&mut b, 100, 8, u64::from(self.mode));
        octal(&mut b, 108, 8, self.uid);
        octal(&mut b, 116, 8, self.gid);
        octal(&mut b, 124, 12, self.size);
        octal(&mut b, 136, 12, self.mtime);
        b[156] = self.kind;
        let l = self.link.len().min(100);
        b[157..157 + l].copy_from_slice(&self.link[..l]);
        match self.magic {
            Magic::Posix => b[257..265].copy_from_slice(b"ustar\x0000"),
            Magic::Gnu => b[257..265].copy_from_slice(b"ustar  \0"),
        }
        octal(&mut b, 329, 8, u64::from(self.dev.0));
        octal(&mut b, 337, 8, u64::from(self.dev.1));
        for (at, bytes) in &self.patch {
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|x| u32::from(*x)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        b
    }
}

#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn header(&mut self, h: &H) -> &mut Self {
        self.0.extend_from_slice(&h.block());
        self
    }
    fn data(&mut self, d: &[u8]) -> &mut Self {
        self.0.extend_from_slice(d);
        let pad = (512 - d.len() % 512) % 512;
        self.0.extend_from_slice(&vec![0u8; pad]);
        self
    }
    fn file(&mut self, name: &[u8], content: &[u8]) -> &mut Self {
        let mut hd = h(name, b'0');
        hd.size = content.len() as u64;
        self.header(&hd).data(content)
    }
    fn dir(&mut self, name: &[u8], mode: u32) -> &mut Self {
        let mut hd = h(name, b'5');
        hd.mode = mode;
        self.header(&hd)
    }
    fn link(&mut self, name: &[u8], kind: u8, target: &[u8]) -> &mut Self {
        let mut hd = h(name, kind);
        hd.link = target.to_vec();
        self.header(&hd)
    }
    /// A PAX header of `kind` (`x` or `g`) with correctly sized records.
    fn pax_kind(&mut self, kind: u8, records: &[(&[u8], &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let base = k.len() + v.len() + 3;
            let mut len = base + 1;
            while len != base + len.to_string().len() {
                len = base + len.to_string().len();
            }
            body.extend_from_slice(len.to_string().as_bytes());
            body.push(b' ');
            body.extend_from_slice(k);
            body.push(b'=');
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.pax_raw(kind, &body)
    }
    fn pax(&mut self, records: &[(&[u8], &[u8])]) -> &mut Self {
        self.pax_kind(b'x', records)
    }
    fn pax_raw(&mut self, kind: u8, body: &[u8]) -> &mut Self {
        let mut hd = h(b"./PaxHeaders/x", kind);
        hd.size = body.len() as u64;
        self.header(&hd).data(body)
    }
    fn gnu_long(&mut self, kind: u8, name: &[u8]) -> &mut Self {
        let mut body = name.to_vec();
        body.push(0);
        let mut hd = h(b"././@LongLink", kind);
        hd.magic = Magic::Gnu;
        hd.size = body.len() as u64;
        self.header(&hd).data(&body)
    }
    fn end(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.0);
        v.extend_from_slice(&[0u8; 1024]);
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Building and checking.

/// Builds `tar` (written to a file) with `-t tar-rafs` plus `extra` flags. Returns the scratch
/// dir (holding `out/boot` and `out/cache`) and stderr on failure.
fn build(tar: &[u8], extra: &[&str]) -> (tempfile::TempDir, Result<(), String>) {
    let dir = scratch();
    let input = dir.path().join("in.tar");
    std::fs::write(&input, tar).unwrap();
    let out = dir.path().join("out");
    let cache = out.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let mut args: Vec<&str> = vec![
        "create",
        "-t",
        "tar-rafs",
        "-D",
        out.to_str().unwrap(),
        "--blob-cache-dir",
        cache.to_str().unwrap(),
        "-B",
        "PLACEHOLDER",
    ];
    let boot = out.join("boot");
    *args.last_mut().unwrap() = boot.to_str().unwrap();
    args.extend_from_slice(extra);
    args.push(input.to_str().unwrap());
    let o = Command::new(bin()).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "erofs-forge panicked:\n{stderr}"
    );
    if o.status.success() {
        (dir, Ok(()))
    } else {
        // nothing is left under a final name (temporary files are gone too)
        let left: Vec<PathBuf> = walkdir::WalkDir::new(&out)
            .min_depth(1)
            .into_iter()
            .map(|e| e.unwrap().path().to_path_buf())
            .filter(|p| p.is_file())
            .collect();
        assert!(left.is_empty(), "files left after a failure: {left:?}");
        (dir, Err(stderr))
    }
}

/// Expects the build to fail with an error naming `entry` and a tar offset.
fn fails(tar: &[u8], entry: &str, reason: &str) {
    let (_d, r) = build(tar, &[]);
    let err = r.expect_err(&format!("{entry:?} should be rejected"));
    assert!(
        err.contains(entry) && err.contains(reason),
        "error should name {entry:?} and say {reason:?}: {err}"
    );
    assert!(
        err.contains("offset 0x"),
        "error should give the offset: {err}"
    );
}

/// Mounts the image built in `dir` (if this machine can) and returns its manifest.
fn mounted(dir: &Path) -> (Mounted, BTreeMap<Vec<u8>, Desc>) {
    if let Some(why) = cannot_mount() {
        missing("mounting a tar-built image", &why);
    }
    let out = dir.join("out");
    let devices: Vec<PathBuf> = std::fs::read_dir(out.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".blob.data"))
        .collect();
    let m = mount(&out.join("boot"), &devices);
    let man = manifest(m.dir.path());
    (m, man)
}

fn read(m: &Mounted, p: &str) -> Vec<u8> {
    std::fs::read(m.dir.path().join(p)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// (a), (b): the full tree through GNU tar.

/// What the mounted image must equal: the source tree, less what a tar cannot carry and what
/// GNU tar does not record. A tar cannot hold a socket (GNU tar says "socket ignored"); GNU tar
/// 1.34 writes hardlink entries only for regular files and symlinks, so hardlinked devices
/// and fifos come back as separate inodes, exactly as extracting the tar would give them. Which
/// paths the tar links is read from the tar itself.
fn expected_from(src: &Path, tar: &Path) -> BTreeMap<Vec<u8>, Desc> {
    let listing = Command::new("python3")
        .arg("-c")
        .arg(
            "import os,sys,tarfile\n\
             for m in tarfile.open(sys.argv[1]):\n\
             \x20 if m.islnk():\n\
             \x20   for n in (m.name, m.linkname):\n\
             \x20     sys.stdout.buffer.write(os.fsencode(os.path.normpath(n)) + b'\\0')\n",
        )
        .arg(tar)
        .output()
        .unwrap();
    assert!(
        listing.status.success(),
        "listing the tar's hardlinks failed"
    );
    let linked: std::collections::HashSet<Vec<u8>> = listing
        .stdout
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect();
    let mut m = manifest(src);
    m.retain(|_, d| d.kind != 's');
    for (path, d) in m.iter_mut() {
        if d.hardlink.is_some() && !linked.contains(path) {
            d.hardlink = None;
        }
    }
    m
}

fn gnu_tar_of_full_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    if let Some(why) = cannot_mount().or_else(cannot_build_full_tree) {
        missing("the full tree as a GNU tar", &why);
    }
    if !have("tar") {
        missing("the full tree as a GNU tar", "GNU tar is not installed");
    }
    let dir = scratch();
    let src = dir.path().join("src");
    full_tree(&src, false);
    let tar = dir.path().join("full.tar");
    let o = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (dir, src, tar)
}

fn check_mount(boot: &Path, devices: &[PathBuf], expected: &BTreeMap<Vec<u8>, Desc>, what: &str) {
    let m = mount(boot, devices);
    let got = manifest(m.dir.path());
    let d = diff(expected, &got);
    assert!(
        d.is_empty(),
        "{what}: {} differences:\n{}",
        d.len(),
        d.join("\n")
    );
}

#[test]
#[cfg_attr(
    any(no_mount, no_full_tree, no_gnu_tar, no_compressors),
    ignore = "needs a kernel EROFS mount, the full fixture tree (root, setfattr, setfacl, setcap), GNU tar, gzip, zstd and xz"
)]
fn gnu_tar_of_full_tree_mounts_equal_plain_compressed_and_piped() {
    let (dir, src, tar) = gnu_tar_of_full_tree();
    let expected = expected_from(&src, &tar);
    let mut inputs: Vec<(String, PathBuf)> = vec![("plain".into(), tar.clone())];
    for (tool, args) in [("gzip", "-c"), ("zstd", "-qc"), ("xz", "-c")] {
        if !have(tool) {
            missing(
                "gnu_tar_of_full_tree_mounts_equal_plain_compressed_and_piped",
                tool,
            );
        }
        let path = dir.path().join(format!("full.tar.{tool}"));
        let o = Command::new(tool).arg(args).arg(&tar).output().unwrap();
        assert!(o.status.success());
        std::fs::write(&path, o.stdout).unwrap();
        inputs.push((tool.to_string(), path));
    }
    let mut blob_ids = Vec::new();
    for (name, input) in &inputs {
        for piped in [false, true] {
            let out = scratch();
            let cache = out.path().join("cache");
            std::fs::create_dir(&cache).unwrap();
            let boot = out.path().join("boot");
            let args = [
                "create",
                "-t",
                if name == "gzip" {
                    "targz-rafs"
                } else {
                    "tar-rafs"
                },
                "-D",
                out.path().to_str().unwrap(),
                "--blob-cache-dir",
                cache.to_str().unwrap(),
                "-B",
                boot.to_str().unwrap(),
                if piped { "-" } else { input.to_str().unwrap() },
            ];
            let mut child = Command::new(bin())
                .args(args)
                .stdin(if piped { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            if piped {
                // a real pipe, written in pieces while the builder reads
                let mut stdin = child.stdin.take().unwrap();
                let bytes = std::fs::read(input).unwrap();
                std::thread::spawn(move || {
                    for piece in bytes.chunks(7777) {
                        stdin.write_all(piece).unwrap();
                    }
                });
            }
            let o = child.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "{name} (piped: {piped}): {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let data = one_file(&cache, ".blob.data");
            blob_ids.push(data.file_name().unwrap().to_string_lossy().into_owned());
            check_mount(
                &boot,
                &[data],
                &expected,
                &format!("{name}, piped: {piped}"),
            );
        }
    }
    blob_ids.dedup();
    assert_eq!(
        blob_ids.len(),
        1,
        "the same data gives the same blob: {blob_ids:?}"
    );
}

#[test]
#[cfg_attr(
    any(no_mount, no_full_tree, no_gnu_tar),
    ignore = "needs a kernel EROFS mount, the full fixture tree (root, setfattr, setfacl, setcap), GNU tar"
)]
fn tarfs_of_full_tree_mounts_with_the_tar_as_device() {
    let (_dir, src, tar) = gnu_tar_of_full_tree();
    let expected = expected_from(&src, &tar);
    let out = scratch();
    let boot = out.path().join("boot");
    forge(&[
        "create",
        "-t",
        "tar-tarfs",
        "-B",
        boot.to_str().unwrap(),
        tar.to_str().unwrap(),
    ]);
    check_mount(&boot, std::slice::from_ref(&tar), &expected, "tar-tarfs");
    shared_mount_check_tar(&boot, &tar);
    // a compressed tar cannot be referenced in place
    let gz = out.path().join("full.tar.gz");
    let o = Command::new("gzip").arg("-c").arg(&tar).output().unwrap();
    std::fs::write(&gz, o.stdout).unwrap();
    let err = forge_fails(&[
        "create",
        "-t",
        "tar-tarfs",
        "-B",
        out.path().join("b2").to_str().unwrap(),
        gz.to_str().unwrap(),
    ]);
    assert!(err.contains("must not be compressed"), "{err}");
    assert!(!out.path().join("b2").exists());
}

/// The shared checker compares with the tar's own listing (which it reads itself).
fn shared_mount_check_tar(boot: &Path, tar: &Path) {
    let tool = repo().join("../shared/tools/erofs-mount-check");
    if !tool.exists() {
        return;
    }
    let o = Command::new(tool)
        .arg(boot)
        .arg("--device")
        .arg(tar)
        .arg("--expect")
        .arg(tar)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "erofs-mount-check: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Upstream byte compatibility (fixtures built by nydus-image from the same tar).

fn upstream(p: &str) -> PathBuf {
    repo().join("fixtures/upstream").join(p)
}

fn upstream_blob(folder: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(upstream(folder).join("output.json")).unwrap())
            .unwrap();
    v["blobs"][0].as_str().unwrap().to_string()
}

/// Offsets of every inode of a v6 bootstrap and its xattr area size, by walking the tree.
fn inode_offsets(img: &[u8]) -> BTreeMap<usize, usize> {
    let u16at = |o: usize| u16::from_le_bytes([img[o], img[o + 1]]) as usize;
    let u32at = |o: usize| u32::from_le_bytes(img[o..o + 4].try_into().unwrap()) as usize;
    let u64at = |o: usize| u64::from_le_bytes(img[o..o + 8].try_into().unwrap()) as usize;
    let b = 1usize << img[1024 + 12];
    let meta = u32at(1024 + 40) * b;
    let mut out = BTreeMap::new();
    let mut stack = vec![128usize];
    while let Some(nid) = stack.pop() {
        let off = meta + 32 * nid;
        if out.contains_key(&off) {
            continue;
        }
        let xc = u16at(off + 2);
        let xsize = if xc == 0 { 0 } else { 12 + 4 * (xc - 1) };
        out.insert(off, xsize);
        if u16at(off + 4) & 0o170000 != 0o040000 {
            continue;
        }
        let (format, size, u) = (u16at(off), u64at(off + 8), u32at(off + 16));
        let nblocks = size.div_ceil(b);
        for i in 0..nblocks {
            let len = b.min(size - i * b);
            let start = if (format >> 1) & 7 == 2 && i + 1 == nblocks && size % b != 0 {
                off + 64 + xsize
            } else {
                (u + i) * b
            };
            let blk = &img[start..start + len];
            let n = u16::from_le_bytes([blk[8], blk[9]]) as usize / 12;
            for k in 0..n {
                let nid = u64::from_le_bytes(blk[12 * k..12 * k + 8].try_into().unwrap()) as usize;
                stack.push(nid);
            }
        }
    }
    out
}

/// The xattr entries of an inode's area, sorted (upstream writes them in hash-map order).
fn sorted_xattrs(area: &[u8]) -> Vec<Vec<u8>> {
    let mut entries = Vec::new();
    let mut o = 12;
    while o + 4 <= area.len() {
        let len = 4 + area[o] as usize + u16::from_le_bytes([area[o + 2], area[o + 3]]) as usize;
        entries.push(area[o..o + len].to_vec());
        o += len.div_ceil(4) * 4;
    }
    entries.sort();
    entries
}

/// Our bootstrap equals upstream's but for deliberate differences: every inode's
/// mtime nanoseconds (upstream drops them for tar sources) and the order of xattrs.
fn assert_same_but_deliberate(ours: &[u8], theirs: &[u8], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: size");
    let inodes = inode_offsets(ours);
    assert_eq!(
        inodes,
        inode_offsets(theirs),
        "{what}: same inode placement"
    );
    let (mut a, mut b) = (ours.to_vec(), theirs.to_vec());
    let mut nsec_differs = false;
    for (&off, &xsize) in &inodes {
        nsec_differs |= a[off + 40..off + 44] != b[off + 40..off + 44];
        a[off + 40..off + 44].fill(0);
        b[off + 40..off + 44].fill(0);
        if xsize > 0 {
            let (x, y) = (
                &a[off + 64..off + 64 + xsize],
                &b[off + 64..off + 64 + xsize],
            );
            assert_eq!(
                sorted_xattrs(x),
                sorted_xattrs(y),
                "{what}: xattrs at {off:#x}"
            );
            b[off + 64..off + 64 + xsize].copy_from_slice(&a[off + 64..off + 64 + xsize]);
        }
    }
    assert!(
        nsec_differs,
        "{what}: nanoseconds are kept, upstream writes 0"
    );
    let differing: Vec<usize> = (0..a.len()).filter(|i| a[*i] != b[*i]).collect();
    assert!(
        differing.is_empty(),
        "{what}: bytes differ at {:x?}",
        &differing[..differing.len().min(20)]
    );
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn tar_images_match_upstream() {
    let tar = upstream("source-tar-input.tar");
    if !tar.exists() {
        missing(
            "tar_images_match_upstream",
            "the shared upstream fixtures are absent",
        );
    }
    let out = scratch();
    let o = out.path();
    // tar-rafs: same blob bytes, same bootstrap but for the deliberate differences
    forge(&[
        "create",
        "-t",
        "tar-rafs",
        "-D",
        o.to_str().unwrap(),
        "-B",
        o.join("rafs").to_str().unwrap(),
        tar.to_str().unwrap(),
    ]);
    let id = upstream_blob("v6-tar-rafs");
    assert_eq!(
        std::fs::read(o.join(&id)).unwrap(),
        std::fs::read(upstream("v6-tar-rafs/blobs").join(&id)).unwrap()
    );
    assert_same_but_deliberate(
        &std::fs::read(o.join("rafs")).unwrap(),
        &std::fs::read(upstream("v6-tar-rafs/bootstrap")).unwrap(),
        "tar-rafs",
    );
    // targz-rafs with lz4: same blob id
    let gz = upstream("source-tar-input.tar.gz");
    let out_gz = forge(&[
        "create",
        "-t",
        "targz-rafs",
        "--compressor",
        "lz4_block",
        "-D",
        o.to_str().unwrap(),
        "-B",
        o.join("gz").to_str().unwrap(),
        gz.to_str().unwrap(),
    ]);
    let id = upstream_blob("v6-targz-rafs");
    assert!(String::from_utf8_lossy(&out_gz.stdout).contains(&id));
    assert!(o.join(&id).is_file());
    // tar-tarfs: the blob id is the tar's sha256; no blob is written
    let before: Vec<_> = std::fs::read_dir(o).unwrap().collect();
    forge(&[
        "create",
        "-t",
        "tar-tarfs",
        "-D",
        o.to_str().unwrap(),
        "-B",
        o.join("tarfs").to_str().unwrap(),
        tar.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_dir(o).unwrap().count(),
        before.len() + 1,
        "only the bootstrap"
    );
    assert_same_but_deliberate(
        &std::fs::read(o.join("tarfs")).unwrap(),
        &std::fs::read(upstream("v6-tar-tarfs/bootstrap")).unwrap(),
        "tar-tarfs",
    );
    assert_eq!(upstream_blob("v6-tar-tarfs").len(), 64);
    if let Some(why) = cannot_mount() {
        missing("tar_images_match_upstream (kernel part)", &why);
    }
    // the kernel serves what upstream's own runtime served
    shared_mount_check_tar(&o.join("tarfs"), &tar);
}

// ---------------------------------------------------------------------------------------------
// (c) hostile and unusual archives.

#[test]
fn traversal_and_bad_names_are_rejected_with_entry_and_offset() {
    fails(&Tar::default().file(b"../x", b"x").end(), "../x", "'..'");
    fails(
        &Tar::default()
            .file(b"ok", b"1")
            .file(b"a/../../x", b"x")
            .end(),
        "a/../../x",
        "'..'",
    );
    fails(&Tar::default().file(b"", b"x").end(), "\"\"", "empty name");
    let long = vec![b'n'; 256];
    fails(
        &Tar::default()
            .pax(&[(b"path", &long)])
            .file(b"short", b"x")
            .end(),
        "nnnn",
        "256 bytes long",
    );
    fails(
        &Tar::default()
            .pax(&[(b"path", b"a\0b")])
            .file(b"short", b"x")
            .end(),
        "a\\0b",
        "NUL",
    );
    fails(
        &Tar::default()
            .link(b"evil", b'1', b"../../etc/passwd")
            .end(),
        "evil",
        "'..'",
    );
    // a component that is not a directory cannot hold entries
    fails(
        &Tar::default().file(b"f", b"1").file(b"f/g", b"2").end(),
        "f/g",
        "not a directory",
    );
    // offsets point at the entry's first header: its PAX header here
    let t = Tar::default()
        .file(b"ok", b"1")
        .pax(&[(b"path", b"../up")])
        .file(b"x", b"")
        .end();
    let (_d, r) = build(&t, &[]);
    assert!(r.unwrap_err().contains("offset 0x400"));
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn absolute_names_and_dot_components_are_made_relative() {
    let t = Tar::default()
        .file(b"/etc/abs", b"absolute")
        .file(b"./././rel//x", b"relative")
        .end();
    let (d, r) = build(&t, &[]);
    r.unwrap();
    {
        let (m, man) = mounted(d.path());
        assert_eq!(read(&m, "etc/abs"), b"absolute");
        assert_eq!(read(&m, "rel/x"), b"relative");
        // directories the tar only implies: 0755, root-owned, mtime 0
        let etc = &man[&b"etc"[..]];
        assert_eq!(
            (etc.kind, etc.mode, etc.uid, etc.gid, etc.mtime),
            ('d', 0o755, 0, 0, (0, 0))
        );
    }
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn pax_values_may_hold_newlines() {
    let t = Tar::default()
        .pax(&[
            (b"path", b"new\nline"),
            (b"SCHILY.xattr.user.multi", b"a\nb\n"),
        ])
        .file(b"placeholder", b"data")
        .pax(&[(b"linkpath", b"target\nwith newline")])
        .link(b"sym", b'2', b"ignored")
        .end();
    let (d, r) = build(&t, &[]);
    r.unwrap();
    {
        let (m, man) = mounted(d.path());
        assert_eq!(read(&m, "new\nline"), b"data");
        assert_eq!(
            man[&b"new\nline"[..]].xattrs,
            vec![(b"user.multi".to_vec(), b"a\nb\n".to_vec())]
        );
        assert_eq!(man[&b"sym"[..]].target, b"target\nwith newline");
        assert!(!man.contains_key(&b"placeholder"[..]));
    }
}

#[test]
fn broken_pax_records_are_rejected() {
    for body in [
        &b"99 path=x\n"[..],
        b"11 path=x\n",
        b"path=x\n",
        b"0 path=x\n",
        b"12 noequals\n",
    ] {
        let t = Tar::default().pax_raw(b'x', body).file(b"f", b"1").end();
        let (_d, r) = build(&t, &[]);
        let e = r.expect_err(&String::from_utf8_lossy(body));
        assert!(e.contains("PAX record") && e.contains("offset 0x0"), "{e}");
    }
}

#[test]
#[cfg_attr(no_compressors, ignore = "needs gzip, zstd and xz")]
fn truncated_and_overrunning_archives_are_rejected() {
    let full = Tar::default()
        .file(b"a", b"1")
        .file(b"big", &[7u8; 3000])
        .end();
    // cut inside the data of "big"
    fails(
        &full[..1024 + 512 + 1000],
        "big",
        "ends inside this entry's data",
    );
    // cut inside a header
    let (_d, r) = build(&full[..1024 + 100], &[]);
    assert!(r.unwrap_err().contains("ends inside a header"));
    // cut at an entry boundary: no end-of-archive block
    let (_d, r) = build(&full[..1024], &[]);
    assert!(r.unwrap_err().contains("end-of-archive"));
    // a size that overruns the data
    let mut hd = h(b"liar", b'0');
    hd.size = 1 << 32;
    let mut t = Tar::default();
    t.header(&hd).data(b"only a little");
    fails(&t.end(), "liar", "ends inside this entry's data");
    // compressed and truncated
    if !have("gzip") {
        missing("truncated_and_overrunning_archives_are_rejected", "gzip");
    }
    {
        let dir = scratch();
        let p = dir.path().join("t.tar");
        std::fs::write(&p, &full).unwrap();
        let gz = Command::new("gzip")
            .arg("-c")
            .arg(&p)
            .output()
            .unwrap()
            .stdout;
        let (_d, r) = build(&gz[..gz.len() / 2], &[]);
        assert!(r.is_err());
    }
    // not a tar at all
    let (_d, r) = build(&[b'x'; 2048], &[]);
    assert!(r.unwrap_err().contains("not a tar"));
    let (_d, r) = build(&[], &[]);
    assert!(r.unwrap_err().contains("empty"));
    // a damaged header further in
    let mut bad = full.clone();
    bad[1024 + 10] ^= 0xff;
    fails(&bad, "big", "checksum");
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn base256_numbers_negative_and_huge() {
    // negative size
    let mut hd = h(b"neg", b'0');
    hd.patch.push((124, vec![0xff; 12]));
    fails(&Tar::default().header(&hd).end(), "neg", "negative");
    // uid beyond 32 bits
    let mut hd = h(b"bigid", b'0');
    hd.patch.push((108, vec![0x80, 0, 0, 1, 0, 0, 0, 0]));
    fails(&Tar::default().header(&hd).end(), "bigid", "does not fit");
    // beyond 64 bits
    let mut hd = h(b"huge", b'0');
    hd.patch.push((
        124,
        vec![
            0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
    ));
    fails(&Tar::default().header(&hd).end(), "huge", "out of range");
    // base-256 uid that fits, and a negative mtime (stored as 0)
    let mut hd = h(b"ok", b'0');
    hd.patch
        .push((108, vec![0x80, 0, 0, 0, 0xee, 0x6b, 0x28, 0x00]));
    hd.patch.push((136, vec![0xff; 12]));
    let (d, r) = build(&Tar::default().header(&hd).end(), &[]);
    r.unwrap();
    {
        let (_m, man) = mounted(d.path());
        let e = &man[&b"ok"[..]];
        assert_eq!((e.uid, e.mtime), (4_000_000_000, (0, 0)));
    }
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn hardlinks_share_the_inode_and_missing_targets_fail() {
    fails(
        &Tar::default()
            .file(b"a", b"1")
            .link(b"b", b'1', b"nowhere")
            .end(),
        "b",
        "\"nowhere\" does not exist",
    );
    let mut dev = h(b"dev", b'3');
    dev.dev = (1, 3);
    let t = Tar::default()
        .file(b"f", b"shared")
        .link(b"s", b'2', b"f")
        .header(&dev)
        .link(b"d/f2", b'1', b"f")
        .link(b"s2", b'1', b"./s")
        .link(b"dev2", b'1', b"/dev")
        .end();
    let (d, r) = build(&t, &[]);
    r.unwrap();
    {
        let (m, _) = mounted(d.path());
        let ino = |p: &str| {
            std::fs::symlink_metadata(m.dir.path().join(p))
                .unwrap()
                .ino()
        };
        assert_eq!(ino("f"), ino("d/f2"));
        assert_eq!(ino("s"), ino("s2"));
        assert_eq!(ino("dev"), ino("dev2"));
        assert_eq!(read(&m, "d/f2"), b"shared");
        let nlink = std::fs::symlink_metadata(m.dir.path().join("f"))
            .unwrap()
            .nlink();
        assert_eq!(nlink, 2);
    }
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn later_entries_replace_earlier_ones() {
    let t = Tar::default()
        .file(b"dup", b"first")
        .file(b"dup", b"second")
        // file replaced by a directory
        .file(b"x", b"a file")
        .dir(b"x/", 0o700)
        .file(b"x/y", b"in x")
        // directory (with contents) replaced by a file
        .dir(b"d", 0o755)
        .file(b"d/z", b"gone")
        .file(b"d", b"now a file")
        // a directory replacing a directory keeps its children and takes the new metadata
        .dir(b"k", 0o700)
        .file(b"k/c", b"kept")
        .dir(b"k", 0o750)
        // hardlinked file replaced: the other name keeps the old content
        .file(b"h1", b"old")
        .link(b"h2", b'1', b"h1")
        .file(b"h1", b"new")
        .end();
    let (d, r) = build(&t, &[]);
    r.unwrap();
    {
        let (m, man) = mounted(d.path());
        assert_eq!(read(&m, "dup"), b"second");
        assert_eq!(man[&b"x"[..]].kind, 'd');
        assert_eq!(man[&b"x"[..]].mode, 0o700);
        assert_eq!(read(&m, "x/y"), b"in x");
        assert_eq!(read(&m, "d"), b"now a file");
        assert!(!man.contains_key(&b"d/z"[..]));
        assert_eq!(man[&b"k"[..]].mode, 0o750);
        assert_eq!(read(&m, "k/c"), b"kept");
        assert_eq!(read(&m, "h1"), b"new");
        assert_eq!(read(&m, "h2"), b"old");
        assert_eq!(man[&b"h2"[..]].hardlink, None, "h1 and h2 are separate now");
        // links of the root count its subdirectories
        let root = std::fs::metadata(m.dir.path()).unwrap();
        assert_eq!(root.nlink(), 2 + 2);
    }
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn whiteouts_stay_ordinary_entries_for_every_spec() {
    let t = Tar::default()
        .dir(b"dir", 0o755)
        .file(b"dir/.wh..wh..opq", b"")
        .file(b".wh.gone", b"")
        .file(b"kept", b"k")
        .end();
    for spec in ["oci", "overlayfs", "none"] {
        let (d, r) = build(&t, &["--whiteout-spec", spec]);
        r.unwrap();
        {
            let (_m, man) = mounted(d.path());
            for p in [&b"dir/.wh..wh..opq"[..], b".wh.gone", b"kept"] {
                assert_eq!(man[p].kind, 'f', "{spec}: {}", String::from_utf8_lossy(p));
            }
        }
    }
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn gnu_long_names_pax_globals_and_libarchive_xattrs() {
    let long_dir = vec![b'd'; 200];
    let mut long_name = long_dir.clone();
    long_name.extend_from_slice(b"/file");
    let long_target = vec![b't'; 300];
    let mut gnu_sym = h(b"ignored", b'2');
    gnu_sym.magic = Magic::Gnu;
    let t = Tar::default()
        // git archive style global header: a comment, and an mtime for every entry
        .pax_kind(b'g', &[(b"comment", b"0123abcd"), (b"mtime", b"1234.5")])
        .gnu_long(b'L', &long_name)
        .file(b"short-ignored", b"long")
        .gnu_long(b'L', b"sym")
        .gnu_long(b'K', &long_target)
        .header(&gnu_sym)
        // libarchive: %-encoded names, base64 values (with and without padding)
        .pax(&[
            (b"LIBARCHIVE.xattr.user.a%3Db", b"dmFsdWU="),
            (b"LIBARCHIVE.xattr.user.nopad", b"dmFsdWU"),
            (b"SCHILY.xattr.trusted.t", b"\x01\x00\x00\x02"),
            (b"mtime", b"-1.25"),
            (b"uid", b"4000000000"),
        ])
        .file(b"xa", b"x")
        .end();
    let (d, r) = build(&t, &[]);
    r.unwrap();
    {
        let (m, man) = mounted(d.path());
        assert_eq!(read(&m, std::str::from_utf8(&long_name).unwrap()), b"long");
        assert_eq!(man[long_name.as_slice()].mtime, (1234, 500_000_000));
        assert_eq!(man[&b"sym"[..]].target, long_target);
        let xa = &man[&b"xa"[..]];
        assert_eq!(xa.uid, 4_000_000_000);
        assert_eq!(xa.mtime, (0, 0), "times before 1970 are stored as 0");
        assert_eq!(
            xa.xattrs,
            vec![
                (b"trusted.t".to_vec(), b"\x01\x00\x00\x02".to_vec()),
                (b"user.a=b".to_vec(), b"value".to_vec()),
                (b"user.nopad".to_vec(), b"value".to_vec()),
            ]
        );
    }
}

#[test]
#[cfg_attr(
    any(no_mount, no_gnu_tar),
    ignore = "needs a kernel EROFS mount, GNU tar"
)]
fn sparse_files_from_gnu_tar_expand() {
    if !have("tar") {
        missing(
            "sparse_files_from_gnu_tar_expand",
            "GNU tar is not installed",
        );
    }
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let f = src.join("sparse");
    {
        let file = std::fs::File::create(&f).unwrap();
        file.set_len(3 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"middle", 1 << 20).unwrap();
        file.write_all_at(&[9u8; 5000], (2 << 20) + 123).unwrap();
        file.write_all_at(b"end", (3 << 20) - 3).unwrap();
    }
    let want = std::fs::read(&f).unwrap();
    let formats: [&[&str]; 4] = [
        &["--format=gnu"],
        &["--format=posix", "--sparse-version=0.0"],
        &["--format=posix", "--sparse-version=0.1"],
        &["--format=posix", "--sparse-version=1.0"],
    ];
    for fmt in formats {
        let tar = dir.path().join("s.tar");
        let o = Command::new("tar")
            .args(fmt)
            .args(["--sparse", "-C"])
            .arg(&src)
            .arg("-cf")
            .arg(&tar)
            .arg("sparse")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{fmt:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let bytes = std::fs::read(&tar).unwrap();
        assert!(bytes.len() < 1 << 20, "{fmt:?}: GNU tar wrote it sparse");
        let (d, r) = build(&bytes, &[]);
        r.unwrap_or_else(|e| panic!("{fmt:?}: {e}"));
        {
            let (m, man) = mounted(d.path());
            assert!(read(&m, "sparse") == want, "{fmt:?}: content");
            assert_eq!(man[&b"sparse"[..]].size, 3 << 20);
        }
        // tarfs cannot point at a sparse file's bytes
        let err = forge_fails(&[
            "create",
            "-t",
            "tar-tarfs",
            "-B",
            dir.path().join("tarfs").to_str().unwrap(),
            tar.to_str().unwrap(),
        ]);
        assert!(err.contains("sparse"), "{err}");
    }
}
