//! The mkfs.erofs front end (issue #26): the binary run as `mkfs.erofs` (a link so named, as
//! containerd's EROFS differ and snapshotter and image publishers find it on PATH) or as
//! `erofs-forge mkfs`, against mkfs.erofs of erofs-utils 1.9 itself
//! (`tests/tools/build-erofs-utils.sh target/erofs-utils-1.9`, which `cargo xtask test` runs).
//! Each call is replayed with the same argv and the same tar on a pipe to both; the two images,
//! mounted by the kernel, must hold the same tree (every field of every entry, mtimes
//! included), and the reference fsck.erofs must pass ours. Also: reproducible calls give the
//! same bytes, failures are one line on stderr and leave no file, and `--help` answers
//! containerd's probe for `--tar=`.
//!
//! Where erofs-utils 1.9.4 is wrong, and ours is not made to follow it:
//! - with `--aufs` it turns a tar's `.wh.NAME` whiteout that carries data into a character
//!   device numbered after the data's block, no whiteout, which `--ovlfs-strip=1` then keeps;
//!   ours makes it a whiteout (0:0), dropped by stripping: the reference's tree is corrected
//!   so (`expected_for`);
//! - it refuses a tar header whose mode, uid, gid or mtime field is empty (all NULs: "invalid
//!   tar @ 0"), which GNU tar and ours read as 0: it is given a copy with zeros there;
//! - an entry whose mtime falls in the build's second gets a compact inode, which has no
//!   nanoseconds (`erofs_should_use_inode_extended` compares seconds only), so the kernel shows
//!   the build's nanoseconds (0) instead of the entry's: the sources here are given times of
//!   their own, away from the build time.

use crate::common::*;
use crate::umoci_image::{blob, image_and_rootfs, manifest_of};

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The UUID every compared call fixes (`-U`): the two superblocks' must agree.
const UUID: &str = "6f1c1b5e-6d2a-4c1e-9a57-3d1f0f6c2b10";

/// A tree as [`manifest`] describes it, keyed by path.
type Tree = BTreeMap<Vec<u8>, Desc>;

/// The calls compared on a tar (`IMG` stands for the image each writes): the plain call of
/// container tools, with each compressor setting, stripped and reproducible, with fixed
/// mtimes, with owners rewritten.
const TAR_CALLS: &[&[&str]] = &[
    &[
        "--tar=f",
        "--aufs",
        "--quiet",
        "-Enoinline_data",
        "-b4096",
        "-U",
        UUID,
        "IMG",
    ],
    &[
        "--tar=f",
        "--aufs",
        "--quiet",
        "-Enoinline_data",
        "-b4096",
        "--sort=none",
        "-zlz4hc",
        "-U",
        UUID,
        "IMG",
    ],
    &[
        "--tar=f",
        "--aufs",
        "--quiet",
        "-Enoinline_data",
        "-b4096",
        "-zlz4hc,12",
        "-U",
        UUID,
        "IMG",
    ],
    &[
        "--tar=f",
        "--aufs",
        "--quiet",
        "-Enoinline_data",
        "-b4096",
        "-zzstd",
        "-U",
        UUID,
        "IMG",
    ],
    &[
        "--tar=f",
        "--aufs",
        "--quiet",
        "-Enoinline_data",
        "-b4096",
        "-zlz4hc",
        "-C65536",
        "-U",
        UUID,
        "IMG",
    ],
    STRIP_CALL,
    &["--tar=f", "--aufs", "--quiet", "-T0", "-U", UUID, "IMG"],
    &[
        "--tar=f",
        "--aufs",
        "--quiet",
        "--force-uid=1234",
        "--gid-offset=10",
        "-U",
        UUID,
        "IMG",
    ],
];

/// `--ovlfs-strip=1` with fixed build time and owners: a reproducible call.
const STRIP_CALL: &[&str] = &[
    "--tar=f",
    "--aufs",
    "--ovlfs-strip=1",
    "--quiet",
    "--sort=none",
    "--all-root",
    "-E",
    "noinline_data",
    "-T0",
    "--mkfs-time",
    "-U",
    UUID,
    "IMG",
];

fn reference(tool: &str) -> PathBuf {
    repo().join("target/erofs-utils-1.9/bin").join(tool)
}

/// Fails the test (see [`missing`]) unless the reference tools and kernel mounts are here.
fn need_reference_and_mount(test: &str) {
    for tool in ["mkfs.erofs", "fsck.erofs"] {
        if !reference(tool).is_file() {
            missing(
                test,
                &format!(
                    "no {} (bash tests/tools/build-erofs-utils.sh target/erofs-utils-1.9)",
                    reference(tool).display()
                ),
            );
        }
    }
    if let Some(why) = cannot_mount() {
        missing(test, &why);
    }
}

/// A link named `mkfs.erofs` to the binary, in `dir`: how callers run it.
fn ours(dir: &Path) -> PathBuf {
    let link = dir.join("mkfs.erofs");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(bin(), &link).unwrap();
    }
    link
}

/// `call` with `IMG` replaced by `image`, and any further operands.
fn argv<'a>(call: &[&'a str], image: &'a Path, operands: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = call
        .iter()
        .map(|a| if *a == "IMG" { s(image) } else { *a })
        .collect();
    v.extend_from_slice(operands);
    v
}

