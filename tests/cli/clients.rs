//! The text and JSON interfaces as the clients of issue 13 parse them, each call replayed with
//! the client's exact argv: acceleration-service's `--version` regex, nydus-snapshotter's
//! `inspect "-R blobs"` search and its `Sscanf` of `export --verity` (then `veritysetup
//! verify` with exactly the parsed arguments), nydusify's `inspect --request blobs` (stdout and
//! stderr combined, as one JSON array) and `-J` readers, and `merge`'s exit code 2.

mod pipelines;

use crate::common::*;
use std::process::{Command, Output};

fn raw(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

/// Go's `fmt.Sscanf` for the verbs the clients use: `%d` (a decimal number), `%s` (a run of
/// non-space characters); everything else matches literally, from the first byte. Returns the
/// values, or `None` where Go's Sscanf returns an error.
fn sscanf(input: &str, format: &str) -> Option<Vec<String>> {
    let mut rest = input;
    let mut out = Vec::new();
    let mut parts = format.split('%');
    rest = rest.strip_prefix(parts.next()?)?;
    for part in parts {
        let (verb, literal) = part.split_at(1);
        let end = match verb {
            "d" => rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len()),
            "s" => rest.find(char::is_whitespace).unwrap_or(rest.len()),
            _ => return None,
        };
        if end == 0 {
            return None;
        }
        out.push(rest[..end].to_string());
        rest = rest[end..].strip_prefix(literal)?;
    }
    Some(out)
}

/// nydus-snapshotter's format for `export --block --verity` (pkg/tarfs).
const VERITY_FORMAT: &str = "dm-verity options: --no-superblock --format=1 -s \"\" --hash=sha256 --data-block-size=512 --hash-block-size=4096 --data-blocks %d --hash-offset %d %s\n";

