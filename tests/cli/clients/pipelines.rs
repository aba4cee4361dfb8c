//! End to end, on real layers: every call that nydus-snapshotter (converter and tarfs), nydusify,
//! acceleration-service and buildkit make to `nydus-image`, replayed with the client's exact
//! argv, FIFOs and stdin as the client sets them up (an output FIFO read to EOF by a thread, an
//! input FIFO fed by a thread), on the layers of the umoci-built image of `oci_layers` (devices,
//! a fifo, hardlinks, whiteouts, an opaque directory, implied parents). Each result is judged as
//! the client judges it (its parsers are re-implemented here from its sources), and the images
//! by readers that are not the writer: the kernel (through `export --block` disks), GNU tar,
//! `veritysetup verify` and umoci's own unpack of the image.

use crate::common::*;
use crate::converter::{by_toc, client_entry, converter_pack, layer_tars};
use crate::umoci_image::image_and_rootfs;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs with exactly `args` and `stdin`; the run must succeed.
fn succeed(args: &[&str], stdin: &[u8]) -> Output {
    let o = run_with_stdin(args, stdin);
    assert!(
        o.status.success(),
        "{args:?} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// An `export --block` disk of `boot` with its blobs in `blobs`, mounted by the kernel and
/// compared with `expect`.
fn kernel_equals(what: &str, boot: &Path, blobs: &Path, expect: &Path, w: &Path) {
    let disk = w.join(format!("{}.disk", what.replace(' ', "-")));
    succeed(
        &[
            "export",
            "--block",
            "--bootstrap",
            s(boot),
            "--blob-dir",
            s(blobs),
            "--output",
            s(&disk),
        ],
        b"",
    );
    let m = mount(&disk, &[]);
    let d = diff(&manifest(expect), &manifest(m.dir.path()));
    assert!(
        d.is_empty(),
        "{what}: {} differences:\n{}",
        d.len(),
        d.join("\n")
    );
    eprintln!("{what}: the kernel's tree equals the expected one");
}

/// The converter: feature probe, Pack of every layer through FIFOs (v6 with the ToC, v5
/// without), Merge of the bootstraps it cut out of the layers, judged by the kernel against
/// umoci's unpack; then buildkit's Unpack of each layer to a FIFO, judged by GNU tar.
#[test]
#[cfg_attr(
    any(no_mount, no_umoci, no_gnu_tar),
    ignore = "needs a kernel EROFS mount, umoci, GNU tar"
)]
fn converter_pack_merge_unpack() {
    let w = scratch();
    let (img, expect) = image_and_rootfs("converter_pack_merge_unpack", w.path());
    let probe = String::from_utf8(succeed(&["create", "-h"], b"").stdout).unwrap();
    assert!(
        probe.contains("--type") && probe.contains("tar-rafs"),
        "{probe}"
    );

    let layers = layer_tars(&img);
    for v in ["6", "5"] {
        let work = w.path().join(format!("convert-v{v}"));
        let blobs = work.join("blobs");
        fs::create_dir_all(&blobs).unwrap();
        let mut sources = Vec::new();
        let mut digests = Vec::new();
        for (i, (_, tar)) in layers.iter().enumerate() {
            // v6 records a compressor per blob, v5 one for the image: a converter run (one
            // compressor option) gives every v5 layer the same, so mix them in v6 only
            let extra: &[&str] = if i == 1 && v == "6" {
                &["--compressor", "lz4_block"]
            } else {
                &[]
            };
            let bytes = converter_pack(&work.join(format!("pack{i}")), tar, v, extra);
            let hex = sha256_hex(&bytes);
            let boot = client_entry(&bytes, "image.boot").expect("image.boot in the layer");
            if v == "6" {
                assert!(
                    matches!(by_toc(&bytes, "image.boot"), Ok(Some(_))),
                    "v6 layers carry a ToC"
                );
                assert!(client_entry(&bytes, "blob.meta.header").is_some());
                if i == 1 {
                    // the chunk table is compressed with the layer's compressor, as upstream
                    // does; the converter reads only zstd and none ToC entries, and for
                    // lz4_block only warns (Merge then ships no .blob.meta for the layer)
                    assert!(by_toc(&bytes, "blob.meta").is_err());
                } else {
                    assert!(client_entry(&bytes, "blob.meta").is_some());
                }
            }
            fs::write(work.join(&hex), &boot).unwrap();
            fs::write(blobs.join(&hex), &bytes).unwrap();
            sources.push(work.join(&hex));
            digests.push(hex);
            buildkit_unpack(&work.join(format!("unpack{i}")), &bytes, tar);
        }
        let merged = work.join("bootstrap");
        let json_path = work.join("merge-output.json");
        let mut args = vec![
            "merge",
            "--log-level",
            "warn",
            "--prefetch-policy",
            "fs",
            "--output-json",
            s(&json_path),
            "--bootstrap",
            s(&merged),
        ];
        args.extend(sources.iter().map(|p| s(p)));
        succeed(&args, b"/");
        let out: serde_json::Value =
            serde_json::from_slice(&fs::read(&json_path).unwrap()).unwrap();
        let key = out
            .as_object()
            .unwrap()
            .keys()
            .find(|k| k.eq_ignore_ascii_case("blobs"))
            .expect("blobs in merge-output.json")
            .clone();
        let listed: Vec<&str> = out[&key]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap())
            .collect();
        assert!(!listed.is_empty());
        for b in &listed {
            assert!(digests.iter().any(|d| d == b), "{b} is not a layer digest");
        }
        if v == "6" {
            kernel_equals("converter v6", &merged, &blobs, &expect, w.path());
        } else {
            // no kernel reads RAFS v5: unpack it (GNU tar judged each layer's unpack above)
            let dest = work.join("unpacked");
            succeed(
                &[
                    "unpack",
                    s(&merged),
                    "-D",
                    s(&blobs),
                    "--output-dir",
                    s(&dest),
                ],
                b"",
            );
            let d = diff(&manifest(&expect), &manifest(&dest));
            assert!(d.is_empty(), "converter v5: {}", d.join("\n"));
        }
    }
}

