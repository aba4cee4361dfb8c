//! `report IMAGE [IMAGE2]` (issue 17): its totals are `stat`'s, its parts add up to its
//! totals, its what-if row at the image's own chunk size is the image's unique data, and
//! against a second version it counts the new chunks a pull needs. On a generated tree, and on
//! the Debian tree (`cargo xtask debian target/xtask-trees/debian`) when it is there.

use crate::common::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn report(args: &[&str], out: &Path) -> Value {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    all.extend(["-J", s(out)]);
    let printed = forge(&all);
    assert!(String::from_utf8_lossy(&printed.stdout).contains("top "));
    json(out)
}

fn stat(boot: &Path, out: &Path) -> Value {
    forge(&["stat", "-B", s(boot), "-J", s(out)]);
    json(out)["images"][0].clone()
}

fn sum(rows: impl Iterator<Item = Value>, key: &str) -> u64 {
    rows.map(|r| r[key].as_u64().unwrap()).sum()
}

/// The report of `boot` checked against `stat` and against itself; returns it.
fn check_adds_up(boot: &Path, blobs: &Path, w: &Path) -> Value {
    let r = report(&[s(boot), "-D", s(blobs)], &w.join("r.json"));
    let st = stat(boot, &w.join("s.json"));
    let t = &r["total"];
    assert_eq!(t["files"], st["files"]);
    assert_eq!(t["logical"], st["file_size"]);
    assert_eq!(t["stored"], st["comp_size"]);
    assert_eq!(t["chunk_refs"], st["chunk_refs"]);
    // every chunk reference either stores a chunk or shares one stored before
    assert_eq!(
        t["chunk_refs"].as_u64().unwrap() - t["shared_in_image"].as_u64().unwrap(),
        st["chunks"].as_u64().unwrap()
    );
    for key in [
        "files",
        "logical",
        "stored",
        "chunk_refs",
        "shared_in_image",
    ] {
        let children = r["tree"]["children"].as_array().unwrap().iter().cloned();
        assert_eq!(sum(children, key), t[key].as_u64().unwrap(), "tree {key}");
        let types = r["by_type"].as_object().unwrap().values().cloned();
        assert_eq!(sum(types, key), t[key].as_u64().unwrap(), "types {key}");
    }
    // at the image's own chunk size, the unique data is what stat counts once
    let own = format!("chunk size {:#x}", r["chunk_size"].as_u64().unwrap());
    let row = r["what_if"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["setting"] == own.as_str())
        .expect("what-if row at the image's chunk size");
    assert_eq!(row["unique_bytes"], st["own_uncomp_size"]);
    let zstd = r["what_if"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["setting"] == "compressor zstd")
        .unwrap();
    assert!(zstd["estimated_stored"].as_u64().unwrap() > 0);
    r
}

fn build(src: &Path, out: &Path, name: &str) -> PathBuf {
    let boot = out.join(name);
    forge(&["create", "-D", s(out), "-B", s(&boot), s(src)]);
    boot
}

#[test]
fn report_adds_up_and_counts_what_a_second_version_reuses() {
    let w = scratch();
    let v1 = w.path().join("v1");
    fs::create_dir_all(v1.join("a/b")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    fs::write(v1.join("a/big.bin"), &big).unwrap();
    fs::write(v1.join("a/b/copy.bin"), &big).unwrap();
    fs::write(v1.join("notes.txt"), "words ".repeat(10_000)).unwrap();
    fs::write(v1.join("a/b/small"), b"small").unwrap();
    let v2 = w.path().join("v2");
    fs::create_dir_all(&v2).unwrap();
    let cp = Command::new("cp")
        .args(["-a", &format!("{}/.", s(&v1)), s(&v2)])
        .status()
        .unwrap();
    assert!(cp.success());
    fs::write(v2.join("notes.txt"), "other words ".repeat(10_000)).unwrap();
    fs::write(v2.join("added"), b"new file").unwrap();
    let out = w.path().join("out");
    fs::create_dir(&out).unwrap();
    let b1 = build(&v1, &out, "v1.boot");
    let b2 = build(&v2, &out, "v2.boot");
    let r = check_adds_up(&b1, &out, w.path());
    assert!(
        r["total"]["shared_in_image"].as_u64().unwrap() >= 3,
        "copy.bin dedups"
    );
    let vs = report(&[s(&b1), s(&b2), "-D", s(&out)], &w.path().join("vs.json"));
    let v = &vs["versus"];
    // notes.txt changed and one file added: two new chunks, the rest reused
    assert_eq!(v["new_chunks"], 2, "{v}");
    let st2 = stat(&b2, &w.path().join("s2.json"));
    assert_eq!(
        v["new_chunks"].as_u64().unwrap() + v["reused_chunks"].as_u64().unwrap(),
        st2["own_chunks"].as_u64().unwrap()
    );
    assert_eq!(
        v["pull_bytes_chunks"].as_u64().unwrap() + v["reused_stored"].as_u64().unwrap(),
        st2["own_comp_size"].as_u64().unwrap()
    );
    assert!(v["pull_bytes_blobs"].as_u64().unwrap() > v["pull_bytes_chunks"].as_u64().unwrap());
}

#[test]
#[cfg_attr(no_gnu_tar, ignore = "needs GNU tar")]
fn report_on_the_debian_tree_and_a_second_version() {
    let debian = repo().join("target/xtask-trees/debian");
    if !debian.is_dir() {
        eprintln!(
            "note: no {} (cargo xtask debian): the generated tree only",
            debian.display()
        );
        return;
    }
    let w = scratch();
    let out = w.path().join("out");
    fs::create_dir(&out).unwrap();
    let b1 = build(&debian, &out, "v1.boot");
    let r = check_adds_up(&b1, &out, w.path());
    assert!(r["tree"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "usr"));
    // version 2: without /usr/share/doc, plus one new file, streamed as a tar layer
    let extra = w.path().join("extra");
    fs::create_dir(&extra).unwrap();
    fs::write(extra.join("new-file"), b"version 2").unwrap();
    let tar = w.path().join("v2.tar");
    let ok = Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "-cf",
            s(&tar),
            "-C",
            s(&debian),
        ])
        .args([
            "--exclude=./usr/share/doc",
            ".",
            "-C",
            s(&extra),
            "./new-file",
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    let b2 = out.join("v2.boot");
    forge(&[
        "create",
        "-t",
        "tar-rafs",
        "-D",
        s(&out),
        "-B",
        s(&b2),
        s(&tar),
    ]);
    let vs = report(&[s(&b1), s(&b2), "-D", s(&out)], &w.path().join("vs.json"));
    assert_eq!(vs["versus"]["new_chunks"], 1, "{}", vs["versus"]);
}
