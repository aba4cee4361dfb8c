//! `--prefetch-policy`: patterns from stdin, the prefetch table as nydus-image writes and
//! prints it (fixtures/upstream/v6-prefetch-fs, v5-prefetch-fs, v6-merge-prefetch), the data of
//! prefetched files first in the blob, and images the kernel still mounts.

use crate::common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn upstream(name: &str) -> std::path::PathBuf {
    repo().join("fixtures/upstream").join(name)
}

/// Runs erofs-forge with `stdin` written to its standard input (then closed); it must succeed.
fn forge_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let out = run_with_stdin(args, stdin);
    assert_ok(&out);
    out
}

/// `inspect -R prefetch` of `boot`, as a JSON value.
fn prefetch_of(boot: &Path) -> serde_json::Value {
    let out = forge(&["inspect", "-R", "prefetch", boot.to_str().unwrap()]);
    serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
}

/// The JSON line that follows the `inspect -R prefetch` header in a fixture's prefetch.txt.
fn upstream_prefetch(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(upstream(name).join("prefetch.txt")).unwrap();
    let line = text
        .lines()
        .skip_while(|l| !l.contains("inspect -R prefetch"))
        .nth(1)
        .unwrap();
    serde_json::from_str(line).unwrap()
}

fn blob_id(output_json: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output_json).unwrap()).unwrap();
    v["blobs"][0].as_str().unwrap().to_string()
}

#[test]
fn upstream_prefetch_tables_read_as_upstream_prints_them() {
    for name in ["v6-prefetch-fs", "v5-prefetch-fs", "v6-merge-prefetch"] {
        let got = prefetch_of(&upstream(name).join("bootstrap"));
        assert_eq!(got, upstream_prefetch(name), "{name}");
    }
    // an image without a table: the transcript of upstream's `inspect -R prefetch`
    let transcript =
        std::fs::read_to_string(upstream("cli/nydus-image_inspect_-R_prefetch_v6-zstd.txt"))
            .unwrap();
    let want: serde_json::Value = serde_json::from_str(transcript.lines().next().unwrap()).unwrap();
    assert_eq!(prefetch_of(&upstream("v6-zstd/bootstrap")), want);
    let out = forge(&[
        "check",
        "-B",
        upstream("v5-prefetch-fs/bootstrap").to_str().unwrap(),
    ]);
    assert!(out.status.success());
}

#[test]
fn merge_writes_the_table_upstream_writes() {
    let dir = upstream("v6-merge-prefetch");
    let l1 = blob_id(&dir.join("layer1.output.json"));
    let l2 = blob_id(&dir.join("layer2.output.json"));
    let out = scratch();
    let boot = out.path().join("bootstrap");
    let (s1, s2) = (dir.join("layers").join(l1), dir.join("layers").join(l2));
    let stdin = std::fs::read(dir.join("stdin.txt")).unwrap();
    forge_with_stdin(
        &[
            "merge",
            "--log-level",
            "warn",
            "--prefetch-policy",
            "fs",
            "--bootstrap",
            boot.to_str().unwrap(),
            s1.to_str().unwrap(),
            s2.to_str().unwrap(),
        ],
        &stdin,
    );
    let ours = std::fs::read(&boot).unwrap();
    let theirs = std::fs::read(dir.join("bootstrap")).unwrap();
    // byte for byte, HAS_XATTR included: upstream's merge always sets it (formats/blob.md §12)
    assert!(ours == theirs, "our merge differs from upstream's");
    assert_eq!(prefetch_of(&boot), upstream_prefetch("v6-merge-prefetch"));
    // without a policy the merged image has no table, whatever stdin holds
    let plain = out.path().join("plain");
    forge_with_stdin(
        &[
            "merge",
            "-B",
            plain.to_str().unwrap(),
            s1.to_str().unwrap(),
            s2.to_str().unwrap(),
        ],
        &stdin,
    );
    assert_eq!(prefetch_of(&plain), serde_json::json!([]));
}

/// Builds `source` as upstream's make-more.sh does for v{5,6}-prefetch-fs.
fn build_like_upstream(source: &Path, version: &str, out: &Path) -> Vec<u8> {
    let stdin = std::fs::read(upstream(&format!("v{version}-prefetch-fs/stdin.txt"))).unwrap();
    let boot = out.join("bootstrap");
    let json = out.join("output.json");
    forge_with_stdin(
        &[
            "create",
            "--log-level",
            "warn",
            "-t",
            "dir-rafs",
            "--fs-version",
            version,
            "--prefetch-policy",
            "fs",
            "-D",
            out.to_str().unwrap(),
            "--bootstrap",
            boot.to_str().unwrap(),
            "--output-json",
            json.to_str().unwrap(),
            source.to_str().unwrap(),
        ],
        &stdin,
    );
    let name = format!("v{version}-prefetch-fs");
    assert_eq!(
        blob_id(&json),
        blob_id(&upstream(&name).join("output.json")),
        "{name}: prefetched files first gives upstream's blob, byte for byte"
    );
    assert_eq!(prefetch_of(&boot), upstream_prefetch(&name), "{name}");
    std::fs::read(boot).unwrap()
}