/// Runs `program` and fails the test, with its stderr, unless it succeeded.
fn run_ok(program: &Path, args: &[&str], stdin: &[u8]) {
    let out = run_program(program, args, stdin);
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replays `call` (with `operands` after the image) with ours on `stdin` and with mkfs.erofs
/// 1.9 on `ref_stdin`; returns (ours, the reference's) images, named after `name` in `work`.
fn replay(
    work: &Path,
    name: &str,
    call: &[&str],
    operands: &[&str],
    stdin: &[u8],
    ref_stdin: &[u8],
) -> (PathBuf, PathBuf) {
    let mine = work.join(format!("{name}.ours.erofs"));
    let theirs = work.join(format!("{name}.ref.erofs"));
    run_ok(&ours(work), &argv(call, &mine, operands), stdin);
    run_ok(
        &reference("mkfs.erofs"),
        &argv(call, &theirs, operands),
        ref_stdin,
    );
    (mine, theirs)
}

/// Entries each image stamped with its own build time (a tar's implied directories take it;
/// two runs may fall in different seconds) count as equal: `got`'s take `want`'s time.
fn align_build_times(want: &Tree, theirs: &Path, got: &mut Tree, mine: &Path) {
    let (bt_ref, bt_ours) = (build_time_of(theirs) as i64, build_time_of(mine) as i64);
    for (path, g) in got.iter_mut() {
        if let Some(w) = want.get(path) {
            if w.mtime == (bt_ref, 0) && g.mtime == (bt_ours, 0) {
                g.mtime = w.mtime;
            }
        }
    }
}

/// Mounts both images and compares their trees; `expected` adjusts the reference's tree for
/// the intended differences. Then the reference fsck.erofs checks ours.
fn assert_same_tree(what: &str, mine: &Path, theirs: &Path, expected: &dyn Fn(&mut Tree)) {
    {
        let want_m = mount(theirs, &[]);
        let got_m = mount(mine, &[]);
        let mut want = manifest(want_m.dir.path());
        expected(&mut want);
        let mut got = manifest(got_m.dir.path());
        align_build_times(&want, theirs, &mut got, mine);
        assert!(
            got.len() > 1,
            "{what}: the image holds nothing but its root"
        );
        let d = diff(&want, &got);
        assert!(
            d.is_empty(),
            "{what}: {} differences (\"only in source\": only in mkfs.erofs 1.9's image; \
             left: mkfs.erofs 1.9, right: ours):\n{}",
            d.len(),
            d.join("\n")
        );
    }
    fsck(what, mine);
}

/// The reference fsck.erofs passes `image` (every extent decompressed).
fn fsck(what: &str, image: &Path) {
    let out = Command::new(reference("fsck.erofs"))
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: fsck.erofs 1.9 {} failed ({}):\n{}{}",
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A copy of `tar` whose headers' empty (all-NUL) mode, uid, gid and mtime fields say 0, and
/// how many headers that changed. erofs-utils 1.9.4 refuses such fields ("invalid tar"), which
/// GNU tar and ours read as 0; writers leave them so (umoci_image's hand-written layer: the
/// tar crate's `Header::new_ustar` with no owner set).
fn numbers_filled(tar: &[u8]) -> (Vec<u8>, usize) {
    let mut t = tar.to_vec();
    let mut filled = 0;
    let mut at = 0;
    while at + 512 <= t.len() {
        let h = &mut t[at..at + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let mut changed = false;
        for (start, len) in [(100, 8), (108, 8), (116, 8), (136, 12)] {
            let field = &mut h[start..start + len];
            if field.iter().all(|b| *b == 0) {
                field[..len - 1].fill(b'0');
                changed = true;
            }
        }
        if changed {
            h[148..156].fill(b' ');
            let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            filled += 1;
        }
        let size_field = &h[124..136];
        let size = if size_field[0] & 0x80 != 0 {
            size_field[1..]
                .iter()
                .fold(0u64, |n, b| (n << 8) | u64::from(*b))
        } else {
            let text = String::from_utf8_lossy(size_field);
            let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
            u64::from_str_radix(digits, 8).unwrap_or(0)
        };
        at += 512 + (size.div_ceil(512) * 512) as usize;
    }
    (t, filled)
}

/// The manifest paths of a tar's aufs whiteouts (`DIR/.wh.NAME` gives `DIR/NAME`; opaque
/// marks are not whiteouts).
fn whiteouts(tar_bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut a = tar::Archive::new(tar_bytes);
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let p = e.path_bytes().into_owned();
        let p = p.strip_prefix(b"./").unwrap_or(&p).to_vec();
        let (dir, base) = match p.iter().rposition(|c| *c == b'/') {
            Some(i) => (p[..=i].to_vec(), p[i + 1..].to_vec()),
            None => (Vec::new(), p.clone()),
        };
        if let Some(name) = base.strip_prefix(b".wh.") {
            if !name.starts_with(b".wh.") {
                out.push([dir, name.to_vec()].concat());
            }
        }
    }
    out
}

/// The reference's tree as ours should be for `call` on `tar_bytes`. erofs-utils 1.9.4 turns
/// an aufs whiteout whose tar entry carries data into a character device numbered after the
/// data's block, which is then no whiteout (rdev not 0:0) and is not stripped; ours makes it
/// a whiteout like any other. So at the whiteouts' paths: with `--ovlfs-strip=1` no character
/// device is expected; without, the device is 0:0.
fn expected_for(call: &[&str], tar_bytes: &[u8]) -> impl Fn(&mut Tree) {
    let strip = call
        .iter()
        .any(|a| *a == "--ovlfs-strip=1" || *a == "--ovlfs-strip");
    let at = whiteouts(tar_bytes);
    move |m: &mut Tree| {
        for p in &at {
            let Some(d) = m.get_mut(p).filter(|d| d.kind == 'c') else {
                continue;
            };
            let shown = format!(
                "{} (character device {:#x})",
                String::from_utf8_lossy(p),
                d.rdev
            );
            if strip {
                m.remove(p);
                eprintln!("  left out of mkfs.erofs 1.9's tree: {shown}");
            } else if d.rdev != 0 {
                d.rdev = 0;
                eprintln!("  made a whiteout in mkfs.erofs 1.9's tree: {shown}");
            }
        }
    }
}

/// Replays `calls` on `tar_bytes` (the reference reading them with [`numbers_filled`]).
fn replay_tar_calls(work: &Path, what: &str, tar_bytes: &[u8], calls: &[&[&str]]) {
    let (for_ref, filled) = numbers_filled(tar_bytes);
    if filled > 0 {
        eprintln!("{what}: mkfs.erofs 1.9 reads a copy with {filled} headers' empty numbers as 0");
    }
    for (i, call) in calls.iter().enumerate() {
        let name = format!("{what}-call{}", i + 1);
        let (mine, theirs) = replay(work, &name, call, &[], tar_bytes, &for_ref);
        assert_same_tree(
            &format!("{what}, {call:?}"),
            &mine,
            &theirs,
            &expected_for(call, tar_bytes),
        );
        assert_eq!(uuid_of(&mine), uuid_of(&theirs), "{name}: -U");
        if call.contains(&"-T0") {
            assert_eq!(build_time_of(&mine), 0, "{name}: -T0");
            assert_eq!(build_time_of(&theirs), 0, "{name}: -T0 (mkfs.erofs 1.9)");
        }
        eprintln!("{name}: same tree as mkfs.erofs 1.9, fsck.erofs passes");
        let _ = std::fs::remove_file(&mine);
        let _ = std::fs::remove_file(&theirs);
    }
}

#[test]
#[cfg_attr(
    any(no_mkfs19, no_mount, no_full_tree, no_gnu_tar),
    ignore = "needs erofs-utils 1.9 in target/, a kernel EROFS mount, root with the fixture tools, GNU tar"
)]
fn calls_replayed_on_the_fixture_tree_equal_mkfs_erofs_1_9() {
    let test = "calls_replayed_on_the_fixture_tree_equal_mkfs_erofs_1_9";
    need_reference_and_mount(test);
    if let Some(why) = cannot_build_full_tree() {
        missing(test, &why);
    }
    let w = scratch();
    let src = w.path().join("src");
    full_tree(&src, false);
    // aufs whiteouts, as OCI layers carry them
    let wh = src.join("wh");
    std::fs::create_dir_all(wh.join("opaque")).unwrap();
    for f in ["wh/.wh.gone", "wh/opaque/.wh..wh..opq"] {
        std::fs::write(src.join(f), b"").unwrap();
    }
    // a whiteout with a body (tar writers may keep one): see `expected_for`
    std::fs::write(src.join("wh/.wh.with-data"), b"ignored\n").unwrap();
    std::fs::write(src.join("wh/kept"), b"kept\n").unwrap();
    std::fs::write(src.join("wh/opaque/new"), b"new\n").unwrap();
    // times away from the build's second (see the module's notes), as the rest has
    crate::umoci_image::sh(&format!(
        "cd {}; find wh -exec touch -h -d @1600000000.25 {{}} +; touch -d @1600000000.5 .",
        src.display()
    ));
    let t = w.path().join("layer.tar");
    let out = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-C",
            s(&src),
            "-cf",
            s(&t),
            ".",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tar_bytes = std::fs::read(&t).unwrap();
    let mut listed = whiteouts(&tar_bytes);
    listed.sort();
    assert_eq!(
        listed,
        [&b"wh/gone"[..], b"wh/with-data"],
        "the tar's whiteouts"
    );
    replay_tar_calls(w.path(), "fixture", &tar_bytes, TAR_CALLS);
}