/// buildkit's decompress through the converter's Unpack: `image.boot` and `image.blob` (the
/// data section alone, maybe empty) cut out of the layer, `oci.tar` a FIFO read to EOF. The
/// tar must hold what the layer's own tar holds (GNU tar extracts both).
fn buildkit_unpack(work: &Path, layer: &[u8], layer_tar: &[u8]) {
    fs::create_dir_all(work).unwrap();
    let boot = work.join("image.boot");
    let data = work.join("image.blob");
    fs::write(&boot, client_entry(layer, "image.boot").unwrap()).unwrap();
    fs::write(&data, client_entry(layer, "image.blob").unwrap_or_default()).unwrap();
    let tar_path = work.join("oci.tar");
    mkfifo(&tar_path);
    let (o, mut got) = run_fifos(
        &[
            "unpack",
            "--log-level",
            "warn",
            "--bootstrap",
            s(&boot),
            "--output",
            s(&tar_path),
            "--blob",
            s(&data),
        ],
        b"",
        &[],
        &[&tar_path],
    );
    assert_ok(&o);
    let got = got.remove(0);
    let a = extract(work, "from-unpack", &got);
    let b = extract(work, "from-layer", layer_tar);
    // directories a layer only implies come out of GNU tar with the extraction's defaults and
    // out of unpack with the implied placeholders: compare what the layer lists
    let listed = tar_names(layer_tar);
    let (ma, mb) = (manifest(&a), manifest(&b));
    let keep = |m: &std::collections::BTreeMap<Vec<u8>, Desc>| {
        m.iter()
            .filter(|(k, _)| listed.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let d = diff(&keep(&mb), &keep(&ma));
    assert!(
        d.is_empty(),
        "unpack of {}: {}",
        work.display(),
        d.join("\n")
    );
}

fn extract(work: &Path, name: &str, tar: &[u8]) -> PathBuf {
    let dir = work.join(name);
    fs::create_dir_all(&dir).unwrap();
    let file = work.join(format!("{name}.tar"));
    fs::write(&file, tar).unwrap();
    let o = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "--numeric-owner",
            "-xpf",
        ])
        .arg(&file)
        .arg("-C")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    dir
}

/// Entry names a tar lists, as the manifest keys them (`/`-rooted, no trailing slash).
fn tar_names(tar: &[u8]) -> std::collections::BTreeSet<Vec<u8>> {
    let mut out = std::collections::BTreeSet::new();
    out.insert(b"/".to_vec());
    for e in tar::Archive::new(tar).entries().unwrap() {
        let e = e.unwrap();
        let p = e.path_bytes().into_owned();
        let p = p.strip_prefix(b"./").unwrap_or(&p).to_vec();
        let p = p.strip_suffix(b"/").unwrap_or(&p).to_vec();
        if p.is_empty() || p == b"." {
            continue;
        }
        let mut k = b"/".to_vec();
        k.extend_from_slice(&p);
        out.insert(k);
    }
    out
}

