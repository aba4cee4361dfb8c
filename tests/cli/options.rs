//! Command-line behaviour: option validation, JSON output, no output left on failure.

use crate::common::*;

#[test]
fn rejects_bad_chunk_size_and_missing_outputs() {
    let src = repo().join("fixtures/sample");
    let s = src.to_str().unwrap();
    let out = scratch();
    let o = out.path().to_str().unwrap();
    assert!(
        forge_fails(&["create", "--chunk-size", "0x3000", "-D", o, s]).contains("power of two")
    );
    assert!(forge_fails(&["create", "--chunk-size", "0x800", "-D", o, s]).contains("power of two"));
    assert!(forge_fails(&["create", s]).contains("--blob"));
    assert!(
        forge_fails(&["create", "--blob-inline-meta", "-B", "x", "-D", o, s]).contains("conflicts")
    );
    assert!(forge_fails(&["create", "-D", "/nonexistent-dir", s]).contains("not a directory"));
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn failure_leaves_no_output_under_final_names() {
    let src = repo().join("fixtures/sample");
    let out = scratch();
    // the bootstrap's directory does not exist: the blob must not appear either
    let err = forge_fails(&[
        "create",
        "-D",
        out.path().to_str().unwrap(),
        "-B",
        out.path().join("missing/boot").to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    assert!(err.contains("missing"), "error names the path: {err}");
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn source_errors_name_the_path() {
    let out = scratch();
    let err = forge_fails(&[
        "create",
        "-D",
        out.path().to_str().unwrap(),
        "/nonexistent/source",
    ]);
    assert!(err.contains("/nonexistent/source"), "{err}");
}

#[test]
fn output_json_has_the_fields_nydusify_reads() {
    let src = repo().join("fixtures/sample");
    let out = scratch();
    let json = out.path().join("out.json");
    forge(&[
        "create",
        "-D",
        out.path().to_str().unwrap(),
        "-J",
        json.to_str().unwrap(),
        "--compressor",
        "lz4_block",
        src.to_str().unwrap(),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let blob = v["blobs"][0].as_str().unwrap();
    assert_eq!(blob.len(), 64);
    assert!(out.path().join(blob).is_file());
    let boot = v["bootstrap"].as_str().unwrap();
    assert!(std::path::Path::new(boot).is_file());
    assert_eq!(v["fs_version"], "6");
    assert_eq!(v["compressor"], "lz4_block");
    assert!(v["trace"]["consumed_time"]["total_build"].is_number());
}

#[test]
#[cfg_attr(no_fsck_erofs, ignore = "needs fsck.erofs")]
fn tree_without_file_data_has_no_blob_and_fsck_accepts_it() {
    let src = scratch();
    std::fs::create_dir_all(src.path().join("a/b")).unwrap();
    std::fs::write(src.path().join("a/empty"), b"").unwrap();
    std::os::unix::fs::symlink("a/empty", src.path().join("link")).unwrap();
    let out = scratch();
    let boot = out.path().join("boot");
    forge(&[
        "create",
        "-D",
        out.path().to_str().unwrap(),
        "-B",
        boot.to_str().unwrap(),
        src.path().to_str().unwrap(),
    ]);
    let files: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "only the bootstrap");
    if std::process::Command::new("fsck.erofs")
        .arg("--help")
        .output()
        .is_err()
    {
        missing(
            "fsck part of tree_without_file_data_has_no_blob_and_fsck_accepts_it",
            "fsck.erofs not installed",
        );
    }
    let x = scratch();
    let dest = x.path().join("x");
    let o = std::process::Command::new("fsck.erofs")
        .arg(format!("--extract={}", dest.display()))
        .arg(&boot)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fsck.erofs: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(dest.join("a/b").is_dir());
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        std::path::Path::new("a/empty")
    );
    assert_eq!(std::fs::metadata(dest.join("a/empty")).unwrap().len(), 0);
}

#[test]
fn inspect_and_stat_answer_in_json() {
    let up = repo().join("fixtures/upstream/v6-zstd/bootstrap");
    let b = up.to_str().unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_slice(&forge(args).stdout).unwrap()
    };
    let stats = json(&["inspect", b, "-R", "stats"]);
    assert_eq!(stats["inodes_count"], 323);
    assert_eq!(stats["entries"], 324);
    let blobs = json(&["inspect", b, "-R", "blobs"]);
    assert_eq!(
        blobs[0]["blob_id"],
        "cc0837f231063e2421b53f2fcfdeeb19193700675c2c1f39be3582ffaa6a23df"
    );
    let st = json(&["inspect", b, "-R", "stat /dir/sub/numbers.txt"]);
    assert_eq!(st["size"], 1288895);
    assert_eq!(st["chunks"].as_array().unwrap().len(), 2);
    assert_eq!(st["chunks"][1]["file_offset"], 1048576);
    let hello = json(&["inspect", b, "-R", "stat /hello.txt"]);
    assert_eq!(hello["xattrs"]["user.second"], "two");
    assert_eq!(hello["mode"], "100600");
    let paths = json(&["inspect", b, "-R", &format!("icheck {}", hello["inode"])]);
    assert_eq!(
        paths,
        serde_json::json!(["/dir/hardlink-to-hello", "/hello.txt"])
    );
    let ls = json(&["inspect", b, "-R", "ls /dir"]);
    assert!(ls
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "random.bin" && e["type"] == "file"));
    assert!(forge_fails(&["inspect", b, "-R", "stat /no/such"]).contains("no such file"));

    let v5 = repo().join("fixtures/upstream/v5-zstd/bootstrap");
    let s = json(&["stat", "-B", b, "-B", v5.to_str().unwrap()]);
    // the same tree twice: every chunk of the second image is a duplicate of the first's
    assert_eq!(s["images"][0]["own_chunks"], 7);
    assert_eq!(s["images"][1]["own_chunks"], 0);
    assert_eq!(s["images"][1]["dedup_chunks"], 7);
    assert_eq!(s["total"]["unique_uncomp_size"], 2649801);
}

#[test]
fn check_writes_json() {
    let d = repo().join("fixtures/upstream/v5-zstd");
    let out = scratch();
    let j = out.path().join("c.json");
    forge(&[
        "check",
        "-B",
        d.join("bootstrap").to_str().unwrap(),
        "-J",
        j.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(v["fs_version"], "5");
    assert_eq!(v["compressor"], "zstd");
    assert_eq!(
        v["blobs"][0],
        "a49e1b43b7bb041ea8b9b3074934a2415d8060c68cad55a6eb1fa59c6a1f79a0"
    );
}

#[test]
fn merging_incompatible_layers_exits_2_naming_the_setting() {
    // acceleration-service reads exit code 2 from merge as "retry without the cache"
    let out = scratch();
    let d = out.path();
    let sample = repo().join("fixtures/sample");
    for (name, chunk) in [("a", "0x100000"), ("b", "0x10000")] {
        forge(&[
            "create",
            "--chunk-size",
            chunk,
            "-D",
            d.to_str().unwrap(),
            "-B",
            d.join(name).to_str().unwrap(),
            sample.to_str().unwrap(),
        ]);
    }
    let o = std::process::Command::new(bin())
        .args(["merge", "-B"])
        .arg(d.join("merged"))
        .arg(d.join("a"))
        .arg(d.join("b"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("chunk size 0x10000, not 0x100000"), "{err}");
    assert!(!d.join("merged").exists());
}