/// Every call of the table on a Debian bookworm base layer (the tar `cargo xtask test`
/// debootstraps): real binaries, libraries and docs, with the compressed calls' filled and
/// plain extents side by side.
#[test]
#[cfg_attr(
    any(no_mkfs19, no_mount, no_debian),
    ignore = "needs erofs-utils 1.9 in target/, a kernel EROFS mount, the Debian tar in target/debian-image"
)]
fn debian_layer_replayed_equal_mkfs_erofs_1_9() {
    let test = "debian_layer_replayed_equal_mkfs_erofs_1_9";
    need_reference_and_mount(test);
    let w = scratch();
    let tar_bytes = std::fs::read(repo().join("target/debian-image/debian.tar")).unwrap();
    replay_tar_calls(w.path(), "debian", &tar_bytes, TAR_CALLS);
}

#[test]
#[cfg_attr(
    any(no_mkfs19, no_mount, no_umoci, no_skopeo),
    ignore = "needs erofs-utils 1.9 in target/, a kernel EROFS mount, umoci, skopeo"
)]
fn umoci_layers_replayed_equal_mkfs_erofs_1_9() {
    let test = "umoci_layers_replayed_equal_mkfs_erofs_1_9";
    need_reference_and_mount(test);
    let w = scratch();
    let (layout, _) = image_and_rootfs(test, w.path());
    let layers: Vec<String> = manifest_of(&layout)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert!(layers.len() >= 3, "layers: {layers:?}");
    let work = w.path().join("images");
    std::fs::create_dir_all(&work).unwrap();
    for (i, d) in layers.iter().enumerate() {
        let gz = std::fs::read(blob(&layout, d)).unwrap();
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        replay_tar_calls(&work, &format!("layer{i}"), &tar_bytes, TAR_CALLS);
    }
}