/// nydus-snapshotter's tarfs: each layer through a FIFO with `--blob-id`, the merge, the
/// `inspect "-R blobs"` probe (one argv element), and `export --block --verity` whose stdout
/// the snapshotter parses with a fixed Sscanf pattern; `veritysetup verify` with exactly those
/// parameters, and the kernel mounts the disk equal to umoci's unpack.
#[test]
#[cfg_attr(
    any(no_mount, no_umoci, no_veritysetup),
    ignore = "needs a kernel EROFS mount, umoci, veritysetup"
)]
fn snapshotter_tarfs_and_verity() {
    let w = scratch();
    let (img, expect) = image_and_rootfs("snapshotter_tarfs_and_verity", w.path());
    let cache = w.path().join("cache");
    let up = w.path().join("upper");
    fs::create_dir_all(&cache).unwrap();
    fs::create_dir_all(&up).unwrap();
    let mut boots = Vec::new();
    let layers = layer_tars(&img);
    for (i, (hex, tar)) in layers.iter().enumerate() {
        let fifo = up.join(format!("layer_{i}_tar.fifo"));
        let meta_tmp = cache.join(format!("{hex}.layer.meta.tarfs.tmp"));
        mkfifo(&fifo);
        let (o, _) = run_fifos(
            &[
                "create",
                "--type",
                "tar-tarfs",
                "--bootstrap",
                s(&meta_tmp),
                "--blob-id",
                hex,
                "--blob-dir",
                s(&cache),
                s(&fifo),
            ],
            b"",
            &[(&fifo, tar.clone())],
            &[],
        );
        assert_ok(&o);
        // the snapshotter tees the tar into the cache and renames both into place
        fs::write(cache.join(hex), tar).unwrap();
        let meta = cache.join(format!("{hex}.layer.meta"));
        fs::rename(&meta_tmp, &meta).unwrap();
        fs::remove_file(&fifo).unwrap();
        boots.push(meta);
    }
    let merged_tmp = cache.join("image.meta.tarfs.tmp");
    let mut args = vec!["merge", "--bootstrap", s(&merged_tmp)];
    args.extend(boots.iter().map(|p| s(p)));
    succeed(&args, b"");
    let merged = cache.join("image.meta");
    fs::rename(&merged_tmp, &merged).unwrap();
    let o = succeed(&["inspect", "-R blobs", s(&merged)], b"");
    let stdout = String::from_utf8(o.stdout).unwrap();
    for (hex, _) in &layers {
        let marker = format!("\"blob_id\":\"{hex}\"");
        assert!(stdout.contains(&marker), "{marker} not in {stdout}");
    }
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let disk_tmp = w.path().join("image.disk.tarfs.tmp");
    let o = succeed(
        &[
            "export",
            "--block",
            "--localfs-dir",
            s(&cache),
            "--bootstrap",
            s(&merged),
            "--output",
            s(&disk_tmp),
            "--verity",
        ],
        b"",
    );
    let out = String::from_utf8(o.stdout).unwrap();
    let v = snapshotter_verity_scan(&out).unwrap_or_else(|| {
        panic!("failed to parse dm-verity options from nydus image output: {out}")
    });
    let vo = Command::new("veritysetup")
        .args(["verify", s(&disk_tmp), s(&disk_tmp), &v.root_hash])
        .args(["--no-superblock", "--format=1", "-s", "", "--hash=sha256"])
        .args(["--data-block-size=512", "--hash-block-size=4096"])
        .args(["--data-blocks", &v.data_blocks.to_string()])
        .args(["--hash-offset", &v.hash_offset.to_string()])
        .output()
        .unwrap();
    assert!(
        vo.status.success(),
        "veritysetup verify: {}{}",
        String::from_utf8_lossy(&vo.stdout),
        String::from_utf8_lossy(&vo.stderr)
    );
    let m = mount(&disk_tmp, &[]);
    let d = diff(&manifest(&expect), &manifest(m.dir.path()));
    assert!(d.is_empty(), "tarfs disk: {}", d.join("\n"));
}

/// What the snapshotter reads from `export --verity`.
struct Verity {
    data_blocks: u64,
    hash_offset: u64,
    root_hash: String,
}

/// The snapshotter's `fmt.Sscanf(stdout, pattern, ...)`: the pattern must match from the first
/// byte of stdout, with 512-byte data blocks spelled out.
fn snapshotter_verity_scan(out: &str) -> Option<Verity> {
    const PREFIX: &str = "dm-verity options: --no-superblock --format=1 -s \"\" --hash=sha256 \
                          --data-block-size=512 --hash-block-size=4096 --data-blocks ";
    let rest = out.strip_prefix(PREFIX)?;
    let (blocks, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("--hash-offset ")?;
    let (offset, rest) = rest.split_once(' ')?;
    let (hash, _) = rest.split_once('\n')?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Verity {
        data_blocks: blocks.parse().ok()?,
        hash_offset: offset.parse().ok()?,
        root_hash: hash.to_string(),
    })
}

