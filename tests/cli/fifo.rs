//! FIFO outputs and inputs, set up as nydus-snapshotter's converter and buildkit do (issue 13):
//! a FIFO output is read to EOF by a thread and must receive exactly the bytes a regular-file
//! run writes (never be replaced by a regular file); a FIFO input is fed by a thread; a reader
//! that goes away makes the run fail at once with a one-line error.

use crate::common::*;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

const TAR: &str = "fixtures/upstream/source-tar-input.tar";
const TARGZ: &str = "fixtures/upstream/source-tar-input.tar.gz";

fn fixture(rel: &str) -> PathBuf {
    repo().join(rel)
}

/// Only the FIFOs (and what the test put there) remain: no temporary file was left.
fn only(dir: &Path, names: &[&str]) {
    let mut left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(left, want, "files left in {}", dir.display());
}

/// The converter's Pack (its argv less `--prefetch-policy fs`, another issue): tar FIFO in,
/// blob FIFO out (inline meta, ToC), patterns on stdin; the bytes equal a run with regular
/// files.
#[test]
fn converter_pack_through_fifos() {
    let tmp = scratch();
    let w = tmp.path();
    let tar = std::fs::read(fixture(TAR)).unwrap();
    let reference = w.join("ref.rafs");
    let common = [
        "create",
        "--log-level",
        "warn",
        "--whiteout-spec",
        "none",
        "--fs-version",
        "6",
        "--type",
        "tar-rafs",
        "--blob-inline-meta",
        "--features",
        "blob-toc",
    ];
    let mut args = common.to_vec();
    let tar_path = fixture(TAR);
    args.extend(["--blob", s(&reference), s(&tar_path)]);
    assert_ok(&run_with_stdin(&args, b"/"));

    let fifos = w.join("fifos");
    std::fs::create_dir(&fifos).unwrap();
    let input = mkfifo(&fifos.join("blob.targz"));
    let blob = mkfifo(&fifos.join("blob.rafs"));
    let mut args = common.to_vec();
    args.extend(["--blob", s(&blob), s(&input)]);
    let (out, got) = run_fifos(&args, b"/", &[(&input, tar)], &[&blob]);
    assert_ok(&out);
    assert_eq!(got[0], std::fs::read(&reference).unwrap());
    only(&fifos, &["blob.rafs", "blob.targz"]);
}