#[test]
#[cfg_attr(
    any(no_mkfs19, no_mount, no_full_tree),
    ignore = "needs erofs-utils 1.9 in target/, a kernel EROFS mount, root with setfattr and mknod"
)]
fn directory_upper_with_overlayfs_whiteouts() {
    let test = "directory_upper_with_overlayfs_whiteouts";
    need_reference_and_mount(test);
    let w = scratch();
    let upper = w.path().join("upper");
    std::fs::create_dir_all(upper.join("opaque/sub")).unwrap();
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::write(upper.join("etc/hostname"), b"upper\n").unwrap();
    std::fs::write(
        upper.join("opaque/sub/file"),
        b"under an opaque directory\n",
    )
    .unwrap();
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(upper.join("big"), &big).unwrap();
    crate::umoci_image::sh(&format!(
        "cd {0}; mknod etc/removed c 0 0; mknod gone c 0 0; \
         setfattr -n trusted.overlay.opaque -v y opaque; chown 1000:1000 etc/hostname; \
         chmod 0640 etc/hostname; find . -exec touch -h -d @1700000000.75 {{}} +; \
         touch -d @1700000000 etc/hostname big",
        upper.display()
    ));
    let call: &[&str] = &["--quiet", "-Enoinline_data", "IMG"];
    let (mine, theirs) = replay(w.path(), "upper", call, &[s(&upper)], b"", b"");
    assert_same_tree("directory upper", &mine, &theirs, &|_| {});
    // the image holds the whiteouts and the opaque mark as overlayfs reads them
    let m = mount(&mine, &[]);
    let got = manifest(m.dir.path());
    assert_eq!(got[&b"gone"[..]].kind, 'c');
    assert_eq!(got[&b"etc/removed"[..]].rdev, 0);
    assert!(got[&b"opaque"[..]]
        .xattrs
        .contains(&(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())));
}

/// A small layer built in memory: files (one compressible over several windows), a whiteout,
/// an opaque mark, a hardlink, a symlink; no root entry (its parents implied).
fn small_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_650_000_000);
        h.set_entry_type(kind);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    let text: Vec<u8> = (0..600_000u32)
        .flat_map(|i| format!("line {}\n", i % 9973).into_bytes())
        .collect();
    add("usr/", tar::EntryType::Directory, b"", None);
    add("usr/share/text", tar::EntryType::Regular, &text, None);
    add("usr/hello", tar::EntryType::Regular, b"hello\n", None);
    add(
        "usr/hello-link",
        tar::EntryType::Link,
        b"",
        Some("usr/hello"),
    );
    add("usr/sym", tar::EntryType::Symlink, b"", Some("hello"));
    add("usr/.wh.old", tar::EntryType::Regular, b"", None);
    add("etc/.wh..wh..opq", tar::EntryType::Regular, b"", None);
    add(
        "etc/passwd",
        tar::EntryType::Regular,
        b"root:x:0:0::/root:/bin/sh\n",
        None,
    );
    b.into_inner().unwrap()
}

/// The superblock's UUID (the 128-byte superblock at 1024, its UUID at 48).
fn uuid_of(image: &Path) -> [u8; 16] {
    superblock(image)[48..64].try_into().unwrap()
}

/// The superblock's build time (seconds, at 24).
fn build_time_of(image: &Path) -> u64 {
    u64::from_le_bytes(superblock(image)[24..32].try_into().unwrap())
}

/// The 128-byte superblock at 1024 (format::rafs_v6::SuperBlock).
fn superblock(image: &Path) -> [u8; 128] {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(image).unwrap();
    let mut sb = [0u8; 128];
    f.seek(SeekFrom::Start(1024)).unwrap();
    f.read_exact(&mut sb).unwrap();
    assert_eq!(
        &sb[..4],
        &0xE0F5_E1E2u32.to_le_bytes(),
        "{}: EROFS magic",
        image.display()
    );
    sb
}

