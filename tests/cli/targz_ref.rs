//! `targz-ref` (zran) images: upstream's read back exactly, every chunk inflated from its
//! context inside the original `.tar.gz` (formats/blob.md §11).

use crate::common::*;
use crate::estargz::estargz;
use crate::upstream_read::manifest_diff;
use std::path::{Path, PathBuf};

fn upstream(name: &str) -> PathBuf {
    repo().join("fixtures/upstream").join(name)
}

/// The layer every targz-ref fixture references, and its blob id.
fn layer() -> (PathBuf, String) {
    let p = upstream("source-tar-input.tar.gz");
    let id = sha256_hex(&std::fs::read(&p).unwrap());
    (p, id)
}

/// A blob dir as nydusd's localfs backend wants it: the layer under its sha256, plus `extra`
/// files under their own names (or `(name, file)` pairs).
fn blob_dir(work: &Path, extra: &[(&str, &Path)]) -> PathBuf {
    let dir = work.join("blobs");
    std::fs::create_dir_all(&dir).unwrap();
    let (tgz, id) = layer();
    std::os::unix::fs::symlink(&tgz, dir.join(&id)).unwrap();
    for (name, file) in extra {
        std::fs::copy(file, dir.join(name)).unwrap();
    }
    dir
}

/// `check` verifies every chunk; `unpack` gives the fixture's `expected.txt`.
fn check_and_unpack(boot: &Path, blobs: &Path, chunks: usize, expected: &Path) {
    let out = forge(&["check", "-B", s(boot), "-D", s(blobs)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("zran") && text.contains(&format!("verified {chunks} chunks")),
        "{text}"
    );
    let x = scratch();
    let dir = x.path().join("tree");
    forge(&[
        "unpack",
        "-B",
        s(boot),
        "-D",
        s(blobs),
        "--output-dir",
        s(&dir),
    ]);
    manifest_diff(expected, &dir);
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn upstream_separate_meta_image_is_read() {
    let d = upstream("v6-targz-ref");
    let meta = one_file(&d.join("blobs"), "");
    let w = scratch();
    let name = meta.file_name().unwrap().to_str().unwrap().to_string();
    let blobs = blob_dir(w.path(), &[(&name, &meta)]);
    check_and_unpack(&d.join("bootstrap"), &blobs, 7, &d.join("expected.txt"));
}

#[test]
fn upstream_separate_meta_needs_the_layer() {
    let d = upstream("v6-targz-ref");
    let err = forge_fails(&[
        "check",
        "-B",
        s(&d.join("bootstrap")),
        "-D",
        s(&d.join("blobs")),
    ]);
    assert!(err.contains(&layer().1), "{err}");
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn upstream_converter_blob_is_read() {
    let d = upstream("v6-targz-ref-inline");
    let rafs = d.join("blob.rafs");
    let rafs_id = sha256_hex(&std::fs::read(&rafs).unwrap());
    let w = scratch();
    let blobs = blob_dir(w.path(), &[(&rafs_id, &rafs)]);
    // the extracted bootstrap, named after the converter blob as the snapshotter does
    let boot = w.path().join(format!("{rafs_id}.boot"));
    std::fs::copy(d.join("image.boot"), &boot).unwrap();
    check_and_unpack(&boot, &blobs, 7, &d.join("expected.txt"));
    // or the converter blob itself as the bootstrap
    check_and_unpack(&rafs, &blobs, 7, &d.join("expected.txt"));
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn upstream_merged_ref_layers_are_read() {
    let d = upstream("v6-merge-ref");
    check_and_unpack(
        &d.join("bootstrap"),
        &d.join("blobs"),
        48,
        &d.join("expected.txt"),
    );
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn upstream_targz_ref_exports_a_disk_the_kernel_mounts() {
    if let Some(why) = cannot_mount() {
        missing("upstream_targz_ref_exports_a_disk_the_kernel_mounts", &why);
    }
    let d = upstream("v6-targz-ref");
    let meta = one_file(&d.join("blobs"), "");
    let w = scratch();
    let name = meta.file_name().unwrap().to_str().unwrap().to_string();
    let blobs = blob_dir(w.path(), &[(&name, &meta)]);
    let disk = w.path().join("disk.img");
    export_block(&d.join("bootstrap"), &blobs, &disk);
    let m = mount(&disk, &[]);
    manifest_diff(&d.join("expected.txt"), m.dir.path());
}

#[test]
fn a_flipped_byte_in_the_layer_names_chunk_and_offset() {
    let d = upstream("v6-targz-ref");
    let meta = one_file(&d.join("blobs"), "");
    let w = scratch();
    let name = meta.file_name().unwrap().to_str().unwrap().to_string();
    let dir = w.path().join("blobs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&meta, dir.join(&name)).unwrap();
    let (tgz, id) = layer();
    let mut bytes = std::fs::read(tgz).unwrap();
    // inside chunk 4's span (compressed offsets 440885.. of this layer)
    bytes[1_000_000] ^= 0x55;
    std::fs::write(dir.join(&id), &bytes).unwrap();
    let err = forge_fails(&["check", "-B", s(&d.join("bootstrap")), "-D", s(&dir)]);
    assert!(err.contains("chunk 4"), "{err}");
    assert!(err.contains("offset"), "{err}");
}

#[test]
fn inspect_shows_a_chunks_zran_context() {
    let d = upstream("v6-targz-ref");
    let meta = one_file(&d.join("blobs"), "");
    let w = scratch();
    let name = meta.file_name().unwrap().to_str().unwrap().to_string();
    let blobs = blob_dir(w.path(), &[(&name, &meta)]);
    let out = forge(&[
        "inspect",
        "-B",
        s(&d.join("bootstrap")),
        "-R",
        "chunk 1000000",
        "-D",
        s(&blobs),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // chunk 4 is read through the layer's second context, which starts 3 bits before byte
    // 359002 (values read from upstream's meta with `zstd -d` and a struct dump, not by this
    // tool: context 1 = in 359002, out 1458537, a 32 KiB window)
    assert_eq!(v[0]["chunk_index"], 4, "{v}");
    let z = &v[0]["zran"];
    assert_eq!(z["context_index"], 1, "{v}");
    assert_eq!(z["offset_in_context"], 308375, "{v}");
    assert_eq!(z["in_offset"], 359002, "{v}");
    assert_eq!(z["out_offset"], 1458537, "{v}");
    assert_eq!(z["dict_size"], 32768, "{v}");
    assert_eq!(z["ctx_bits"], 3, "{v}");
}

/// Our `create -t targz-ref` of `layer` into `work`: the bootstrap and a blob dir holding the
/// meta and (linked) the layer under its sha256.
fn our_ref(work: &Path, layer: &Path) -> (PathBuf, PathBuf) {
    let blobs = work.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let boot = work.join("bootstrap");
    forge(&[
        "create",
        "-t",
        "targz-ref",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        s(layer),
    ]);
    let id = sha256_hex(&std::fs::read(layer).unwrap());
    std::os::unix::fs::symlink(layer, blobs.join(id)).unwrap();
    (boot, blobs)
}

/// The meta file of a blob dir (the one file not named after the layer).
fn meta_of(blobs: &Path, layer_id: &str) -> Vec<u8> {
    for e in std::fs::read_dir(blobs).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_str() != Some(layer_id) {
            return std::fs::read(e.path()).unwrap();
        }
    }
    panic!("no meta in {}", blobs.display());
}

/// The uncompressed ci area and header fields of a zran meta file, decoded here with the zstd
/// crate (not by the tool).
fn ci_area(meta: &[u8]) -> (Vec<u8>, u64, u32) {
    let h = &meta[meta.len() - 4096..];
    let word = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    let stored = word(24) as usize;
    let raw = zstd::bulk::decompress(&meta[..stored], 1 << 24).unwrap();
    (
        raw,
        word(48),
        u32::from_le_bytes(h[64..68].try_into().unwrap()),
    )
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn our_targz_ref_reads_back_as_the_tar() {
    let w = scratch();
    let (tgz, _) = layer();
    let (boot, blobs) = our_ref(w.path(), &tgz);
    check_and_unpack(&boot, &blobs, 7, &upstream("v6-targz-ref/expected.txt"));
}

#[test]
fn our_inflate_contexts_equal_upstreams() {
    let w = scratch();
    let (tgz, id) = layer();
    let (_, blobs) = our_ref(w.path(), &tgz);
    let ours = ci_area(&meta_of(&blobs, &id));
    let theirs = ci_area(&std::fs::read(one_file(&upstream("v6-targz-ref/blobs"), "")).unwrap());
    // same area size, same context table offset and count
    assert_eq!(
        (ours.0.len(), ours.1, ours.2),
        (theirs.0.len(), theirs.1, theirs.2)
    );
    let (off, n) = (ours.1 as usize, ours.2 as usize);
    for i in 0..n {
        let (a, b) = (
            &ours.0[off + 40 * i..][..40],
            &theirs.0[off + 40 * i..][..40],
        );
        // in_offset, out_offset, dict_offset equal; in_len (bytes 24..28) is ours an upper
        // bound; out_len, dict_size, ctx byte and bits equal
        assert_eq!(a[..24], b[..24], "context {i}");
        assert_eq!(a[28..], b[28..], "context {i}");
        let len = |x: &[u8]| u32::from_le_bytes(x[24..28].try_into().unwrap());
        assert!(
            len(a) >= len(b),
            "context {i}: span {} < {}",
            len(a),
            len(b)
        );
    }
    // the windows
    assert_eq!(ours.0[off + 40 * n..], theirs.0[off + 40 * n..]);
    // the chunk records: same uncompressed layout, contexts and offsets in them
    for i in 0..7 {
        let (a, b) = (&ours.0[24 * i..][..24], &theirs.0[24 * i..][..24]);
        assert_eq!(a[..8], b[..8], "chunk {i} uncomp_info");
        assert_eq!(a[16..], b[16..], "chunk {i} zran data");
    }
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn our_targz_ref_exports_a_disk_the_kernel_mounts() {
    if let Some(why) = cannot_mount() {
        missing("our_targz_ref_exports_a_disk_the_kernel_mounts", &why);
    }
    let w = scratch();
    let (tgz, _) = layer();
    let (boot, blobs) = our_ref(w.path(), &tgz);
    let disk = w.path().join("disk.img");
    export_block(&boot, &blobs, &disk);
    let m = mount(&disk, &[]);
    manifest_diff(&upstream("v6-targz-ref/expected.txt"), m.dir.path());
}

#[test]
fn a_truncated_layer_names_the_compressed_offset() {
    let w = scratch();
    let (tgz, _) = layer();
    let bytes = std::fs::read(tgz).unwrap();
    let cut = w.path().join("cut.tar.gz");
    std::fs::write(&cut, &bytes[..2_000_000]).unwrap();
    let blobs = w.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let err = forge_fails(&[
        "create",
        "-t",
        "targz-ref",
        "-B",
        s(&w.path().join("b")),
        "-D",
        s(&blobs),
        s(&cut),
    ]);
    assert!(err.contains("compressed offset 2000000"), "{err}");
    let mut bad = bytes.clone();
    bad[1_000_000] ^= 0x55;
    std::fs::write(&cut, &bad).unwrap();
    let err = forge_fails(&[
        "create",
        "-t",
        "targz-ref",
        "-B",
        s(&w.path().join("b")),
        "-D",
        s(&blobs),
        s(&cut),
    ]);
    assert!(err.contains("compressed offset"), "{err}");
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn targz_ref_reads_stdin() {
    let w = scratch();
    let (tgz, id) = layer();
    let blobs = w.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let boot = w.path().join("bootstrap");
    let out = run_with_stdin(
        &[
            "create",
            "-t",
            "targz-ref",
            "-B",
            s(&boot),
            "-D",
            s(&blobs),
            "-",
        ],
        &std::fs::read(&tgz).unwrap(),
    );
    assert_ok(&out);
    std::os::unix::fs::symlink(&tgz, blobs.join(id)).unwrap();
    check_and_unpack(&boot, &blobs, 7, &upstream("v6-targz-ref/expected.txt"));
}

#[test]
#[cfg_attr(
    any(no_root, no_mount),
    ignore = "needs root, umoci, skopeo and a kernel EROFS mount"
)]
fn umoci_layers_as_targz_ref_equal_their_tar_rafs() {
    let w = scratch();
    let (img, _) = crate::umoci_image::image_and_rootfs(
        "umoci_layers_as_targz_ref_equal_their_tar_rafs",
        w.path(),
    );
    let layers = crate::umoci_image::manifest_of(&img)["layers"].clone();
    for (i, l) in layers.as_array().unwrap().iter().enumerate() {
        let tgz = crate::umoci_image::blob(&img, l["digest"].as_str().unwrap());
        let x = w.path().join(format!("l{i}"));
        let (boot, blobs) = our_ref(&x.join("ref"), &tgz);
        let out = forge(&["check", "-B", s(&boot), "-D", s(&blobs)]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("verified"));
        // the same layer through the trusted targz-rafs path
        let rafs = x.join("rafs");
        std::fs::create_dir_all(&rafs).unwrap();
        forge(&[
            "create",
            "-t",
            "targz-rafs",
            "-B",
            s(&rafs.join("boot")),
            "-D",
            s(&rafs),
            s(&tgz),
        ]);
        let (a, b) = (x.join("a"), x.join("b"));
        forge(&[
            "unpack",
            "-B",
            s(&boot),
            "-D",
            s(&blobs),
            "--output-dir",
            s(&a),
        ]);
        forge(&[
            "unpack",
            "-B",
            s(&rafs.join("boot")),
            "-D",
            s(&rafs),
            "--output-dir",
            s(&b),
        ]);
        let d = diff(&manifest(&b), &manifest(&a));
        assert!(d.is_empty(), "layer {i}:\n{}", d.join("\n"));
        let disk = x.join("disk.img");
        export_block(&boot, &blobs, &disk);
        let m = mount(&disk, &[]);
        let d = diff(&manifest(&b), &manifest(m.dir.path()));
        assert!(d.is_empty(), "layer {i} mounted:\n{}", d.join("\n"));
    }
}

/// The ToC entries of a converter blob, decoded here: (name, offset, stored size, sha256).
fn toc_entries(blob: &[u8]) -> Vec<(String, u64, u64, [u8; 32])> {
    let n = blob.len();
    let entries = &blob[n - 512 - 512..n - 512];
    entries
        .chunks_exact(128)
        .map(|e| {
            let name = String::from_utf8_lossy(&e[8..24])
                .trim_end_matches('\0')
                .to_string();
            let word = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap());
            (name, word(56), word(64), e[24..56].try_into().unwrap())
        })
        .collect()
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn converter_call_through_a_fifo_is_read_and_laid_out_as_upstream() {
    let w = scratch();
    let (tgz, id) = layer();
    let fifo = mkfifo(&w.path().join("blob.targz"));
    let rafs = w.path().join("blob.rafs");
    let feeder = feed(&fifo, std::fs::read(&tgz).unwrap());
    let out = run_with_stdin(
        &[
            "create",
            "--log-level",
            "warn",
            "--type",
            "targz-ref",
            "--blob-inline-meta",
            "--features",
            "blob-toc",
            "--blob",
            s(&rafs),
            s(&fifo),
        ],
        b"",
    );
    feeder.join().unwrap();
    assert_ok(&out);
    let ours = std::fs::read(&rafs).unwrap();
    let theirs = std::fs::read(upstream("v6-targz-ref-inline/blob.rafs")).unwrap();
    let (a, b) = (toc_entries(&ours), toc_entries(&theirs));
    let names =
        |v: &[(String, u64, u64, [u8; 32])]| v.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    // the chunk digests are upstream's, byte for byte
    assert_eq!(a[2].3, b[2].3, "blob.digest");
    assert_eq!(a[2].2, 224);
    // read back as the runtime finds it: the blob under its sha256, the layer under its own
    let blobs = w.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let rafs_id = sha256_hex(&ours);
    std::fs::copy(&rafs, blobs.join(&rafs_id)).unwrap();
    std::os::unix::fs::symlink(&tgz, blobs.join(&id)).unwrap();
    check_and_unpack(
        &blobs.join(&rafs_id),
        &blobs,
        7,
        &upstream("v6-targz-ref-inline/expected.txt"),
    );
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn converter_merge_of_ref_layers_equals_upstreams() {
    let d = upstream("v6-merge-ref");
    let command = std::fs::read_to_string(d.join("command.txt")).unwrap();
    let line = command
        .lines()
        .find(|l| l.starts_with("nydus-image merge"))
        .unwrap();
    let w = scratch();
    let boot = w.path().join("bootstrap");
    let root = format!("{}/", s(&d));
    let args: Vec<String> = line
        .split_whitespace()
        .skip(1)
        .map(|a| {
            a.replace("out/v6-merge-ref/bootstrap", s(&boot))
                .replace("out/v6-merge-ref/output.json", s(&w.path().join("o.json")))
                .replace("out/v6-merge-ref/", &root)
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&run_with_stdin(&args, b"/"));
    let (ours, theirs) = (
        std::fs::read(&boot).unwrap(),
        std::fs::read(d.join("bootstrap")).unwrap(),
    );
    assert!(ours == theirs, "our merge differs from upstream's");
    check_and_unpack(&boot, &d.join("blobs"), 48, &d.join("expected.txt"));
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn estargz_ref_reads_every_file_from_its_members() {
    if let Some(why) = cannot_mount() {
        missing("estargz_ref_reads_every_file_from_its_members", &why);
    }
    let big: Vec<u8> = (0..2_600_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let files = vec![
        ("hello.txt", b"hello estargz\n".to_vec()),
        ("big.bin", big),
        ("small", vec![7u8; 5000]),
    ];
    let w = scratch();
    let esgz = w.path().join("layer.tar.gz");
    std::fs::write(&esgz, estargz(&files, 1 << 20)).unwrap();
    // GNU tar reads it as one .tar.gz: it is a valid layer
    let listed = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&esgz)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("stargz.index.json"));
    let blobs = w.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let boot = w.path().join("bootstrap");
    forge(&[
        "create",
        "-t",
        "estargz-ref",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        s(&esgz),
    ]);
    std::os::unix::fs::symlink(
        &esgz,
        blobs.join(sha256_hex(&std::fs::read(&esgz).unwrap())),
    )
    .unwrap();
    let out = forge(&["check", "-B", s(&boot), "-D", s(&blobs)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verified 5 chunks"), "{text}");
    let disk = w.path().join("disk.img");
    export_block(&boot, &blobs, &disk);
    let m = mount(&disk, &[]);
    let mut names: Vec<String> = std::fs::read_dir(m.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["big.bin", "hello.txt", "small"]);
    for (name, data) in &files {
        assert_eq!(
            &std::fs::read(m.dir.path().join(name)).unwrap(),
            data,
            "{name}"
        );
    }
    // a plain gzip layer is not eStargz
    let err = forge_fails(&[
        "create",
        "-t",
        "estargz-ref",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        s(&layer().0),
    ]);
    assert!(err.contains("not an eStargz layer"), "{err}");
}

/// A plain tar given to targz-ref is referenced in place, as upstream makes a tar-ref of it:
/// chunks stored raw at their tar offsets, no inflate contexts; every reader reads it, and the
/// kernel mounts its export.
#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn a_plain_tar_is_referenced_in_place() {
    if let Some(why) = cannot_mount() {
        missing("a_plain_tar_is_referenced_in_place", &why);
    }
    let w = scratch();
    let tar = upstream("source-tar-input.tar");
    let (boot, blobs) = our_ref(w.path(), &tar);
    let out = forge(&["check", s(&boot), "-D", s(&blobs)]);
    let text = String::from_utf8_lossy(&out.stdout);
    // SEPARATE without ZRAN: upstream's tar-ref
    assert!(
        text.contains("separate") && !text.contains("zran") && text.contains("verified 7"),
        "{text}"
    );
    let (raw, zran_offset, zran_count) =
        ci_area(&meta_of(&blobs, &sha256_hex(&std::fs::read(&tar).unwrap())));
    assert_eq!((zran_offset, zran_count), (0, 0), "no context table");
    assert_eq!(raw.len(), 7 * 24, "v2 records only");
    // every record: stored raw (flags crc32 only) where the tar holds the chunk
    let bytes = std::fs::read(&tar).unwrap();
    for r in raw.chunks_exact(24) {
        let u = u64::from_le_bytes(r[0..8].try_into().unwrap());
        let c = u64::from_le_bytes(r[8..16].try_into().unwrap());
        assert_eq!(u >> 56, 0x10, "flags");
        let (off, size) = ((c & 0xFF_FFFF_FFFF) as usize, (c >> 40) as usize);
        assert_eq!(size as u64, ((u >> 32) & 0xFF_FFFF) + 1);
        let crc = u64::from_le_bytes(r[16..24].try_into().unwrap()) as u32;
        assert_eq!(
            crc,
            crc32c::crc32c(&bytes[off..off + size]),
            "crc32 of the tar's bytes"
        );
    }
    let unpacked = w.path().join("t.tar");
    forge(&["unpack", s(&boot), "-D", s(&blobs), "-o", s(&unpacked)]);
    manifest_diff(&tar, &unpacked);
    let disk = w.path().join("disk");
    export_block(&boot, &blobs, &disk);
    let m = mount(&disk, &[]);
    manifest_diff(&tar, m.dir.path());
}
