//! The umoci-built test image of issue #5: four layers with deletions of files and whole
//! directories, a directory recreated, a file turned into a directory, hardlinks, symlinks, a
//! fifo, devices, mode and owner changes, and a hand-written layer with an opaque directory and
//! implied parents; and umoci's own unpack of it, the tree every conversion must give. Used by
//! the CLI tests and by `cargo xtask readers`.

use crate::common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed:\n{}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sh(script: &str) {
    run(Command::new("sh").args(["-ec", script]));
}

pub fn umoci(args: &[&str]) {
    run(Command::new("umoci").args(args));
}

pub fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

pub fn why_skip() -> Option<String> {
    if !is_root() {
        return Some("not root (devices and owners need root)".into());
    }
    let have = Command::new("umoci").arg("--version").output();
    if !have.map(|o| o.status.success()).unwrap_or(false) {
        return Some("umoci is not installed".into());
    }
    let have = Command::new("skopeo").arg("--version").output();
    if !have.map(|o| o.status.success()).unwrap_or(false) {
        return Some("skopeo is not installed".into());
    }
    None
}

/// Layer 1 (umoci): the base rootfs; with `EROFS_FORGE_BASE_ROOTFS=DIR` (e.g. a debootstrap
/// tree) that tree is copied in first, so the same checks run on a real distribution.
pub fn base_rootfs(r: &Path) {
    if let Ok(base) = std::env::var("EROFS_FORGE_BASE_ROOTFS") {
        sh(&format!("cp -a {base}/. {}", r.display()));
        eprintln!("base layer: {base}");
    }
    write(&r.join("etc/hostname"), b"forge\n");
    write(&r.join("etc/remove-me"), b"deleted in layer 2\n");
    write(&r.join("gone/deep/a"), b"the whole directory goes\n");
    write(&r.join("gone/b"), b"b\n");
    write(&r.join("opq/a"), b"hidden by the opaque marker\n");
    write(&r.join("opq/sub/c"), b"c\n");
    write(&r.join("recreated/old"), b"old\n");
    write(&r.join("file-then-dir"), b"a file in layer 1\n");
    write(&r.join("var/lib/app/data"), b"app data\n");
    write(&r.join("modes/m"), b"mode changes\n");
    write(&r.join("modes/own"), b"owner changes\n");
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(&r.join("usr/lib/big"), &big);
    write(&r.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n");
    fs::set_permissions(r.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    sh(&format!(
        "cd {0}; chown -R 1000:1000 var/lib/app; chmod 0750 var/lib/app; \
         touch -d @1600000000 var/lib/app var/lib/app/data; chmod 0701 opq",
        r.display()
    ));
}

/// Layer 2 (umoci): deletions, a recreated directory, a file becoming a directory, links,
/// special files, modes and owners.
pub fn second_layer(r: &Path) {
    sh(&format!(
        "cd {0}; rm etc/remove-me; rm -r gone; rm -r recreated; mkdir recreated; \
         echo new > recreated/new; rm file-then-dir; mkdir file-then-dir; \
         echo inside > file-then-dir/inside; echo linked > hl1; ln hl1 hl2; ln hl1 usr/hl3; \
         ln -s ../usr/lib/big etc/big-link; ln -s /nowhere dangling; mkfifo fifo; \
         mknod null-dev c 1 3; mknod loop-dev b 7 0; chmod 0600 modes/m; \
         chown 123:456 modes/own; chmod 4755 usr/bin/tool; echo more >> usr/lib/big",
        r.display()
    ));
}

/// Layer 3 (by hand, `umoci raw add-layer`): an opaque directory, and a file whose parents
/// the tar only implies (they must keep layer 1's metadata).
pub fn third_layer(path: &Path) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("opq/.wh..wh..opq", b"", 0o644);
    add("opq/fresh", b"only this is left in opq\n", 0o644);
    add("var/lib/app/added", b"added under implied parents\n", 0o640);
    b.finish().unwrap();
}

/// Builds the image; returns the layout directory.
pub fn build_image(w: &Path) -> PathBuf {
    let img = w.join("img");
    let bundle = w.join("bundle");
    umoci(&["init", "--layout", s(&img)]);
    umoci(&["new", "--image", &format!("{}:t", s(&img))]);
    umoci(&["unpack", "--image", &format!("{}:t", s(&img)), s(&bundle)]);
    base_rootfs(&bundle.join("rootfs"));
    umoci(&["repack", "--image", &format!("{}:t", s(&img)), s(&bundle)]);
    fs::remove_dir_all(&bundle).unwrap();
    umoci(&["unpack", "--image", &format!("{}:t", s(&img)), s(&bundle)]);
    second_layer(&bundle.join("rootfs"));
    umoci(&["repack", "--image", &format!("{}:t", s(&img)), s(&bundle)]);
    fs::remove_dir_all(&bundle).unwrap();
    let l3 = w.join("layer3.tar");
    third_layer(&l3);
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &format!("{}:t", s(&img)),
        s(&l3),
    ]);
    img
}

pub fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

/// The test image (after checking what it needs) and umoci's own unpack of it: the tree a
/// converted image must hold.
pub fn image_and_rootfs(test: &str, w: &Path) -> (PathBuf, PathBuf) {
    if let Some(why) = why_skip() {
        missing(test, &why);
    }
    let img = build_image(w);
    let reference = w.join("reference");
    umoci(&[
        "unpack",
        "--image",
        &format!("{}:t", s(&img)),
        s(&reference),
    ]);
    (img, reference.join("rootfs"))
}

pub fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// The image's manifest (the layout's only index entry).
pub fn manifest_of(layout: &Path) -> serde_json::Value {
    let index = json(&layout.join("index.json"));
    let m = &index["manifests"].as_array().unwrap()[0];
    json(&blob(layout, m["digest"].as_str().unwrap()))
}