#[test]
#[cfg_attr(
    no_full_tree,
    ignore = "needs the full fixture tree (root, setfattr, setfacl, setcap)"
)]
fn create_matches_upstream_prefetch_builds() {
    if let Some(why) = cannot_build_full_tree() {
        missing("create_matches_upstream_prefetch_builds", &why);
    }
    let src = scratch();
    let ok = Command::new("bash")
        .arg(upstream("make-source.sh"))
        .arg(src.path())
        .output()
        .unwrap();
    assert!(ok.status.success(), "make-source.sh failed");
    // upstream splits a hardlinked symlink into two symlinks; give it that input (as
    // upstream_compat does), with the mtimes upstream's tree had
    let link = src.path().join("dir/hardlinked-symlink");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    for p in [
        link.clone(),
        src.path().join("dir"),
        src.path().join("symlink-abs"),
    ] {
        let ok = Command::new("touch")
            .args(["-h", "-d", "2024-01-02 03:04:05.123456789"])
            .arg(p)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    // v6: the same bytes but for the root mtime (root inode at 0x3000, mtime at +32..+44),
    // which erofs-forge keeps and upstream writes as 0
    let out6 = scratch();
    let ours = build_like_upstream(src.path(), "6", out6.path());
    let theirs = std::fs::read(upstream("v6-prefetch-fs/bootstrap")).unwrap();
    assert_eq!(ours.len(), theirs.len());
    let off: Vec<usize> = (0..ours.len()).filter(|i| ours[*i] != theirs[*i]).collect();
    assert!(off.iter().all(|i| (0x3020..0x302c).contains(i)), "{off:x?}");
    // v5: the same bytes but for the root mtime (8 bytes) and the xattr table of
    // /hello.txt, whose two xattrs upstream orders differently from run to run (see
    // fixtures/upstream/README.md): there the bytes are the same, in another order
    let out5 = scratch();
    let ours = build_like_upstream(src.path(), "5", out5.path());
    let theirs = std::fs::read(upstream("v5-prefetch-fs/bootstrap")).unwrap();
    assert_eq!(ours.len(), theirs.len());
    let off: Vec<usize> = (0..ours.len()).filter(|i| ours[*i] != theirs[*i]).collect();
    assert!(
        off.len() >= 8 && off[7] - off[0] == 7,
        "root mtime first: {off:?}"
    );
    if let (Some(first), Some(last)) = (off.get(8), off.last()) {
        assert!(last - first < 64, "one xattr table: {off:?}");
        let mut a = ours[*first..=*last].to_vec();
        let mut b = theirs[*first..=*last].to_vec();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "the same xattr entries");
    }
}

#[test]
fn converter_call_with_root_pattern_and_no_newline() {
    // nydus-snapshotter's converter: `printf / | nydus-image create --prefetch-policy fs
    // -t tar-rafs ...`; tar-rafs keeps tar order, so the table holds the root alone
    let out = scratch();
    let tar = out.path().join("layer.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(repo().join("fixtures/sample"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    for version in ["6", "5"] {
        let boot = out.path().join(format!("boot{version}"));
        let plain = out.path().join(format!("plain{version}"));
        let args = |b: &Path| {
            vec![
                "create".to_string(),
                "-t".into(),
                "tar-rafs".into(),
                "--fs-version".into(),
                version.into(),
                "-D".into(),
                out.path().to_str().unwrap().into(),
                "-B".into(),
                b.to_str().unwrap().into(),
                tar.to_str().unwrap().into(),
            ]
        };
        let mut with = args(&boot);
        with.extend(["--prefetch-policy".into(), "fs".into()]);
        let with: Vec<&str> = with.iter().map(String::as_str).collect();
        forge_with_stdin(&with, b"/");
        let root = if version == "6" { 128 } else { 1 };
        assert_eq!(
            prefetch_of(&boot),
            serde_json::json!([{"inode": root, "path": ["/"]}]),
            "v{version}"
        );
        // the data is the same: only the table was added
        let without: Vec<String> = args(&plain);
        let without: Vec<&str> = without.iter().map(String::as_str).collect();
        let a = forge(&without);
        let b = forge_with_stdin(&with, b"/");
        let ids = |o: &Output| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.starts_with("data blobs:"))
                .map(str::to_string)
        };
        assert_eq!(ids(&a), ids(&b), "v{version}");
    }
}

