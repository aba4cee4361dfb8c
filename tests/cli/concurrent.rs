//! Issue #18: CI converts layers in parallel into one shared `-D` directory. Eight processes
//! building four layers twice each into the same `-D` at once all succeed, every blob is
//! complete and equal to a serial build's, no temporary file remains, and two processes
//! publishing the same content-addressed blob at the same instant both succeed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::*;
use crate::signals::until_stopped;

/// Four layers; layers 2 and 3 share most of their data (their blobs dedup differently but
/// hold the same chunks), layer 4 is tiny.
fn layers(base: &Path) -> Vec<PathBuf> {
    let noise = crate::compact::noise;
    let l: Vec<PathBuf> = (1..=4).map(|i| base.join(format!("l{i}"))).collect();
    for d in &l {
        fs::create_dir_all(d.join("etc")).unwrap();
    }
    fs::write(l[0].join("big"), noise(1, 3 << 20)).unwrap();
    fs::write(l[0].join("etc/conf"), b"one\n").unwrap();
    for (i, d) in l[1..3].iter().enumerate() {
        fs::write(d.join("shared"), noise(2, 2 << 20)).unwrap();
        fs::write(d.join("own"), noise(10 + i as u64, 500_000)).unwrap();
    }
    fs::write(l[3].join("etc/conf"), b"four\n").unwrap();
    l
}

/// Every file in `dir` and its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn build(src: &Path, blobs: &Path, boot: &Path, stop_at: Option<&str>) -> Child {
    let mut cmd = Command::new(bin());
    cmd.args(["create", "-D", s(blobs), "-B", s(boot), s(src)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(p) = stop_at {
        cmd.env("EROFS_FORGE_STOP_AT", p);
    }
    cmd.spawn().unwrap()
}

/// Serial builds of `srcs` into `w/serial`: the blob directory and each layer's bootstrap.
fn serial(w: &Path, srcs: &[PathBuf]) -> (BTreeMap<String, Vec<u8>>, Vec<Vec<u8>>) {
    let blobs = w.join("serial");
    fs::create_dir_all(&blobs).unwrap();
    let mut boots = Vec::new();
    for (i, src) in srcs.iter().enumerate() {
        let boot = w.join(format!("serial-{i}.boot"));
        let out = build(src, &blobs, &boot, None).wait_with_output().unwrap();
        assert_ok(&out);
        boots.push(fs::read(&boot).unwrap());
    }
    (files(&blobs), boots)
}

/// Runs eight builds (each layer twice) into `blobs` at once. With `stop_at`, each first stops
/// at that point and all are released together, so that they reach it at the same instant.
fn eight_at_once(w: &Path, srcs: &[PathBuf], blobs: &Path, stop_at: Option<&str>) -> Vec<PathBuf> {
    fs::create_dir_all(blobs).unwrap();
    let mut runs = Vec::new();
    for copy in 0..2 {
        for (i, src) in srcs.iter().enumerate() {
            let boot = blobs.parent().unwrap().join(format!(
                "{}-{i}-{copy}.boot",
                blobs.file_name().unwrap().to_string_lossy()
            ));
            runs.push((build(src, blobs, &boot, stop_at), boot));
        }
    }
    if stop_at.is_some() {
        let stopped: Vec<(Child, PathBuf)> = runs
            .into_iter()
            .map(|(c, b)| (until_stopped(c).expect("each build reaches the point"), b))
            .collect();
        for (c, _) in &stopped {
            kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT).unwrap();
        }
        runs = stopped;
    }
    let _ = w;
    runs.into_iter()
        .map(|(c, boot)| {
            let out = c.wait_with_output().unwrap();
            assert_ok(&out);
            boot
        })
        .collect()
}

#[test]
fn eight_builds_into_one_blob_dir_equal_a_serial_build() {
    let tmp = scratch();
    let w = tmp.path();
    let srcs = layers(&w.join("src"));
    let (want_blobs, want_boots) = serial(w, &srcs);
    assert_eq!(want_blobs.len(), 4, "one blob per layer");
    for (name, stop_at) in [
        ("free", None),
        ("temp", Some("temp:1")),
        ("commit", Some("commit:1")),
    ] {
        let blobs = w.join(name);
        let boots = eight_at_once(w, &srcs, &blobs, stop_at);
        let got = files(&blobs);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want_blobs.keys().collect::<Vec<_>>(),
            "{name}: the blob directory holds the serial build's blobs and nothing else"
        );
        for (id, bytes) in &got {
            assert!(bytes == &want_blobs[id], "{name}: blob {id} differs");
        }
        for (i, boot) in boots.iter().enumerate() {
            assert_eq!(
                fs::read(boot).unwrap(),
                want_boots[i % srcs.len()],
                "{name}: {}",
                boot.display()
            );
        }
        forge(&["check", s(&boots[0]), "-D", s(&blobs)]);
    }
}