/// Separate bootstrap, blob and `-J` outputs all FIFOs, input a gzipped tar on stdin.
#[test]
fn every_create_output_a_fifo() {
    let tmp = scratch();
    let w = tmp.path();
    let targz = std::fs::read(fixture(TARGZ)).unwrap();
    let refdir = w.join("ref");
    std::fs::create_dir(&refdir).unwrap();
    let args = |d: &Path| -> Vec<String> {
        let (b, m, j) = (d.join("b"), d.join("m"), d.join("j"));
        [
            "create",
            "--type",
            "tar-rafs",
            "--fs-version",
            "5",
            "--log-level",
            "warn",
            "--blob",
            s(&b),
            "--bootstrap",
            s(&m),
            "-J",
            s(&j),
            "-",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let a = args(&refdir);
    let a: Vec<&str> = a.iter().map(|x| x.as_str()).collect();
    assert_ok(&run_with_stdin(&a, &targz));

    let fifos = w.join("fifos");
    std::fs::create_dir(&fifos).unwrap();
    let outs: Vec<PathBuf> = ["b", "m", "j"]
        .iter()
        .map(|n| mkfifo(&fifos.join(n)))
        .collect();
    let a2 = args(&fifos);
    let a2: Vec<&str> = a2.iter().map(|x| x.as_str()).collect();
    let refs: Vec<&Path> = outs.iter().map(|p| p.as_path()).collect();
    let (out, got) = run_fifos(&a2, &targz, &[], &refs);
    assert_ok(&out);
    for (name, bytes) in ["b", "m"].iter().zip(&got) {
        assert_eq!(bytes, &std::fs::read(refdir.join(name)).unwrap(), "{name}");
    }
    // the JSON names its paths (equal once the directories are swapped) and timings
    let json = |text: String| {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_object_mut().unwrap().remove("trace");
        v
    };
    let want = std::fs::read_to_string(refdir.join("j"))
        .unwrap()
        .replace(s(&refdir), s(&fifos));
    assert_eq!(json(String::from_utf8(got[2].clone()).unwrap()), json(want));
    only(&fifos, &["b", "j", "m"]);
}

/// The snapshotter's tarfs call: the tar through a FIFO, the bootstrap to a FIFO.
#[test]
fn tarfs_from_a_fifo() {
    let tmp = scratch();
    let w = tmp.path();
    let tar = std::fs::read(fixture(TAR)).unwrap();
    let reference = w.join("ref.boot");
    let tar_path = fixture(TAR);
    assert_ok(&run_with_stdin(
        &[
            "create",
            "--type",
            "tar-tarfs",
            "--bootstrap",
            s(&reference),
            s(&tar_path),
        ],
        b"",
    ));
    let input = mkfifo(&w.join("layer_1_tar.fifo"));
    let boot = mkfifo(&w.join("B.tmp"));
    let (out, got) = run_fifos(
        &[
            "create",
            "--type",
            "tar-tarfs",
            "--bootstrap",
            s(&boot),
            s(&input),
        ],
        b"",
        &[(&input, tar)],
        &[&boot],
    );
    assert_ok(&out);
    assert_eq!(got[0], std::fs::read(&reference).unwrap());
}

/// buildkit's decompress: `unpack --output` a FIFO, and `export --block --output` a FIFO (its
/// image is written out of order, then copied into the FIFO in order).
#[test]
fn unpack_and_export_to_fifos() {
    let tmp = scratch();
    let w = tmp.path();
    let boot = w.join("image.boot");
    let blobs = w.join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    let tar_path = fixture(TAR);
    assert_ok(&run_with_stdin(
        &[
            "create",
            "--type",
            "tar-rafs",
            "-D",
            s(&blobs),
            "--bootstrap",
            s(&boot),
            s(&tar_path),
        ],
        b"",
    ));
    let reg = w.join("reg");
    std::fs::create_dir(&reg).unwrap();
    let fifos = w.join("fifos");
    std::fs::create_dir(&fifos).unwrap();
    for (cmd, extra) in [("unpack", vec![]), ("export", vec!["--block"])] {
        let args = |out: &Path| {
            let mut a = vec![cmd.to_string()];
            a.extend(extra.iter().map(|x| x.to_string()));
            a.extend(
                [
                    "--bootstrap",
                    s(&boot),
                    "--blob-dir",
                    s(&blobs),
                    "--output",
                    s(out),
                ]
                .iter()
                .map(|x| x.to_string()),
            );
            a
        };
        let r = reg.join(cmd);
        let a = args(&r);
        assert_ok(&run_with_stdin(
            &a.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
            b"",
        ));
        let f = mkfifo(&fifos.join(cmd));
        let a = args(&f);
        let (out, got) = run_fifos(
            &a.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
            b"",
            &[],
            &[&f],
        );
        assert_ok(&out);
        assert_eq!(got[0], std::fs::read(&r).unwrap(), "{cmd}");
    }
    only(&fifos, &["export", "unpack"]);
}

/// Outputs to character devices are written in place: /dev/null is not replaced.
#[test]
fn char_device_output_written_in_place() {
    let tmp = scratch();
    let tar_path = fixture(TAR);
    let out = run_with_stdin(
        &[
            "create",
            "--type",
            "tar-rafs",
            "--blob",
            "/dev/null",
            "--bootstrap",
            s(&tmp.path().join("m")),
            s(&tar_path),
        ],
        b"",
    );
    assert_ok(&out);
    let t = std::fs::metadata("/dev/null").unwrap().file_type();
    assert!(t.is_char_device());
}

/// A reader that closes its end early: a one-line `broken pipe writing <path>` error, a
/// non-zero exit, no hang, nothing left beside the FIFO.
#[test]
fn reader_going_away_is_a_clean_error() {
    let tmp = scratch();
    let w = tmp.path();
    let blob = mkfifo(&w.join("blob.rafs"));
    let reader = drain(&blob, Some(100));
    let tar_path = fixture(TAR);
    let out = run_with_stdin(
        &[
            "create",
            "--type",
            "tar-rafs",
            "--blob-inline-meta",
            "--blob",
            s(&blob),
            s(&tar_path),
        ],
        b"",
    );
    release(&blob);
    assert_eq!(reader.join().unwrap().len(), 100);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [format!("error: broken pipe writing {}", blob.display())],
        "{err}"
    );
    only(w, &["blob.rafs"]);
}

/// The sections of a blob framed by tar headers (formats/blob.md §6), walked back from the end
/// as the converter does: name → bytes.
fn blob_sections(blob: &[u8]) -> std::collections::HashMap<String, Vec<u8>> {
    let mut out = std::collections::HashMap::new();
    let mut end = blob.len();
    while end >= 512 {
        let h = &blob[end - 512..end];
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        let size = std::str::from_utf8(&h[124..136])
            .unwrap()
            .trim_matches(|c| c == '\0' || c == ' ');
        let size = usize::from_str_radix(size, 8).unwrap();
        out.insert(name, blob[end - 512 - size..end - 512].to_vec());
        end -= 512 + size;
    }
    out
}

/// Every entry of a tar as `path kind mode size content-sha256-or-target device`, root aside;
/// a hardlink reads as the entry it links to (which name comes first is the writer's choice).
fn tar_entries(bytes: &[u8]) -> Vec<String> {
    let norm = |p: &Path| {
        let p = p.to_string_lossy().into_owned();
        p.trim_start_matches("./").trim_end_matches('/').to_string()
    };
    let mut a = ::tar::Archive::new(bytes);
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = norm(&e.path().unwrap());
        if path.is_empty() {
            continue;
        }
        let h = e.header().clone();
        let kind = h.entry_type();
        let desc = if kind.is_hard_link() {
            seen[&norm(&e.link_name().unwrap().unwrap())].clone()
        } else {
            let what = if kind.is_symlink() {
                format!("-> {}", e.link_name().unwrap().unwrap().display())
            } else {
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&data))
            };
            let dev = if kind.is_character_special() || kind.is_block_special() {
                format!(
                    "{:?}",
                    (h.device_major().unwrap(), h.device_minor().unwrap())
                )
            } else {
                String::new()
            };
            format!(
                "{:?} {:o} {} {what} {dev}",
                kind.as_byte() as char,
                h.mode().unwrap() & 0o7777,
                h.size().unwrap(),
            )
        };
        seen.insert(path.clone(), desc.clone());
        out.push(format!("{path} {desc}"));
    }
    out.sort();
    out
}

