//! Memory bounds on hostile archives: decompressors refuse streams declaring a dictionary or
//! window beyond `--max-decompress-memory` before allocating it, a gzip bomb streams in constant
//! memory, and `--max-entries` caps the entries of a source.

use crate::common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A small tar of a directory with a few files, made by GNU tar.
fn small_tar(dir: &Path, files: usize) -> Vec<u8> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..files {
        std::fs::write(src.join(format!("f{i}")), format!("file {i}\n").repeat(50)).unwrap();
    }
    let out = Command::new("tar")
        .args(["--sort=name", "-C", s(&src), "-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// CRC-32 (IEEE), as xz block headers carry it.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// `tar` as an xz stream whose LZMA2 filter declares the dictionary coded by `dict_byte`
/// (xz format §5.3.1: `(2 | (b & 1)) << (b / 2 + 11)`): the data needs only a small one,
/// but the decoder must reserve what the header says.
fn xz_with_dict(tar: &[u8], dict_byte: u8) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 0);
    enc.write_all(tar).unwrap();
    let mut xz = enc.finish().unwrap();
    // stream header (12 bytes), then the block header: size, flags (no sizes, one filter),
    // filter id 0x21 (LZMA2), properties size 1, the dictionary byte, padding, CRC-32
    let size = (usize::from(xz[12]) + 1) * 4;
    assert_eq!(
        &xz[13..16],
        &[0x00, 0x21, 0x01],
        "unexpected xz block header"
    );
    xz[16] = dict_byte;
    let crc = crc32(&xz[12..12 + size - 4]);
    xz[12 + size - 4..12 + size].copy_from_slice(&crc.to_le_bytes());
    xz
}

/// `tar` as one zstd frame with the window descriptor `wd` (RFC 8878 §3.1.1.1.2: window =
/// 2^(10 + wd >> 3) × (1 + (wd & 7) / 8)) and raw blocks, so any window is valid for the data.
fn zstd_with_window(tar: &[u8], wd: u8) -> Vec<u8> {
    let mut z = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, wd];
    let blocks: Vec<&[u8]> = tar.chunks(64 << 10).collect();
    for (i, b) in blocks.iter().enumerate() {
        let last = u32::from(i + 1 == blocks.len());
        let header = (b.len() as u32) << 3 | last;
        z.extend_from_slice(&header.to_le_bytes()[..3]);
        z.extend_from_slice(b);
    }
    z
}

fn create(input: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["create", "-t", "tar-rafs", "-B"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.push(s(&out.join("boot")).into());
    args.push("-b".into());
    args.push(s(&out.join("blob")).into());
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(s(input).into());
    args
}

fn run_create(input: &Path, out: &Path, extra: &[&str]) -> Result<(), String> {
    let args = create(input, out, extra);
    let o = Command::new(bin()).args(&args).output().unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// The last non-empty stderr line (the error itself, after any log lines).
fn last_line(stderr: &str) -> &str {
    stderr.lines().rev().find(|l| !l.is_empty()).unwrap_or("")
}

/// One decoder's cap, both ways: a stream `huge` needs more than the 256 MiB default and is
/// refused, naming the source, the need and the flag, with nothing written (and passes when
/// the limit is raised to `huge_passes_at`, if given); a stream `big` passes under the default
/// and is refused under the lower limit `big_fails_at`.
struct CapCase {
    kind: &'static str,
    ext: &'static str,
    huge: Vec<u8>,
    huge_passes_at: Option<&'static str>,
    big: Vec<u8>,
    big_fails_at: &'static str,
}

fn assert_cap(c: CapCase) {
    let d = scratch();
    let huge = d.path().join(format!("huge.tar.{}", c.ext));
    std::fs::write(&huge, &c.huge).unwrap();
    let big = d.path().join(format!("big.tar.{}", c.ext));
    std::fs::write(&big, &c.big).unwrap();
    let (boot, blob) = (d.path().join("boot"), d.path().join("blob"));

    let err = run_create(&huge, d.path(), &[]).unwrap_err();
    let line = last_line(&err);
    assert!(line.contains(s(&huge)), "{err}");
    let need = format!("{} stream needs more than 256 MiB", c.kind);
    assert!(line.contains(&need), "{err}");
    assert!(line.contains("--max-decompress-memory"), "{err}");
    assert!(!boot.exists() && !blob.exists());
    if let Some(limit) = c.huge_passes_at {
        run_create(&huge, d.path(), &["--max-decompress-memory", limit]).unwrap();
        std::fs::remove_file(&boot).unwrap();
    }

    run_create(&big, d.path(), &[]).unwrap();
    std::fs::remove_file(&boot).unwrap();
    let err = run_create(&big, d.path(), &["--max-decompress-memory", c.big_fails_at]);
    let err = err.unwrap_err();
    let size = c.big_fails_at.trim_end_matches('M');
    let need = format!("needs more than {size} MiB");
    assert!(last_line(&err).contains(&need), "{err}");
    assert!(!boot.exists());
}

#[test]
fn xz_dictionary_beyond_the_cap_is_refused() {
    let d = scratch();
    let tar = small_tar(d.path(), 3);
    assert_cap(CapCase {
        kind: "xz",
        ext: "xz",
        // 37: 1.5 GiB; 28: 64 MiB (what xz -9 uses)
        huge: xz_with_dict(&tar, 37),
        huge_passes_at: None,
        big: xz_with_dict(&tar, 28),
        big_fails_at: "32M",
    });
}

#[test]
fn zstd_window_beyond_the_cap_is_refused() {
    let d = scratch();
    let tar = small_tar(d.path(), 3);
    assert_cap(CapCase {
        kind: "zstd",
        ext: "zst",
        // 0xa8: 2 GiB (as --long=31); 0x88: 128 MiB (as --long=27)
        huge: zstd_with_window(&tar, 0xa8),
        huge_passes_at: Some("2G"),
        big: zstd_with_window(&tar, 0x88),
        big_fails_at: "64M",
    });
}

/// A tar.gz of one file of `gib` GiB of zeros: gzip members of 64 MiB of zeros each (a few
/// KiB compressed) concatenated, so the bomb costs nothing to make.
fn gzip_bomb(path: &Path, gib: u64) {
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let size = gib << 30;
    let mut header = [0u8; 512];
    header[..4].copy_from_slice(b"zero");
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..265].copy_from_slice(b"ustar\x0000");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let zeros = gz(&vec![0u8; 64 << 20]);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&gz(&header)).unwrap();
    for _ in 0..size / (64 << 20) {
        f.write_all(&zeros).unwrap();
    }
    f.write_all(&gz(&[0u8; 1024])).unwrap();
    f.flush().unwrap();
}

