//! Issue #18: a consumer that goes away. When stdout is a closed pipe, or the reader of a FIFO
//! output exits early, the tool stops within a second with one line naming the output, a
//! non-zero exit, and leaves nothing behind (no temporary file, no final name).

use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::signals::{listing, wait_stderr};

/// An image of the sample tree in `w` (`img.boot`, blobs in `img.blobs/`).
fn image(w: &Path) {
    fs::create_dir_all(w.join("img.blobs")).unwrap();
    forge(&[
        "create",
        "-D",
        s(&w.join("img.blobs")),
        "-B",
        s(&w.join("img.boot")),
        s(&repo().join("fixtures/sample")),
    ]);
}

/// The write end of a pipe whose read end is already closed.
fn closed_pipe() -> OwnedFd {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    w
}

#[test]
fn stdout_as_a_closed_pipe_stops_every_command_at_once() {
    let tmp = scratch();
    let w = tmp.path();
    image(w);
    let p = |n: &str| s(&w.join(n)).to_string();
    let sample = s(&repo().join("fixtures/sample")).to_string();
    let (boot, blobs) = (p("img.boot"), p("img.blobs"));
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "create",
            vec!["create", "-D", &blobs, "-B", &p("new"), &sample],
            "stdout",
        ),
        (
            "create -t tar-rafs -B /dev/stdout",
            vec![
                "create",
                "-t",
                "tar-rafs",
                "-D",
                &blobs,
                "-B",
                "/dev/stdout",
                s(&repo().join("fixtures/upstream/source-tar-input.tar")),
            ],
            "/dev/stdout",
        ),
        ("merge", vec!["merge", "-B", &p("new"), &boot], "stdout"),
        ("check", vec!["check", "-B", &boot, "-D", &blobs], "stdout"),
        ("inspect", vec!["inspect", &boot, "-R", "blobs"], "stdout"),
        ("stat", vec!["stat", "-B", &boot], "stdout"),
        (
            "unpack -o /dev/stdout",
            vec!["unpack", &boot, "-D", &blobs, "-o", "/dev/stdout"],
            "/dev/stdout",
        ),
        (
            "export --block",
            vec![
                "export",
                "--block",
                "-B",
                &boot,
                "-D",
                &blobs,
                "-O",
                &p("new"),
            ],
            "stdout",
        ),
        ("report", vec!["report", &boot, "-D", &blobs], "stdout"),
        (
            "verify",
            vec!["verify", &boot, "-D", &blobs, &sample],
            "stdout",
        ),
    ]
    .into_iter()
    .map(|(n, a, o)| (n, a.into_iter().map(String::from).collect(), o))
    .collect();
    let before = listing(w);
    for (name, args, output) in &cases {
        let start = Instant::now();
        let out = Command::new(bin())
            .args(args)
            .stdout(Stdio::from(closed_pipe()))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let took = start.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: succeeded");
        // a stream output that is stdout may be named either way, by whichever noticed first
        let lines: Vec<&str> = err.lines().collect();
        let named = |o: &str| lines == [format!("error: broken pipe writing {o}")];
        assert!(
            named(output) || (*output == "/dev/stdout" && named("stdout")),
            "{name}: {err}"
        );
        assert!(took < Duration::from_secs(1), "{name}: took {took:?}");
        assert_eq!(listing(w), before, "{name} left something behind");
    }
}

/// `create -t tar-rafs` reading a tar from a pipe the test holds (and feeds only part of), with
/// its blob written to a FIFO: the run is waiting for input, writing nothing, when the FIFO's
/// reader goes away.
#[test]
fn a_fifo_reader_gone_while_the_run_waits_stops_it_within_a_second() {
    let tmp = scratch();
    let w = tmp.path();
    let fifo = mkfifo(&w.join("blob.fifo"));
    let before = listing(w);
    let mut child = Command::new(bin())
        .args([
            "create",
            "-t",
            "tar-rafs",
            "--blob-inline-meta",
            "--blob",
            s(&fifo),
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // half a tar: one header announcing a 1 MiB file, and 4 KiB of it
    let mut h = tar::Header::new_ustar();
    h.set_path("big").unwrap();
    h.set_size(1 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    let mut input = child.stdin.take().unwrap();
    use std::io::Write;
    input.write_all(h.as_bytes()).unwrap();
    input.write_all(&[7u8; 4096]).unwrap();
    // opening returns once the tool has opened its end; then the reader goes away
    let reader = fs::File::open(&fifo).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(reader);
    let gone = Instant::now();
    let (status, err) = wait_stderr(child, Duration::from_secs(10));
    let took = gone.elapsed();
    drop(input);
    assert!(!status.success());
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [format!("error: broken pipe writing {}", fifo.display())]
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(listing(w), before);
}

/// A reader of `unpack -o FIFO` that takes the first 10 KiB and leaves.
#[test]
fn a_fifo_reader_leaving_mid_stream_stops_unpack_within_a_second() {
    let tmp = scratch();
    let w = tmp.path();
    let src = w.join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        fs::write(src.join(format!("f{i}")), vec![i as u8; 200_000]).unwrap();
    }
    fs::create_dir_all(w.join("img.blobs")).unwrap();
    let boot = w.join("img.boot");
    forge(&[
        "create",
        "-D",
        s(&w.join("img.blobs")),
        "-B",
        s(&boot),
        s(&src),
    ]);
    let fifo = mkfifo(&w.join("out.fifo"));
    let before = listing(w);
    let reader = drain(&fifo, Some(10_240));
    let start = Instant::now();
    let out = Command::new(bin())
        .args([
            "unpack",
            s(&boot),
            "-D",
            s(&w.join("img.blobs")),
            "-o",
            s(&fifo),
        ])
        .output()
        .unwrap();
    release(&fifo);
    assert_eq!(reader.join().unwrap().len(), 10_240);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [format!("error: broken pipe writing {}", fifo.display())]
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(listing(w), before);
}
