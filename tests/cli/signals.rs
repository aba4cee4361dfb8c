//! Issue #18: SIGINT, SIGTERM and SIGHUP at several points of every command that writes leave
//! no temporary file or directory anywhere and no final name.
//!
//! The points are exact, not guessed with sleeps: `EROFS_FORGE_STOP_AT=POINT:N` makes the binary
//! stop itself the Nth time it reaches POINT (`temp`: a temporary output was just created;
//! `chunk`: a chunk was written; `read`: a chunk is about to be read; `commit`: outputs are
//! about to be renamed into place). The
//! test then sends the signal and SIGCONT, and compares the whole work directory (inputs,
//! outputs, `TMPDIR`) with what it held before the run. Every N is tried until the run ends
//! without reaching it, so each temporary path a command makes is interrupted once.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::*;

const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Every path under `root` (relative), with a mark for directories.
pub(crate) fn listing(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        out.insert(if e.file_type().is_dir() {
            rel + "/"
        } else {
            rel
        });
    }
    out
}

/// The process state letter from /proc/PID/stat (`T` when stopped).
pub(crate) fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name is in parentheses and may hold spaces
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits until `child` has stopped itself (Some(child)) or has exited (None, with its status).
pub(crate) fn until_stopped(mut child: Child) -> Result<Child, ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(status);
        }
        if state(child.id()) == Some('T') {
            return Ok(child);
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run neither stopped nor ended"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for `child` (spawned with stderr piped) to exit, at most `limit`; returns its status
/// and what it wrote on stderr.
pub(crate) fn wait_stderr(mut child: Child, limit: Duration) -> (ExitStatus, String) {
    use std::io::Read;
    let status = wait_for(&mut child, limit);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    (status, err)
}

/// Waits for `child` to exit, at most `limit`.
pub(crate) fn wait_for(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("still running {limit:?} after the signal");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One command to interrupt: its arguments, the file it reads on stdin if any.
struct Case<'a> {
    name: &'a str,
    args: Vec<String>,
    stdin: Option<PathBuf>,
}

impl Case<'_> {
    fn spawn(&self, work: &Path, stop_at: Option<&str>) -> Child {
        let mut cmd = Command::new(bin());
        cmd.args(&self.args)
            .env("TMPDIR", work.join("tmp"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(p) = stop_at {
            cmd.env("EROFS_FORGE_STOP_AT", p);
        }
        match &self.stdin {
            Some(f) => cmd.stdin(fs::File::open(f).unwrap()),
            None => cmd.stdin(Stdio::null()),
        };
        cmd.spawn().unwrap()
    }
}

/// Runs `case` once to completion (it must succeed; its outputs are then removed again), then
/// interrupts it at every `temp` and `commit` point and at some `chunk` and `read` points,
/// checking after each that the work directory holds exactly what it held before.
fn interrupt_everywhere(work: &Path, case: &Case) -> usize {
    fs::create_dir_all(work.join("tmp")).unwrap();
    let before = listing(work);
    let out = case.spawn(work, None).wait_with_output().unwrap();
    assert_ok_named(case.name, &out);
    restore(work, &before);
    let mut interrupted = 0;
    for point in ["temp", "chunk", "read", "commit"] {
        for n in [1u32, 2, 3, 4, 5, 6, 8, 12, 16, 32, 64] {
            let sig = SIGNALS[interrupted % SIGNALS.len()];
            let at = format!("{point}:{n}");
            let child = match until_stopped(case.spawn(work, Some(&at))) {
                Ok(c) => c,
                Err(status) => {
                    assert!(status.success(), "{}: run at {at} failed", case.name);
                    restore(work, &before);
                    break;
                }
            };
            interrupted += 1;
            let pid = Pid::from_raw(child.id() as i32);
            kill(pid, sig).unwrap();
            kill(pid, Signal::SIGCONT).unwrap();
            let (status, err) = wait_stderr(child, Duration::from_secs(20));
            assert_eq!(
                status.code(),
                Some(128 + sig as i32),
                "{}: {sig:?} at {at}: {err}",
                case.name
            );
            assert!(
                err.contains("interrupted by signal"),
                "{}: {sig:?} at {at}: {err}",
                case.name
            );
            let after = listing(work);
            let added: Vec<_> = after.difference(&before).collect();
            let lost: Vec<_> = before.difference(&after).collect();
            assert!(
                added.is_empty() && lost.is_empty(),
                "{}: {sig:?} at {at} left {added:?}, removed {lost:?}",
                case.name
            );
        }
    }
    assert!(interrupted > 0, "{}: no point was reached", case.name);
    interrupted
}

fn assert_ok_named(name: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes whatever a completed run added to `work`.
fn restore(work: &Path, before: &BTreeSet<String>) {
    let after = listing(work);
    // deepest first, so that a directory is empty when its turn comes
    let added: Vec<&String> = after.difference(before).collect();
    for p in added.into_iter().rev() {
        let path = work.join(p.trim_end_matches('/'));
        if p.ends_with('/') {
            let _ = fs::remove_dir_all(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
    assert_eq!(&listing(work), before);
}

/// A source tree with enough data for several chunks and batches, some duplicated.
fn source(dir: &Path) {
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    let mut x = 0x2545_f491u32;
    for i in 0..12 {
        let len = 20_000 + i * 37_000;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8 & 0x3f
            })
            .collect();
        let sub = if i % 3 == 0 { "sub/deeper" } else { "sub" };
        fs::write(dir.join(format!("{sub}/f{i}")), &data).unwrap();
        if i % 4 == 0 {
            fs::write(dir.join(format!("copy{i}")), &data).unwrap();
        }
    }
    fs::write(dir.join("small"), b"tiny").unwrap();
    std::os::unix::fs::symlink("sub/f1", dir.join("link")).unwrap();
}

/// A command line split at spaces (test paths hold none).
fn argv(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

/// The work directory with a source tree, its tar and tar.gz, and one v6 and one v5 image.
struct Inputs {
    _w: tempfile::TempDir,
    work: PathBuf,
    src: PathBuf,
    tar: PathBuf,
    targz: PathBuf,
}

impl Inputs {
    fn new() -> Inputs {
        let w = scratch();
        let work = w.path().to_path_buf();
        let src = work.join("src");
        source(&src);
        let tar = work.join("layer.tar");
        let st = Command::new("tar")
            .args(["-C", s(&src), "--sort=name", "-cf", s(&tar), "."])
            .status()
            .unwrap();
        assert!(st.success());
        let targz = work.join("layer.tar.gz");
        let st = Command::new("sh")
            .args(["-c", &format!("gzip -c {} > {}", s(&tar), s(&targz))])
            .status()
            .unwrap();
        assert!(st.success());
        fs::create_dir_all(work.join("out")).unwrap();
        Inputs {
            _w: w,
            work,
            src,
            tar,
            targz,
        }
    }

    fn p(&self, rel: &str) -> String {
        s(&self.work.join(rel)).to_string()
    }

    /// Builds an input image `name` (bootstrap `name.boot`, blobs in `name.blobs/`).
    fn image(&self, name: &str, extra: &[&str]) {
        let blobs = self.work.join(format!("{name}.blobs"));
        fs::create_dir_all(&blobs).unwrap();
        let boot = self.p(&format!("{name}.boot"));
        let mut args = vec!["create", "-D", s(&blobs), "-B", &boot];
        args.extend_from_slice(extra);
        args.push(s(&self.src));
        forge(&args);
    }
}

#[test]
fn every_create_type_leaves_nothing_when_interrupted() {
    let i = Inputs::new();
    let (src, tar, targz) = (s(&i.src), s(&i.tar), s(&i.targz));
    let (out, boot, json) = (i.p("out"), i.p("new.boot"), i.p("new.json"));
    let mut cases = vec![
        Case {
            name: "create dir v6",
            args: argv(&format!(
                "create -D {out} -B {boot} -J {json} --chunk-size 0x10000 {src}"
            )),
            stdin: None,
        },
        Case {
            name: "create dir v5, one blob file",
            args: argv(&format!(
                "create --fs-version 5 -b {} -B {boot} --chunk-size 0x10000 {src}",
                &i.p("new.blob")
            )),
            stdin: None,
        },
        Case {
            name: "create batch encrypt inline",
            args: argv(&format!(
                "create -D {out} --blob-inline-meta --batch-size 0x10000 --encrypt \
                --chunk-size 0x10000 {src}"
            )),
            stdin: None,
        },
        Case {
            name: "create blob cache",
            args: argv(&format!(
                "create -D {out} -B {boot} --blob-cache-dir {} --chunk-size \
                0x10000 {src}",
                &i.p("out")
            )),
            stdin: None,
        },
        Case {
            name: "create tar-rafs from stdin",
            args: argv(&format!("create -t tar-rafs -D {out} -B {boot} -")),
            stdin: Some(i.tar.clone()),
        },
        Case {
            name: "create targz-rafs",
            args: argv(&format!(
                "create -t targz-rafs -D {out} -B {boot} --chunk-size 0x10000 \
                {targz}"
            )),
            stdin: None,
        },
        Case {
            name: "create targz-ref",
            args: argv(&format!("create -t targz-ref -D {out} -B {boot} {targz}")),
            stdin: None,
        },
        Case {
            name: "create tar-tarfs",
            args: argv(&format!("create -t tar-tarfs -D {out} -B {boot} {tar}")),
            stdin: None,
        },
    ];
    let star = i.work.join("layer.stargz");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a", vec![7u8; 300_000]),
        (
            "b",
            (0..200_000u32).map(|x| ((x * 31) >> 5) as u8).collect(),
        ),
    ];
    fs::write(&star, crate::estargz::estargz(&files, 65_536)).unwrap();
    cases.push(Case {
        name: "create estargz-ref",
        args: argv(&format!(
            "create -t estargz-ref -D {out} -B {boot} {}",
            s(&star)
        )),
        stdin: None,
    });
    for c in &cases {
        let n = interrupt_everywhere(&i.work, c);
        eprintln!("{}: interrupted at {n} points", c.name);
    }
}

/// The mkfs.erofs front end: a full image from a tar on stdin (compressed), from a directory,
/// an index, and a merge of layer images.
#[test]
fn mkfs_leaves_nothing_when_interrupted() {
    let i = Inputs::new();
    let (src, tar) = (s(&i.src), s(&i.tar));
    let img = i.p("new.erofs");
    let layer = i.p("layer.erofs");
    forge(&["mkfs", "--tar=f", "--quiet", &layer, tar]);
    let cases = [
        Case {
            name: "mkfs --tar=f -zlz4hc from stdin",
            args: argv(&format!("mkfs --tar=f --aufs --quiet -zlz4hc {img}")),
            stdin: Some(i.tar.clone()),
        },
        Case {
            name: "mkfs directory",
            args: argv(&format!("mkfs --quiet -Enoinline_data {img} {src}")),
            stdin: None,
        },
        Case {
            name: "mkfs --tar=i",
            args: argv(&format!("mkfs --tar=i --quiet {img} {tar}")),
            stdin: None,
        },
        Case {
            name: "mkfs merge",
            args: argv(&format!(
                "mkfs --ovlfs-strip=1 --quiet {img} {layer} {layer}"
            )),
            stdin: None,
        },
    ];
    for c in &cases {
        let n = interrupt_everywhere(&i.work, c);
        eprintln!("{}: interrupted at {n} points", c.name);
    }
}

#[test]
#[cfg_attr(no_umoci, ignore = "needs umoci")]
fn create_oci_leaves_nothing_when_interrupted() {
    let w = scratch();
    let (img, _) = crate::umoci_image::image_and_rootfs(
        "create_oci_leaves_nothing_when_interrupted",
        w.path(),
    );
    fs::create_dir_all(w.path().join("existing/blobs/sha256")).unwrap();
    for layout in ["new-layout", "existing"] {
        let out = s(&w.path().join(layout)).to_string();
        let boot = s(&w.path().join("oci.boot")).to_string();
        let case = Case {
            name: "create -t oci",
            args: argv(&format!("create -t oci -D {out} -B {boot} {}", s(&img))),
            stdin: None,
        };
        let n = interrupt_everywhere(w.path(), &case);
        eprintln!("create -t oci into {layout}: interrupted at {n} points");
    }
}

#[test]
fn merge_export_unpack_leave_nothing_when_interrupted() {
    let i = Inputs::new();
    i.image("a", &["--chunk-size", "0x10000"]);
    i.image(
        "b",
        &["--chunk-size", "0x10000", "--compressor", "lz4_block"],
    );
    let (a, b, ab) = (i.p("a.boot"), i.p("b.boot"), i.p("a.blobs"));
    let new = i.p("new");
    let cases = [
        Case {
            name: "merge",
            args: argv(&format!("merge -B {new} -J {} {a} {b}", &i.p("m.json"))),
            stdin: None,
        },
        Case {
            name: "export --block",
            args: argv(&format!("export --block -B {a} -D {ab} -O {new}")),
            stdin: None,
        },
        Case {
            name: "export --block --verity",
            args: argv(&format!("export --block --verity -B {a} -D {ab} -O {new}")),
            stdin: None,
        },
        Case {
            name: "export --block --compressor lz4",
            args: argv(&format!(
                "export --block --compressor lz4 -B {a} -D {ab} -O {new}"
            )),
            stdin: None,
        },
        Case {
            name: "export --tar",
            args: argv(&format!("export --tar {new} -B {a} -D {ab}")),
            stdin: None,
        },
        Case {
            name: "unpack -o",
            args: argv(&format!("unpack {a} -D {ab} -o {new}")),
            stdin: None,
        },
        Case {
            name: "unpack --output-dir",
            args: argv(&format!("unpack {a} -D {ab} --output-dir {new}")),
            stdin: None,
        },
        Case {
            name: "check -J",
            args: argv(&format!("check -B {a} -D {ab} -J {new}")),
            stdin: None,
        },
    ];
    for c in &cases {
        let n = interrupt_everywhere(&i.work, c);
        eprintln!("{}: interrupted at {n} points", c.name);
    }
}

#[test]
fn maintenance_and_analysis_commands_leave_nothing_when_interrupted() {
    let i = Inputs::new();
    i.image("a", &["--chunk-size", "0x10000"]);
    let (a, ab) = (i.p("a.boot"), i.p("a.blobs"));
    let (new, json) = (i.p("new"), i.p("new.json"));
    let list = i.work.join("prefetch.files");
    fs::write(&list, "/sub/f1\n/sub/deeper/f3\n").unwrap();
    let db = format!("sqlite://{}", i.p("chunks.db"));
    let cases = [
        Case {
            name: "optimize",
            args: argv(&format!(
                "optimize --prefetch-files {} --bootstrap {a} --blob-dir {ab} \
                --output-blob-dir {ab} --output-bootstrap {new} --output-json {json}",
                s(&list)
            )),
            stdin: None,
        },
        Case {
            name: "chunkdict generate",
            args: argv(&format!(
                "chunkdict generate -B {new} --database {db} -J {json} {a}"
            )),
            stdin: None,
        },
        Case {
            name: "report",
            args: argv(&format!("report {a} -D {ab} -J {json} --html {new}")),
            stdin: None,
        },
        Case {
            name: "verify",
            args: argv(&format!("verify {a} -D {ab} -J {json} {}", s(&i.src))),
            stdin: None,
        },
    ];
    for c in &cases {
        let n = interrupt_everywhere(&i.work, c);
        eprintln!("{}: interrupted at {n} points", c.name);
    }
    // compact needs layers whose upper ones delete most of the lower data
    let srcs = crate::compact::layers(&i.work.join("layers"));
    let (merged, blobs) = crate::compact::merged_layers(&i.work.join("image"), &srcs, "6");
    let case = Case {
        name: "compact",
        args: argv(&format!(
            "compact --bootstrap {} --blob-dir {} --min-used-ratio 50 \
            --compact-blob-size 1048576 --max-compact-size 10485760 --layers-to-compact 2 \
            --output-bootstrap {new} --output-json {json}",
            s(&merged),
            s(&blobs)
        )),
        stdin: None,
    };
    let n = interrupt_everywhere(&i.work, &case);
    eprintln!("compact: interrupted at {n} points");
}

#[test]
fn sigkill_never_leaves_a_final_name() {
    // after SIGKILL only temporary names (`.erofs-forge.*.tmp`, as the README says) and what
    // lies inside them may remain
    let i = Inputs::new();
    i.image("a", &["--chunk-size", "0x10000"]);
    let (a, ab) = (i.p("a.boot"), i.p("a.blobs"));
    let (out, new) = (i.p("out"), i.p("new"));
    let cases = [
        (
            argv(&format!(
                "create -D {out} -B {new} --chunk-size 0x10000 {}",
                s(&i.src)
            )),
            ["temp:1", "chunk:3", "commit:1"],
        ),
        (
            argv(&format!(
                "create -t targz-rafs -D {out} -B {new} {}",
                s(&i.targz)
            )),
            ["temp:2", "chunk:3", "commit:1"],
        ),
        (
            argv(&format!("unpack {a} -D {ab} --output-dir {new}")),
            ["temp:1", "read:5", "commit:1"],
        ),
        (
            argv(&format!(
                "export --block --compressor lz4 -B {a} -D {ab} -O {new}"
            )),
            ["temp:1", "read:5", "commit:1"],
        ),
    ];
    let temp_named = |c: &str| c.starts_with(".erofs-forge.") && c.ends_with(".tmp");
    let before = listing(&i.work);
    for (args, points) in cases {
        let case = Case {
            name: &args[0],
            args: args.clone(),
            stdin: None,
        };
        for point in points {
            let mut child = until_stopped(case.spawn(&i.work, Some(point))).expect(point);
            child.kill().unwrap();
            child.wait().unwrap();
            let after = listing(&i.work);
            for p in after.difference(&before) {
                assert!(
                    p.split('/').any(temp_named),
                    "SIGKILL of {args:?} at {point} left {p}"
                );
            }
            restore(&i.work, &before);
        }
    }
}
