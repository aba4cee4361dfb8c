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
    // the image's own compressor: exact, stat's stored bytes of its unique chunks
    assert_eq!(zstd["estimated_stored"], st["own_comp_size"]);
    assert_eq!(zstd["from_sample"], false);
    let lz4 = r["what_if"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["setting"] == "compressor lz4_block")
        .unwrap();
    assert_eq!(lz4["from_sample"], true);
    assert!(lz4["estimated_stored"].as_u64().unwrap() > 0);
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

/// Decodes an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) into its pixels.
fn png_pixels(png: &[u8]) -> (usize, Vec<[u8; 3]>) {
    use std::io::Read;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut pos, mut width, mut channels, mut idat) = (8, 0usize, 0usize, Vec::new());
    while pos + 8 <= png.len() {
        let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &png[pos + 4..pos + 8];
        let body = &png[pos + 8..pos + 8 + len];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
                assert_eq!(body[8], 8, "bit depth");
                assert_eq!(body[12], 0, "interlaced");
                channels = match body[9] {
                    2 => 3,
                    6 => 4,
                    t => panic!("colour type {t}"),
                };
            }
            b"IDAT" => idat.extend_from_slice(body),
            _ => {}
        }
        pos += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(idat.as_slice())
        .read_to_end(&mut raw)
        .unwrap();
    let stride = width * channels;
    let mut prev = vec![0u8; stride];
    let mut pixels = Vec::new();
    for row in raw.chunks(stride + 1) {
        let (filter, data) = (row[0], &row[1..]);
        let mut cur = vec![0u8; stride];
        for i in 0..stride {
            let a = if i >= channels { cur[i - channels] } else { 0 };
            let (b, c) = (prev[i], if i >= channels { prev[i - channels] } else { 0 });
            let predicted = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                _ => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(b)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
            };
            cur[i] = data[i].wrapping_add(predicted);
        }
        pixels.extend(cur.chunks(channels).map(|p| [p[0], p[1], p[2]]));
        prev = cur;
    }
    (width, pixels)
}

fn chromium(args: &[&str], page: &Path) -> Vec<u8> {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(["--window-size=1280,800"])
        .args(args)
        .arg(format!("file://{}", s(page)))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
#[cfg_attr(no_chromium, ignore = "needs chromium")]
fn html_page_renders_a_treemap_in_chromium() {
    let w = scratch();
    let src = w.path().join("src");
    for (dir, byte, n) in [("alpha", 0u8, 3), ("beta", 1, 2), ("gamma", 2, 1)] {
        fs::create_dir_all(src.join(dir).join("sub")).unwrap();
        for i in 0..n {
            // one compressible and one incompressible file per directory: two colours
            let noise: Vec<u8> = (0..400_000u32)
                .map(|k| (k.wrapping_mul(2_654_435_761).wrapping_add(i) >> 11) as u8 ^ byte)
                .collect();
            fs::write(src.join(dir).join(format!("noise{i}")), noise).unwrap();
            fs::write(
                src.join(dir).join("sub").join(format!("text{i}")),
                vec![b'a' + byte; 900_000],
            )
            .unwrap();
        }
    }
    let out = w.path().join("out");
    fs::create_dir(&out).unwrap();
    let boot = build(&src, &out, "boot");
    let page = w.path().join("report.html");
    forge(&["report", s(&boot), "-D", s(&out), "--html", s(&page)]);
    let html = fs::read_to_string(&page).unwrap();
    // self-contained: nothing is fetched at view time
    for needle in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(needle), "{needle}");
    }
    let dom = String::from_utf8(chromium(&["--dump-dom"], &page)).unwrap();
    for name in ["alpha", "beta", "gamma"] {
        assert!(
            dom.contains(&format!("class=\"label\">{name}<")),
            "{name} not drawn"
        );
    }
    let shot = w.path().join("shot.png");
    chromium(&[&format!("--screenshot={}", s(&shot))], &page);
    let (width, pixels) = png_pixels(&fs::read(&shot).unwrap());
    assert_eq!(width, 1280);
    let background = pixels[pixels.len() - 1];
    let drawn = pixels.iter().filter(|p| **p != background).count();
    assert!(
        drawn * 2 > pixels.len(),
        "mostly blank: {drawn} of {} pixels drawn",
        pixels.len()
    );
    let colours: std::collections::HashSet<[u8; 3]> = pixels.iter().copied().collect();
    assert!(colours.len() >= 4, "{} colours", colours.len());
}