/// acceleration-service: `nydus-image --version`, regex `Version:\s*(v.*)`.
#[test]
fn version_as_acceleration_service_reads_it() {
    let out = forge(&["--version"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let version = text
        .lines()
        .find_map(|l| l.split_once("Version:"))
        .map(|(_, v)| v.trim_start())
        .expect("a Version: line");
    assert!(version.starts_with('v'), "{text}");
    let semver = &version[1..];
    assert_eq!(semver.split('.').count(), 3, "{text}");
    assert!(
        semver.split('.').all(|n| n.parse::<u32>().is_ok()),
        "{text}"
    );
    for field in ["Git Commit:", "Profile:", "Rustc:"] {
        assert!(text.contains(field), "{field} missing:\n{text}");
    }
}

/// The snapshotter's tarfs flow: `inspect "-R blobs" M` (one argv element with a leading
/// space) prints compact JSON holding `"blob_id":"<hex>"` and nothing else on either stream;
/// nydusify's `inspect B --request blobs` parses stdout and stderr combined.
#[test]
fn inspect_blobs_as_the_clients_read_it() {
    let boot = repo().join("fixtures/upstream/v6-zstd/bootstrap");
    let id = "cc0837f231063e2421b53f2fcfdeeb19193700675c2c1f39be3582ffaa6a23df";
    let out = raw(&["inspect", "-R blobs", s(&boot)]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(&format!("\"blob_id\":\"{id}\"")), "{text}");

    let out = raw(&["inspect", s(&boot), "--request", "blobs"]);
    let mut combined = out.stdout.clone();
    combined.extend_from_slice(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&combined).unwrap();
    let blob = &v.as_array().unwrap()[0];
    assert_eq!(blob["blob_id"], id);
    assert_eq!(blob["compressed_size"], 1472374);
    assert_eq!(blob["decompressed_size"], 2666496);
    assert_eq!(blob["readahead_offset"], 0);
    assert_eq!(blob["readahead_size"], 0);
}

/// The snapshotter's tarfs export: `export --block --localfs-dir <cache> --bootstrap <meta>
/// --output <disk>.tmp --verity`, stdout parsed with its Sscanf format, then the disk checked
/// by `veritysetup verify <disk> <disk> <roothash>` with exactly those parameters.
#[test]
#[cfg_attr(no_veritysetup, ignore = "needs veritysetup")]
fn export_verity_as_the_snapshotter_parses_it() {
    let tmp = scratch();
    let w = tmp.path();
    let tar = repo().join("fixtures/upstream/source-tar-input.tar");
    let cache = w.join("cache");
    std::fs::create_dir(&cache).unwrap();
    let meta = w.join("layer.boot");
    forge(&[
        "create",
        "--type",
        "tar-tarfs",
        "--bootstrap",
        s(&meta),
        s(&tar),
    ]);
    let id = &forge(&["inspect", "-R", "blobs", s(&meta)]).stdout;
    let id: serde_json::Value = serde_json::from_slice(id).unwrap();
    let id = id[0]["blob_id"].as_str().unwrap().to_string();
    std::fs::copy(&tar, cache.join(&id)).unwrap();
    let disk = w.join("layer.disk.tmp");
    let out = forge(&[
        "export",
        "--block",
        "--localfs-dir",
        s(&cache),
        "--bootstrap",
        s(&meta),
        "--output",
        s(&disk),
        "--verity",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    let v = sscanf(&text, VERITY_FORMAT).unwrap_or_else(|| panic!("Sscanf fails on:\n{text}"));
    let (blocks, offset, root) = (&v[0], &v[1], &v[2]);
    let verify = Command::new("veritysetup")
        .args(["verify", s(&disk), s(&disk), root])
        .args(["--no-superblock", "--format=1", "-s", "", "--hash=sha256"])
        .arg("--data-block-size=512")
        .arg("--hash-block-size=4096")
        .args(["--data-blocks", blocks, "--hash-offset", offset])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "veritysetup verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// `merge` of inconsistent sources exits with 2 (acceleration-service then retries without
/// its chunk-dictionary cache): RAFS version, chunk size, digester, tarfs against not, and
/// for RAFS v5 the compressor.
#[test]
fn merge_of_inconsistent_sources_exits_2() {
    let tmp = scratch();
    let w = tmp.path();
    let up = repo().join("fixtures/upstream");
    let tree = up.join("v6-zstd/expected.txt");
    let src = w.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::copy(&tree, src.join("file")).unwrap();
    let tar = up.join("source-tar-input.tar");
    let layer = |name: &str, extra: &[&str]| {
        let b = w.join(name);
        let mut args = vec!["create", "-D", s(w), "--bootstrap", s(&b)];
        args.extend_from_slice(extra);
        forge(&args);
        b
    };
    let base = layer("base", &[s(&src)]);
    let cases = [
        (
            "chunk size",
            layer("chunk64k", &["--chunk-size", "0x10000", s(&src)]),
        ),
        ("version", layer("v5", &["--fs-version", "5", s(&src)])),
        (
            "digester",
            layer("sha256", &["--digester", "sha256", s(&src)]),
        ),
        ("tarfs", layer("tarfs", &["--type", "tar-tarfs", s(&tar)])),
    ];
    for (what, other) in cases {
        let merged = w.join("merged");
        let out = raw(&["merge", "--bootstrap", s(&merged), s(&base), s(&other)]);
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
        assert!(!merged.exists(), "{what}: an output was left");
    }
    // RAFS v5 names one compressor for all blobs: layers built with two cannot be merged
    // (upstream merges them into an image whose chunks do not decompress)
    let v5_zstd = layer("v5-zstd", &["--fs-version", "5", s(&src)]);
    let v5_lz4 = layer(
        "v5-lz4",
        &["--fs-version", "5", "--compressor", "lz4_block", s(&src)],
    );
    let merged = w.join("merged");
    let out = raw(&["merge", "--bootstrap", s(&merged), s(&v5_zstd), s(&v5_lz4)]);
    assert_eq!(out.status.code(), Some(2), "v5 compressors: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("compressor"));
}

/// `-J`: `create` and `merge` write it pretty-printed, `check` on one line; all with
/// nydus-image's fields (nydusify reads `blobs`, `fs_version`, `compressor`).
#[test]
fn output_json_shapes() {
    let tmp = scratch();
    let w = tmp.path();
    let up = repo().join("fixtures/upstream");
    let want: serde_json::Value =
        serde_json::from_slice(&std::fs::read(up.join("v6-zstd.output.json")).unwrap()).unwrap();
    let mut keys: Vec<&String> = want.as_object().unwrap().keys().collect();
    keys.sort();
    let boot = w.join("name.meta");
    let blob = w.join("name.blob");
    let (cj, mj, kj) = (w.join("c.json"), w.join("m.json"), w.join("k.json"));
    let src = up.join("v6-zstd/expected.txt");
    let dir = w.join("src");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(src, dir.join("f")).unwrap();
    // nydusify's packer, then its committer's check, then a merge
    forge(&[
        "create",
        "--bootstrap",
        s(&boot),
        "--log-level",
        "warn",
        "--whiteout-spec",
        "oci",
        "--output-json",
        s(&cj),
        "--blob",
        s(&blob),
        "--fs-version",
        "6",
        s(&dir),
    ]);
    forge(&[
        "check",
        "--log-level",
        "warn",
        "--bootstrap",
        s(&boot),
        "--output-json",
        s(&kj),
    ]);
    forge(&[
        "merge",
        "--output-json",
        s(&mj),
        "--bootstrap",
        s(&w.join("m")),
        s(&boot),
    ]);
    for (json, pretty) in [(&cj, true), (&mj, true), (&kj, false)] {
        let text = std::fs::read_to_string(json).unwrap();
        assert_eq!(text.trim_end().lines().count() > 1, pretty, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut have: Vec<&String> = v.as_object().unwrap().keys().collect();
        have.sort();
        assert_eq!(have, keys, "{}", json.display());
        assert_eq!(v["fs_version"], "6");
        assert_eq!(v["compressor"], "zstd");
    }
    // nydusify renames the blob after the first id: the blob file's sha256
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cj).unwrap()).unwrap();
    let id = v["blobs"][0].as_str().unwrap();
    let bytes = std::fs::read(&blob).unwrap();
    use sha2::Digest;
    assert_eq!(id, hex::encode(sha2::Sha256::digest(&bytes)));
}

#[test]
fn sscanf_matches_from_the_first_byte() {
    assert_eq!(
        sscanf("a 12 b x\n", "a %d b %s\n"),
        Some(vec!["12".into(), "x".into()])
    );
    assert_eq!(sscanf("z\na 12 b x\n", "a %d b %s\n"), None);
}

/// nydus-snapshotter's tarfs flow, argv as it runs them: `create --type tar-tarfs --bootstrap
/// B.tmp --blob-id <layer hex> --blob-dir <cache> <fifo>` (the tar fed through the FIFO), a
/// `merge`, `inspect "-R blobs"` searched for the layer id, and the `export --verity` of the
/// merged image with the tar saved under that id, checked by `veritysetup verify`.
#[test]
#[cfg_attr(no_veritysetup, ignore = "needs veritysetup")]
fn snapshotter_tarfs_flow() {
    let tmp = scratch();
    let w = tmp.path();
    let tar = std::fs::read(repo().join("fixtures/upstream/source-tar-input.tar")).unwrap();
    let cache = w.join("cache");
    std::fs::create_dir(&cache).unwrap();
    // the compressed layer's digest, not the tar's sha256
    let layer = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";
    let fifo = mkfifo(&w.join(format!("layer_{layer}_tar.fifo")));
    let boot = w.join("B.tmp");
    let (out, _) = run_fifos(
        &[
            "create",
            "--type",
            "tar-tarfs",
            "--bootstrap",
            s(&boot),
            "--blob-id",
            layer,
            "--blob-dir",
            s(&cache),
            s(&fifo),
        ],
        b"",
        &[(&fifo, tar.clone())],
        &[],
    );
    assert_ok(&out);
    std::fs::write(cache.join(layer), &tar).unwrap();
    let merged = w.join("M.tmp");
    forge(&["merge", "--bootstrap", s(&merged), s(&boot)]);
    let out = raw(&["inspect", "-R blobs", s(&merged)]);
    assert!(out.stderr.is_empty());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("\"blob_id\":\"{layer}\"")), "{text}");
    let disk = w.join("disk.tmp");
    let out = forge(&[
        "export",
        "--block",
        "--localfs-dir",
        s(&cache),
        "--bootstrap",
        s(&merged),
        "--output",
        s(&disk),
        "--verity",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    let v = sscanf(&text, VERITY_FORMAT).unwrap_or_else(|| panic!("Sscanf fails on:\n{text}"));
    let verify = Command::new("veritysetup")
        .args(["verify", s(&disk), s(&disk), &v[2]])
        .args(["--no-superblock", "--format=1", "-s", "", "--hash=sha256"])
        .arg("--data-block-size=512")
        .arg("--hash-block-size=4096")
        .args(["--data-blocks", &v[0], "--hash-offset", &v[1]])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
}

/// `--blob-id` names the blob in the blob table, the JSON and under `--blob-dir`;
/// `--blob-offset N` shifts every chunk offset by N, so the image reads its data from a file
/// where the blob starts at N; `--blob-data-size` is accepted (estargztoc-ref only upstream).
#[test]
fn blob_id_and_blob_offset() {
    let tmp = scratch();
    let w = tmp.path();
    let tar = repo().join("fixtures/upstream/source-tar-input.tar");
    let dir = w.join("blobs");
    std::fs::create_dir(&dir).unwrap();
    let boot = w.join("boot");
    let json = w.join("out.json");
    forge(&[
        "create",
        "--type",
        "tar-rafs",
        "--blob-id",
        "my-object",
        "--blob-data-size",
        "1000",
        "-D",
        s(&dir),
        "--bootstrap",
        s(&boot),
        "-J",
        s(&json),
        s(&tar),
    ]);
    assert!(dir.join("my-object").is_file());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["blobs"], serde_json::json!(["my-object"]));
    forge(&["check", "--bootstrap", s(&boot), "-D", s(&dir)]);
    let err = forge_fails(&[
        "create",
        "--blob-id",
        "x",
        "--blob-inline-meta",
        "--blob",
        s(&w.join("b")),
        s(&tar),
    ]);
    assert!(err.contains("blob-id"), "{err}");

    let (blob, boot2) = (w.join("data"), w.join("boot2"));
    forge(&[
        "create",
        "--type",
        "tar-rafs",
        "--blob-offset",
        "12345",
        "--blob",
        s(&blob),
        "--bootstrap",
        s(&boot2),
        s(&tar),
    ]);
    let mut in_tar = vec![7u8; 12345];
    in_tar.extend(std::fs::read(&blob).unwrap());
    let holder = w.join("holder");
    std::fs::write(&holder, &in_tar).unwrap();
    forge(&["check", "--bootstrap", s(&boot2), "--blob", s(&holder)]);
    assert!(
        !raw(&["check", "--bootstrap", s(&boot2), "--blob", s(&blob)])
            .status
            .success()
    );
}