/// The lines only one side has (empty when equal).
fn differ(a: &[String], b: &[String]) -> Vec<String> {
    let a2: std::collections::BTreeSet<_> = a.iter().collect();
    let b2: std::collections::BTreeSet<_> = b.iter().collect();
    let mut d: Vec<String> = a2.difference(&b2).map(|l| format!("- {l}")).collect();
    d.extend(b2.difference(&a2).map(|l| format!("+ {l}")));
    d
}

/// buildkit's decompress through the converter's Unpack: `image.boot` and `image.blob` (the
/// data section alone) cut out of a layer blob, `unpack --output` a FIFO read by a thread; the
/// layer holds devices and a fifo (upstream aborts on those). The tar read back equals the
/// layer's source tar entry by entry.
#[test]
fn converter_unpack_of_the_data_section_to_a_fifo() {
    unpack_data_section(false);
}

/// The same with a ToC layer (`--features blob-toc`), whose `image.boot` the converter
/// decompresses (zstd) when it cuts it out.
#[test]
fn converter_unpack_of_a_toc_layer_data_section() {
    unpack_data_section(true);
}

fn unpack_data_section(toc: bool) {
    let tmp = scratch();
    let w = tmp.path();
    let tar_path = fixture(TAR);
    let layer = w.join("blob.rafs");
    let mut args = vec![
        "create",
        "--log-level",
        "warn",
        "--blob",
        s(&layer),
        "--whiteout-spec",
        "none",
        "--fs-version",
        "6",
        "--type",
        "tar-rafs",
        "--blob-inline-meta",
        s(&tar_path),
    ];
    if toc {
        args.extend(["--features", "blob-toc"]);
    }
    assert_ok(&run_with_stdin(&args, b"/"));
    let sections = blob_sections(&std::fs::read(&layer).unwrap());
    let boot = w.join("image.boot");
    let data = w.join("image.blob");
    let mut boot_bytes = sections["image.boot"].clone();
    if boot_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        boot_bytes = zstd::decode_all(&boot_bytes[..]).unwrap();
    }
    assert_eq!(toc, sections.contains_key("rafs.blob.toc"));
    std::fs::write(&boot, &boot_bytes).unwrap();
    std::fs::write(&data, &sections["image.blob"]).unwrap();
    let oci = mkfifo(&w.join("oci.tar"));
    let (out, got) = run_fifos(
        &[
            "unpack",
            "--log-level",
            "warn",
            "--bootstrap",
            s(&boot),
            "--output",
            s(&oci),
            "--blob",
            s(&data),
        ],
        b"",
        &[],
        &[&oci],
    );
    assert_ok(&out);
    let want = tar_entries(&std::fs::read(&tar_path).unwrap());
    let have = tar_entries(&got[0]);
    assert!(have.iter().any(|e| e.starts_with("fifo '6'")), "{have:?}");
    let d = differ(&want, &have);
    assert!(d.is_empty(), "{}", d.join("\n"));
    only(w, &["blob.rafs", "image.blob", "image.boot", "oci.tar"]);
}