/// The peak RSS (VmHWM) of a stopped process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until `pid` is stopped (state `T` in /proc/PID/stat).
fn wait_stopped(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
        if state == Some('T') {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never stopped");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn gzip_bomb_streams_in_constant_memory() {
    let d = scratch();
    let bomb = d.path().join("bomb.tar.gz");
    gzip_bomb(&bomb, 4);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 16 << 20);
    let args = create(&bomb, d.path(), &["--threads", "2"]);
    // stopped just before the outputs are renamed into place: every byte has been read
    let child = Command::new(bin())
        .args(&args)
        .env("EROFS_FORGE_STOP_AT", "commit")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(child.id());
    let peak = peak_rss_kib(child.id());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the batch pool bounds the heap (about 30 MiB at 2 threads); the release binary's RSS
    // peaks near 80 MiB for 4 and 32 GiB alike. Buffering the file would take GiBs.
    assert!(peak < 128 << 10, "peak RSS {peak} KiB for a 4 GiB bomb");
    eprintln!("4 GiB gzip bomb: peak RSS {peak} KiB");
}

fn tar_of(dir: &Path, files: usize) -> PathBuf {
    let tar = dir.join("t.tar");
    std::fs::write(&tar, small_tar(dir, files)).unwrap();
    tar
}

#[test]
fn max_entries_caps_tar_and_directory_sources() {
    let d = scratch();
    let tar = tar_of(d.path(), 5);
    // the root and 5 files: 6 entries
    let err = run_create(&tar, d.path(), &["--max-entries", "4"]).unwrap_err();
    let line = last_line(&err);
    assert!(line.contains(s(&tar)), "{err}");
    assert!(line.contains("more than 4 entries"), "{err}");
    assert!(line.contains("--max-entries"), "{err}");
    assert!(!d.path().join("boot").exists());
    // `./` replaces the implied root, whose inode counts until the end: 7 inodes
    run_create(&tar, d.path(), &["--max-entries", "7"]).unwrap();

    let src = d.path().join("src");
    let out = d.path().join("dir-out");
    std::fs::create_dir(&out).unwrap();
    let err = forge_fails(&[
        "create",
        "-B",
        s(&out.join("boot")),
        "-b",
        s(&out.join("blob")),
        "--max-entries",
        "5",
        s(&src),
    ]);
    assert!(
        last_line(&err).contains("more than 5 entries; --max-entries"),
        "{err}"
    );
    assert!(last_line(&err).contains(s(&src)), "{err}");
    forge(&[
        "create",
        "-B",
        s(&out.join("boot")),
        "-b",
        s(&out.join("blob")),
        "--max-entries",
        "6",
        s(&src),
    ]);
}