#[test]
fn reproducible_call_is_byte_identical() {
    let w = scratch();
    let link = ours(w.path());
    let layer = small_layer();
    let images = |name: &str, extra: &[&str]| {
        let img = w.path().join(name);
        let mut args = vec![];
        args.extend_from_slice(extra);
        args.extend(argv(STRIP_CALL, &img, &[]));
        run_ok(&link, &args, &layer);
        std::fs::read(&img).unwrap()
    };
    let first = images("a.erofs", &[]);
    assert_eq!(
        uuid_of(&w.path().join("a.erofs")).to_vec(),
        hex::decode(UUID.replace('-', "")).unwrap(),
        "-U sets the superblock's UUID"
    );
    assert!(first == images("b.erofs", &[]), "a second run differs");
    assert!(
        first == images("c.erofs", &["--workers=1"]),
        "--workers=1 differs"
    );
    // compressed, one thread or several; and `erofs-forge mkfs` as the link
    let z = |name: &str, workers: &str, via_subcommand: bool| {
        let img = w.path().join(name);
        let mut args = vec![workers, "-zlz4hc"];
        args.extend(argv(STRIP_CALL, &img, &[]));
        if via_subcommand {
            args.insert(0, "mkfs");
            let out = run_with_stdin(&args, &layer);
            assert_ok(&out);
        } else {
            run_ok(&link, &args, &layer);
        }
        std::fs::read(&img).unwrap()
    };
    let z1 = z("z1.erofs", "--workers=1", false);
    assert!(z1 != first, "-zlz4hc compressed nothing");
    assert!(
        z1 == z("z2.erofs", "--workers=2", true),
        "-zlz4hc: --workers=1 and --workers=2 (erofs-forge mkfs) differ"
    );
    // the default UUID is random, and so is -U random's
    let mut uuids = Vec::new();
    for (i, extra) in [&[][..], &[][..], &["-Urandom"][..], &["-U", "random"][..]]
        .iter()
        .enumerate()
    {
        let img = w.path().join(format!("random{i}.erofs"));
        let mut args = vec!["--tar=f", "--quiet"];
        args.extend_from_slice(extra);
        args.push(s(&img));
        run_ok(&link, &args, &layer);
        let u = uuid_of(&img);
        assert_ne!(u, [0u8; 16], "{args:?}: no UUID");
        assert!(!uuids.contains(&u), "{args:?}: the UUID of an earlier run");
        uuids.push(u);
    }
    let img = w.path().join("clear.erofs");
    run_ok(&link, &["--tar=f", "--quiet", "-Uclear", s(&img)], &layer);
    assert_eq!(uuid_of(&img), [0u8; 16], "-U clear");
}

/// Fails unless `out` exited 1 with exactly one non-empty line on stderr; returns the line.
fn one_line_failure(what: &str, out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: exit status {} (stderr: {err:?})",
        out.status
    );
    let line = err.strip_suffix('\n').unwrap_or(&err);
    assert!(
        !line.trim().is_empty() && !line.contains('\n'),
        "{what}: stderr is not one line: {err:?}"
    );
    line.to_string()
}

/// The files in `dir` (none may be left by a failed run, not even a temporary one).
fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    let w = scratch();
    let link = ours(w.path());
    let out_dir = w.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let img = out_dir.join("image.erofs");
    let img = s(&img);
    let layer = small_layer();
    // cut in the middle of the large file's data
    let at = layer
        .windows(14)
        .position(|x| x == b"usr/share/text")
        .unwrap()
        + 512
        + 100_000;
    let truncated = &layer[..at];
    let noise: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let not_tar = w.path().join("not-a-tar");
    std::fs::write(&not_tar, &noise).unwrap();
    // what, argv, stdin, the line's start if fixed
    type Case<'a> = (&'a str, Vec<&'a str>, &'a [u8], Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "a tar cut short on stdin",
            vec!["--tar=f", "--aufs", "--quiet", img],
            truncated,
            None,
        ),
        (
            "a compressed tar cut short on stdin",
            vec!["--tar=f", "--quiet", "-zlz4hc", img],
            truncated,
            None,
        ),
        (
            "no tar on stdin",
            vec!["--tar=f", "--quiet", img],
            &noise,
            None,
        ),
        (
            "an unknown long option",
            vec!["--tar=f", "--frobnicate", img],
            &layer,
            Some("mkfs.erofs: unsupported option '--frobnicate' (supported: "),
        ),
        (
            "an unknown short option",
            vec!["-q", "--tar=f", img],
            &layer,
            Some("mkfs.erofs: unsupported option '-q' (supported: "),
        ),
        (
            "a source neither tar, directory nor image",
            vec!["--quiet", img, s(&not_tar)],
            b"",
            None,
        ),
        (
            "a tar file that is not one",
            vec!["--tar=f", "--quiet", img, s(&not_tar)],
            b"",
            None,
        ),
        (
            "an output directory that does not exist",
            vec!["--tar=f", "--quiet", "/nonexistent/dir/img"],
            &layer,
            None,
        ),
    ];
    for (what, args, stdin, starts) in cases {
        let out = run_program(&link, &args, stdin);
        let line = one_line_failure(what, &out);
        if let Some(p) = starts {
            assert!(line.starts_with(p), "{what}: {line:?}");
        }
        assert!(
            out.stdout.is_empty() || !args.contains(&"--quiet"),
            "{what}: --quiet printed"
        );
        let left = files_in(&out_dir);
        assert!(left.is_empty(), "{what}: left {left:?}");
        eprintln!("{what}: {line}");
    }
    assert!(!Path::new("/nonexistent").exists());
}