/// A layer without file data: its data section is empty.
#[test]
fn converter_unpack_of_an_empty_data_section() {
    let tmp = scratch();
    let w = tmp.path();
    let mut b = ::tar::Builder::new(Vec::new());
    let mut h = ::tar::Header::new_gnu();
    h.set_entry_type(::tar::EntryType::Fifo);
    h.set_path("pipe").unwrap();
    h.set_mode(0o600);
    h.set_size(0);
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
    let src = b.into_inner().unwrap();
    let input = mkfifo(&w.join("blob.targz"));
    let layer = w.join("blob.rafs");
    let (out, _) = run_fifos(
        &[
            "create",
            "--blob",
            s(&layer),
            "--type",
            "tar-rafs",
            "--blob-inline-meta",
            s(&input),
        ],
        b"/",
        &[(&input, src.clone())],
        &[],
    );
    assert_ok(&out);
    let sections = blob_sections(&std::fs::read(&layer).unwrap());
    let boot = w.join("image.boot");
    std::fs::write(&boot, &sections["image.boot"]).unwrap();
    let data = w.join("image.blob");
    std::fs::write(
        &data,
        sections.get("image.blob").cloned().unwrap_or_default(),
    )
    .unwrap();
    let oci = mkfifo(&w.join("oci.tar"));
    let (out, got) = run_fifos(
        &[
            "unpack",
            "--bootstrap",
            s(&boot),
            "--output",
            s(&oci),
            "--blob",
            s(&data),
        ],
        b"",
        &[],
        &[&oci],
    );
    assert_ok(&out);
    let d = differ(&tar_entries(&src), &tar_entries(&got[0]));
    assert!(d.is_empty(), "{}", d.join("\n"));
}

/// `merge --bootstrap` and `-J`, `check -J`: FIFOs too, with the bytes a regular run writes.
#[test]
fn merge_and_check_outputs_as_fifos() {
    let tmp = scratch();
    let w = tmp.path();
    let up = repo().join("fixtures/upstream/v6-zstd/bootstrap");
    let (reg, fif) = (w.join("reg"), w.join("fifos"));
    std::fs::create_dir(&reg).unwrap();
    std::fs::create_dir(&fif).unwrap();
    let merge = |d: &Path| -> Vec<String> {
        let (b, j) = (d.join("boot"), d.join("merge.json"));
        [
            "merge",
            "--bootstrap",
            s(&b),
            "--output-json",
            s(&j),
            s(&up),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let check = |d: &Path| -> Vec<String> {
        let j = d.join("check.json");
        ["check", "--bootstrap", s(&up), "--output-json", s(&j)]
            .iter()
            .map(|a| a.to_string())
            .collect()
    };
    for (args, names) in [
        (
            &merge as &dyn Fn(&Path) -> Vec<String>,
            &["boot", "merge.json"][..],
        ),
        (&check, &["check.json"][..]),
    ] {
        let a = args(&reg);
        assert_ok(&run_with_stdin(
            &a.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
            b"",
        ));
        let outs: Vec<PathBuf> = names.iter().map(|n| mkfifo(&fif.join(n))).collect();
        let refs: Vec<&Path> = outs.iter().map(|p| p.as_path()).collect();
        let a = args(&fif);
        let (out, got) = run_fifos(
            &a.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
            b"",
            &[],
            &refs,
        );
        assert_ok(&out);
        for (n, bytes) in names.iter().zip(&got) {
            let want = std::fs::read_to_string(reg.join(n))
                .unwrap_or_default()
                .replace(s(&reg), s(&fif));
            if n.ends_with(".json") {
                let strip = |t: &str| {
                    let mut v: serde_json::Value = serde_json::from_str(t).unwrap();
                    v.as_object_mut().unwrap().remove("trace");
                    v
                };
                assert_eq!(
                    strip(std::str::from_utf8(bytes).unwrap()),
                    strip(&want),
                    "{n}"
                );
            } else {
                assert_eq!(bytes, &std::fs::read(reg.join(n)).unwrap(), "{n}");
            }
        }
    }
    only(&fif, &["boot", "check.json", "merge.json"]);
}