#[test]
fn converter_pack_with_blob_toc_carries_the_table_upstream_wrote() {
    // the converter's exact Pack argv, stdin `/` without a newline, as v6-blob-toc was built
    let out = scratch();
    let blob = out.path().join("blob.rafs");
    let tar = upstream("source-tar-input.tar");
    forge_with_stdin(
        &[
            "create",
            "--log-level",
            "warn",
            "--prefetch-policy",
            "fs",
            "--blob",
            blob.to_str().unwrap(),
            "--whiteout-spec",
            "none",
            "--fs-version",
            "6",
            "--type",
            "tar-rafs",
            "--blob-inline-meta",
            "--features",
            "blob-toc",
            "--compressor",
            "zstd",
            tar.to_str().unwrap(),
        ],
        b"/",
    );
    let theirs = prefetch_of(&upstream("v6-blob-toc/blob.rafs"));
    assert_eq!(theirs, serde_json::json!([{"inode": 128, "path": ["/"]}]));
    assert_eq!(prefetch_of(&blob), theirs);
}

#[test]
fn policy_none_and_terminals_never_wait_for_stdin() {
    let out = scratch();
    let boot = out.path().join("boot");
    let src = repo().join("fixtures/sample");
    // stdin a pipe nobody closes: with `none` it is not read, so the build still ends
    let mut child = Command::new(bin())
        .args(["create", "--prefetch-policy", "none", "-D"])
        .arg(out.path())
        .arg("-B")
        .arg(&boot)
        .arg(&src)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _held_open = child.stdin.take();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("create --prefetch-policy none waited for stdin");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert_eq!(prefetch_of(&boot), serde_json::json!([]));
    let err = forge_fails(&[
        "create",
        "--prefetch-policy",
        "sometimes",
        "-B",
        boot.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    assert!(err.contains("sometimes"), "{err}");
}

#[test]
fn patterns_order_data_and_name_the_table() {
    let src = repo().join("fixtures/sample");
    let out = scratch();
    let boot = out.path().join("boot");
    let patterns =
        b"/usr/share/doc\n/etc/passwd\nrelative\n/usr/share/doc/sample/README\n/nope\n/bin\n";
    let run = forge_with_stdin(
        &[
            "create",
            "--log-level",
            "warn",
            "--prefetch-policy",
            "fs",
            "-D",
            out.path().to_str().unwrap(),
            "-B",
            boot.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
        patterns,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("relative"),
        "warns about a relative path: {stderr}"
    );
    assert!(
        stderr.contains("README"),
        "warns about a covered path: {stderr}"
    );
    let table = prefetch_of(&boot);
    let paths: Vec<&str> = table
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"][0].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/usr/share/doc/", "/etc/passwd", "/bin/"]);
    // `blob` orders the data the same way but writes no table
    let blob_out = scratch();
    let blob_boot = blob_out.path().join("boot");
    let blob_run = forge_with_stdin(
        &[
            "create",
            "--prefetch-policy",
            "blob",
            "-D",
            blob_out.path().to_str().unwrap(),
            "-B",
            blob_boot.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
        patterns,
    );
    assert_eq!(prefetch_of(&blob_boot), serde_json::json!([]));
    let ids = |o: &Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with("data blobs:"))
            .map(str::to_string)
    };
    assert_eq!(ids(&run), ids(&blob_run), "same data order for fs and blob");
    let plain = forge(&[
        "create",
        "-D",
        blob_out.path().to_str().unwrap(),
        "-B",
        blob_out.path().join("plain").to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    assert_ne!(
        ids(&run),
        ids(&plain),
        "prefetched files moved to the front"
    );
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn kernel_mounts_prefetch_images() {
    if let Some(why) = cannot_mount() {
        missing("kernel_mounts_prefetch_images", &why);
    }
    let src = repo().join("fixtures/sample");
    let out = scratch();
    let cache = out.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let boot = out.path().join("bootstrap");
    forge_with_stdin(
        &[
            "create",
            "--prefetch-policy",
            "fs",
            "-D",
            out.path().to_str().unwrap(),
            "--blob-cache-dir",
            cache.to_str().unwrap(),
            "-B",
            boot.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
        b"/usr/share/doc/sample/numbers.txt\n/etc\n/bin/hello\n",
    );
    assert_eq!(prefetch_of(&boot).as_array().unwrap().len(), 3);
    let data = one_file(&cache, ".blob.data");
    assert_mounts_equal(&boot, std::slice::from_ref(&data), &src);
}