#[test]
fn help_and_version() {
    let w = scratch();
    let link = ours(w.path());
    for args in [&["--help"][..], &["-h"][..]] {
        let out = run_program(&link, args, b"");
        assert_ok(&out);
        let text = String::from_utf8_lossy(&out.stdout);
        // containerd's probe for tar support
        assert!(text.contains("--tar="), "{args:?}: {text}");
    }
    let sub = run_with_stdin(&["mkfs", "--help"], b"");
    assert_ok(&sub);
    assert!(String::from_utf8_lossy(&sub.stdout).contains("--tar="));
    for args in [&["-V"][..], &["--version"][..]] {
        let out = run_program(&link, args, b"");
        assert_ok(&out);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines()
                .next()
                .is_some_and(|l| l.contains("mkfs.erofs")),
            "{args:?}: {text}"
        );
    }
    let sub = run_with_stdin(&["mkfs", "-V"], b"");
    assert_ok(&sub);
}

/// The gunzipped layers of the umoci image, lowest first.
fn umoci_layer_tars(layout: &Path) -> Vec<Vec<u8>> {
    manifest_of(layout)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let gz = std::fs::read(blob(layout, l["digest"].as_str().unwrap())).unwrap();
            let mut tar_bytes = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut tar_bytes)
                .unwrap();
            tar_bytes
        })
        .collect()
}

/// The differ's tar index call (`--tar=i`), then the tar appended to the image as containerd
/// appends it: mounted as one file, ours gives the tree mkfs.erofs 1.9's gives, but for its
/// whiteouts' device number (1.9.4 writes 0:32, which overlayfs does not take for a
/// whiteout; ours 0:0).
#[test]
#[cfg_attr(
    any(no_mkfs19, no_mount),
    ignore = "needs erofs-utils 1.9 in target/, a kernel EROFS mount"
)]
fn tar_index_mounts_once_the_tar_is_appended() {
    let test = "tar_index_mounts_once_the_tar_is_appended";
    need_reference_and_mount(test);
    let w = scratch();
    let tar_bytes = small_layer();
    let call = ["--tar=i", "--aufs", "--quiet", "-b4096", "-U", UUID, "IMG"];
    let (mine, theirs) = replay(w.path(), "index", &call, &[], &tar_bytes, &tar_bytes);
    for image in [&mine, &theirs] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(image)
            .unwrap();
        f.write_all(&tar_bytes).unwrap();
    }
    let want_m = mount(&theirs, &[]);
    let got_m = mount(&mine, &[]);
    let mut want = manifest(want_m.dir.path());
    for d in want.values_mut() {
        if d.kind == 'c' && d.rdev == 32 {
            d.rdev = 0;
        }
    }
    let mut got = manifest(got_m.dir.path());
    align_build_times(&want, &theirs, &mut got, &mine);
    assert!(got.contains_key(&b"usr/share/text"[..]), "{:?}", got.keys());
    let d = diff(&want, &got);
    assert!(d.is_empty(), "{}", d.join("\n"));
    assert_eq!(got[&b"usr/old"[..]].rdev, 0, "a whiteout is 0:0");
}