/// nydusify: the packer's create (patterns on stdin; the blob renamed to the first new blob
/// id, which must be the blob's sha256), the checker's check and `inspect --request blobs`
/// (stdout and stderr parsed together as one JSON array), the committer's check (fs_version,
/// compressor); acceleration-service's `--version`; and the converter's directory fallback
/// (`--source-type directory --inline-bootstrap`, a FIFO blob).
#[test]
#[cfg_attr(any(no_mount, no_umoci), ignore = "needs a kernel EROFS mount, umoci")]
fn nydusify_acceleration_service_and_directory_pack() {
    let w = scratch();
    let (_, src) = image_and_rootfs("nydusify_acceleration_service_and_directory_pack", w.path());
    for (v, c) in [("6", "zstd"), ("5", "lz4_block")] {
        let o = w.path().join(format!("nydusify-v{v}"));
        fs::create_dir_all(&o).unwrap();
        let meta = o.join("name.meta");
        let blob_file = o.join("name.blob");
        let json = o.join("output.json");
        succeed(
            &[
                "create",
                "--bootstrap",
                s(&meta),
                "--log-level",
                "warn",
                "--whiteout-spec",
                "oci",
                "--output-json",
                s(&json),
                "--blob",
                s(&blob_file),
                "--fs-version",
                v,
                "--compressor",
                c,
                "--prefetch-policy",
                "fs",
                s(&src),
            ],
            b"/etc\n/bin\n",
        );
        let out: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        let id = out["blobs"][0].as_str().unwrap().to_string();
        assert_eq!(id, sha256_hex(&fs::read(&blob_file).unwrap()));
        let blobs = o.join("blobs");
        fs::create_dir_all(&blobs).unwrap();
        fs::rename(&blob_file, blobs.join(&id)).unwrap();
        if v == "6" {
            kernel_equals("nydusify v6", &meta, &blobs, &src, w.path());
        }
        // checker
        let cj = o.join("check.json");
        succeed(
            &[
                "check",
                "--log-level",
                "warn",
                "--output-json",
                s(&cj),
                "--bootstrap",
                s(&meta),
            ],
            b"",
        );
        let checked: serde_json::Value = serde_json::from_slice(&fs::read(&cj).unwrap()).unwrap();
        assert_eq!(checked["blobs"][0], id.as_str());
        assert_eq!(checked["fs_version"], v);
        assert_eq!(checked["compressor"], c);
        let o2 = succeed(&["inspect", s(&meta), "--request", "blobs"], b"");
        let mut both = o2.stdout.clone();
        both.extend_from_slice(&o2.stderr);
        let arr: serde_json::Value = serde_json::from_slice(&both).unwrap();
        let first = &arr.as_array().unwrap()[0];
        assert_eq!(first["blob_id"], id.as_str());
        for k in [
            "compressed_size",
            "decompressed_size",
            "readahead_offset",
            "readahead_size",
        ] {
            assert!(first[k].is_u64(), "{k} in {first}");
        }
    }
    // acceleration-service: regex `Version:\s*(v.*)`
    let version = String::from_utf8(succeed(&["--version"], b"").stdout).unwrap();
    let at = version.find("Version:").expect("a Version: line");
    let rest = version[at + "Version:".len()..].trim_start();
    assert!(rest.starts_with('v'), "{version}");

    // the converter's fallback when the builder lacks tar-rafs: a directory with .wh. files
    let work = w.path().join("dir-pack");
    let source = work.join("source");
    fs::create_dir_all(source.join("d")).unwrap();
    fs::write(source.join("d/.wh.gone"), b"").unwrap();
    fs::write(source.join("f"), vec![3u8; 300_000]).unwrap();
    let blob_path = work.join("blob");
    mkfifo(&blob_path);
    let (o, mut got) = run_fifos(
        &[
            "create",
            "--log-level",
            "warn",
            "--prefetch-policy",
            "fs",
            "--blob",
            s(&blob_path),
            "--whiteout-spec",
            "none",
            "--fs-version",
            "6",
            "--source-type",
            "directory",
            "--inline-bootstrap",
            s(&source),
        ],
        b"/",
        &[],
        &[&blob_path],
    );
    assert_ok(&o);
    let bytes = got.remove(0);
    let boot = client_entry(&bytes, "image.boot").expect("image.boot");
    let hex = sha256_hex(&bytes);
    let blobs = work.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(&hex), &bytes).unwrap();
    let boot_path = work.join(&hex);
    fs::write(&boot_path, boot).unwrap();
    kernel_equals("directory pack", &boot_path, &blobs, &source, w.path());
}