/// The snapshotter's fsmerge call over each umoci layer made by the differ's call: mounted with
/// the layers as its devices, in order, the merged image holds what `umoci unpack` gives.
/// Then the image converted with `create -t oci --layer-format erofs`: its layers, merged the
/// same way, hold it too; skopeo reads the layout; each layer is its own diff_id.
#[test]
#[cfg_attr(
    any(no_mount, no_umoci, no_skopeo),
    ignore = "needs a kernel EROFS mount, umoci, skopeo"
)]
fn fsmerge_and_native_erofs_layers_equal_umoci_unpack() {
    let test = "fsmerge_and_native_erofs_layers_equal_umoci_unpack";
    if let Some(why) = cannot_mount() {
        missing(test, &why);
    }
    let w = scratch();
    let (layout, rootfs) = image_and_rootfs(test, w.path());
    let call = [
        "--tar=f",
        "--aufs",
        "--quiet",
        "-Enoinline_data",
        "-b4096",
        "IMG",
    ];
    let mut layers = Vec::new();
    for (i, tar_bytes) in umoci_layer_tars(&layout).iter().enumerate() {
        let image = w.path().join(format!("layer{i}.erofs"));
        run_ok(&ours(w.path()), &argv(&call, &image, &[]), tar_bytes);
        layers.push(image);
    }
    // directories an upper layer only implies (parents of its entries, never listed: umoci
    // lists only what changed) are made as mkfs.erofs makes them (0777 root, 0755 plus the
    // parent's write bits, the parent's owner and time), so on top of a lower layer they show
    // that, as overlayfs over the same layer images does, not the lower directory (umoci's)
    let implied: Vec<Vec<u8>> = umoci_layer_tars(&layout)
        .iter()
        .skip(1)
        .flat_map(|t| implied_dirs(t))
        .collect();
    let merged_equals_umoci = |what: &str, layers: &[PathBuf]| {
        let meta = w.path().join(format!("{what}.fsmeta.erofs"));
        let mut args = vec!["--aufs", "--ovlfs-strip=1", "--quiet", s(&meta)];
        args.extend(layers.iter().map(|l| s(l)));
        run_ok(&ours(w.path()), &args, b"");
        let m = mount(&meta, layers);
        let got = manifest(m.dir.path());
        // overlayfs over the same layers is what the merge stands in for
        let over = overlay_of(layers);
        let d = diff(&manifest(over.path()), &got);
        assert!(d.is_empty(), "{what} against overlayfs: {}", d.join("\n"));
        drop(over);
        let mut want = manifest(&rootfs);
        let mut got = got;
        for p in &implied {
            for t in [&mut want, &mut got] {
                if let Some(e) = t.get_mut(p) {
                    (e.mode, e.uid, e.gid, e.mtime) = (0, 0, 0, (0, 0));
                }
            }
        }
        let d = diff(&want, &got);
        assert!(
            d.is_empty(),
            "{what} against umoci unpack: {}",
            d.join("\n")
        );
    };
    merged_equals_umoci("differ layers", &layers);

    let out = w.path().join("erofs-layout");
    forge(&[
        "create",
        "-t",
        "oci",
        "--layer-format",
        "erofs",
        "-l",
        "warn",
        "-D",
        s(&out),
        &format!("{}:t", s(&layout)),
    ]);
    let inspected = Command::new("skopeo")
        .args(["inspect", &format!("oci:{}", s(&out))])
        .output()
        .unwrap();
    assert!(
        inspected.status.success(),
        "{}",
        String::from_utf8_lossy(&inspected.stderr)
    );
    let copied = Command::new("skopeo")
        .args([
            "copy",
            &format!("oci:{}", s(&out)),
            &format!("oci:{}:t", s(&w.path().join("copy"))),
        ])
        .output()
        .unwrap();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let manifest_doc = manifest_of(&out);
    let config_digest = manifest_doc["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&out, config_digest)).unwrap()).unwrap();
    assert_eq!(config["os.features"], serde_json::json!(["erofs"]));
    let mut native = Vec::new();
    for (i, l) in manifest_doc["layers"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(l["mediaType"], "application/vnd.erofs.layer.v1");
        assert_eq!(
            config["rootfs"]["diff_ids"][i], l["digest"],
            "diff_id of layer {i}"
        );
        let path = blob(&out, l["digest"].as_str().unwrap());
        assert_eq!(
            sha256_hex(&std::fs::read(&path).unwrap()),
            l["digest"].as_str().unwrap()[7..]
        );
        native.push(path);
    }
    merged_equals_umoci("native layers", &native);
}

/// The directories `tar` only implies: parents of its entries that it does not list (the
/// root counts as the empty path).
fn implied_dirs(tar_bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut listed = std::collections::BTreeSet::new();
    let mut parents = std::collections::BTreeSet::new();
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let p = e.path_bytes().into_owned();
        let p: Vec<u8> = p
            .strip_prefix(b"./")
            .unwrap_or(&p)
            .strip_suffix(b"/")
            .unwrap_or(p.strip_prefix(b"./").unwrap_or(&p))
            .to_vec();
        let mut at = p.clone();
        while let Some(i) = at.iter().rposition(|c| *c == b'/') {
            at.truncate(i);
            parents.insert(at.clone());
        }
        parents.insert(Vec::new());
        listed.insert(p);
    }
    parents.difference(&listed).cloned().collect()
}

/// overlayfs over the EROFS `layers` (lowest first), each mounted by the kernel: what
/// containerd mounts when it does not merge. Unmounted when dropped.
fn overlay_of(layers: &[PathBuf]) -> Overlay {
    let lowers: Vec<Mounted> = layers.iter().map(|l| mount(l, &[])).collect();
    let dir = scratch();
    let lowerdir: Vec<&str> = lowers.iter().rev().map(|m| s(m.dir.path())).collect();
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lowerdir.join(":")))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "overlay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Overlay {
        dir,
        _lowers: lowers,
    }
}

/// An overlayfs mount and the layer mounts under it.
struct Overlay {
    dir: tempfile::TempDir,
    _lowers: Vec<Mounted>,
}

impl Overlay {
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// `--exclude-path` and `--exclude-regex` on a directory source leave out what erofs-utils
/// 1.9 leaves out (paths relative to the source; a regex matching anywhere in one).
#[test]
#[cfg_attr(
    any(no_mkfs19, no_mount),
    ignore = "needs erofs-utils 1.9 in target/, a kernel EROFS mount"
)]
fn directory_exclusions_equal_mkfs_erofs_1_9() {
    let test = "directory_exclusions_equal_mkfs_erofs_1_9";
    need_reference_and_mount(test);
    let w = scratch();
    let src = w.path().join("src");
    for (p, data) in [
        ("keep/a", &b"a"[..]),
        ("keep/skip.log", b"log"),
        ("drop/inner/b", b"b"),
        ("top.log", b"top"),
        ("c", b"c"),
    ] {
        let path = src.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
    }
    // times away from the build's second (erofs-utils drops nanoseconds there)
    let touched = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find {} -exec touch -h -d @1600000000.25 {{}} +",
            s(&src)
        ))
        .status()
        .unwrap();
    assert!(touched.success());
    let call = [
        "--quiet",
        "-Enoinline_data",
        "--exclude-path=drop",
        "--exclude-path=c",
        "--exclude-regex=\\.log$",
        "-U",
        UUID,
        "IMG",
    ];
    let (mine, theirs) = replay(w.path(), "excl", &call, &[s(&src)], b"", b"");
    assert_same_tree(test, &mine, &theirs, &|_| {});
    let m = mount(&mine, &[]);
    let got = manifest(m.dir.path());
    let names: Vec<String> = got
        .keys()
        .map(|k| String::from_utf8_lossy(k).into())
        .collect();
    assert_eq!(names, ["", "keep", "keep/a"], "{names:?}");
}

/// `--incremental=data` (appending a layer to an image): the umoci image's layers applied one
/// after the other onto the first one's image give the tree erofs-utils 1.9 gives for the same
/// calls; fsck passes; an image whose files are compressed is refused in one line, unchanged.
#[test]
#[cfg_attr(
    any(no_mkfs19, no_mount, no_umoci, no_skopeo),
    ignore = "needs erofs-utils 1.9 in target/, a kernel EROFS mount, umoci, skopeo"
)]
fn incremental_layers_equal_mkfs_erofs_1_9() {
    let test = "incremental_layers_equal_mkfs_erofs_1_9";
    need_reference_and_mount(test);
    let w = scratch();
    let (layout, _) = image_and_rootfs(test, w.path());
    let tars = umoci_layer_tars(&layout);
    let call = [
        "--tar=f",
        "--aufs",
        "--quiet",
        "-Enoinline_data",
        "-U",
        UUID,
        "IMG",
    ];
    let more = [
        "--tar=f",
        "--aufs",
        "--quiet",
        "-Enoinline_data",
        "--incremental=data",
        "IMG",
    ];
    let mine = w.path().join("inc.ours.erofs");
    let theirs = w.path().join("inc.ref.erofs");
    // ours applying the later layers onto erofs-utils' image of the first: our decoder reads
    // an image the upstream tool laid out (its metadata first, compact inodes)
    let onto_theirs = w.path().join("inc.cross.erofs");
    let mut layer_images = Vec::new();
    for (i, t) in tars.iter().enumerate() {
        // erofs-utils refuses tar headers with empty numeric fields (see the module's note)
        let (filled, _) = numbers_filled(t);
        let args: &[&str] = if i == 0 { &call } else { &more };
        run_ok(&ours(w.path()), &argv(args, &mine, &[]), t);
        run_ok(&reference("mkfs.erofs"), &argv(args, &theirs, &[]), &filled);
        if i == 0 {
            std::fs::copy(&theirs, &onto_theirs).unwrap();
        } else {
            run_ok(&ours(w.path()), &argv(&more, &onto_theirs, &[]), t);
        }
        let layer = w.path().join(format!("layer{i}.ref.erofs"));
        run_ok(&reference("mkfs.erofs"), &argv(&call, &layer, &[]), &filled);
        layer_images.push(layer);
    }
    // and our merge of erofs-utils' layer images mounts as overlayfs over them does
    let meta = w.path().join("ref-layers.fsmeta.erofs");
    let mut args = vec!["--aufs", "--ovlfs-strip=1", "--quiet", s(&meta)];
    args.extend(layer_images.iter().map(|l| s(l)));
    run_ok(&ours(w.path()), &args, b"");
    {
        let m = mount(&meta, &layer_images);
        let over = overlay_of(&layer_images);
        let d = diff(&manifest(over.path()), &manifest(m.dir.path()));
        assert!(
            d.is_empty(),
            "merge of erofs-utils' layers: {}",
            d.join("\n")
        );
    }
    // a directory a later layer only implies keeps the image's metadata in ours; erofs-utils
    // gives it new invented metadata (0777 root, the build time), as if the image had none
    let implied: Vec<Vec<u8>> = tars.iter().skip(1).flat_map(|t| implied_dirs(t)).collect();
    let blank = |t: &mut Tree| {
        for p in &implied {
            if let Some(e) = t.get_mut(p) {
                (e.mode, e.uid, e.gid, e.mtime) = (0, 0, 0, (0, 0));
            }
        }
    };
    for image in [&mine, &onto_theirs] {
        let (want_m, got_m) = (mount(&theirs, &[]), mount(image, &[]));
        let (mut want, mut got) = (manifest(want_m.dir.path()), manifest(got_m.dir.path()));
        align_build_times(&want, &theirs, &mut got, image);
        blank(&mut want);
        blank(&mut got);
        let d = diff(&want, &got);
        assert!(
            d.is_empty(),
            "{test} ({}): {}",
            image.display(),
            d.join("\n")
        );
        fsck(test, image);
    }

    let packed = w.path().join("packed.erofs");
    let zcall = ["--tar=f", "--quiet", "-zlz4hc", "IMG"];
    run_ok(&ours(w.path()), &argv(&zcall, &packed, &[]), &tars[0]);
    let before = std::fs::read(&packed).unwrap();
    let out = run_program(&ours(w.path()), &argv(&more, &packed, &[]), &tars[1]);
    let err = one_line_failure("incremental onto compressed files", &out);
    assert!(err.contains("compressed"), "{err}");
    assert!(
        std::fs::read(&packed).unwrap() == before,
        "the image was changed"
    );
}
