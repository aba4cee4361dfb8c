//! Probes, once per build, what the CLI tests need from this machine (root, the kernel's
//! EROFS, loop devices, outside tools) and tells the tests through `--cfg no_*` flags, so that a
//! test whose requirement is missing is marked *ignored* and counted as such in cargo's summary
//! line, never as passed. `cargo xtask test` installs the tools first; CI fails on any ignored
//! test. The library itself does not use these flags.

use std::path::Path;
use std::process::Command;

/// Every flag this script may set (declared so `unexpected_cfgs` knows them).
const FLAGS: &[&str] = &[
    "no_root",
    "no_mount",
    "no_full_tree",
    "no_fsck_erofs",
    "no_veritysetup",
    "no_umoci",
    "no_skopeo",
    "no_registry",
    "no_gnu_tar",
    "no_compressors",
    "no_py_crypto",
    "no_chromium",
    "no_mkfs19",
    "no_debian",
];

fn main() {
    for f in FLAGS {
        println!("cargo::rustc-check-cfg=cfg({f})");
    }
    // Installing a package changes these directories; the probe reruns then.
    for dir in [
        "/usr/bin",
        "/usr/sbin",
        "/sbin",
        "/bin",
        "/usr/lib/python3/dist-packages",
    ] {
        if Path::new(dir).is_dir() {
            println!("cargo::rerun-if-changed={dir}");
        }
    }
    println!("cargo::rerun-if-changed=build.rs");
    build_info();
    println!("cargo::rerun-if-env-changed=PATH");
    let root = is_root();
    let set = |flag: &str, missing: bool| {
        if missing {
            println!("cargo::rustc-cfg={flag}");
        }
    };
    set("no_root", !root);
    set("no_mount", !(root && have_erofs() && have("losetup")));
    let tree_tools = ["setfattr", "setfacl", "setcap", "python3", "mknod"];
    set(
        "no_full_tree",
        !(root && tree_tools.iter().all(|t| have(t))),
    );
    set("no_fsck_erofs", !have("fsck.erofs"));
    set("no_veritysetup", !have("veritysetup"));
    set("no_umoci", !have("umoci"));
    set("no_skopeo", !have("skopeo"));
    // Debian's docker-registry (the CNCF distribution registry): the registry tests start one
    // on 127.0.0.1 (tests/cli/registry.rs), with apache2-utils' htpasswd for its basic auth
    set(
        "no_registry",
        !((have("docker-registry") || Path::new("/usr/bin/docker-registry").is_file())
            && have("htpasswd")),
    );
    set("no_gnu_tar", !gnu_tar());
    set(
        "no_compressors",
        !["gzip", "zstd", "xz"].iter().all(|t| have(t)),
    );
    set("no_chromium", !have("chromium"));
    // the reference mkfs.erofs of erofs-utils 1.9 (tests/tools/build-erofs-utils.sh, run by
    // `cargo xtask test`): the mkfs.erofs front end is compared with it
    set("no_mkfs19", !mkfs19());
    set("no_debian", !debian_tar());
    // Debian's python3 with python3-cryptography (OpenSSL) and python3-zstandard: the
    // independent decryption of an encrypted blob (tests/tools/decrypt.py)
    set("no_py_crypto", !py_crypto());
}

/// Whether `cargo xtask test` has put the Debian tree's tar the convert tests push into
/// `target/debian-image` (a directory of its own: cargo scans a watched directory, and the
/// tree beside the tar holds links into /proc that look changed on every build).
fn debian_tar() -> bool {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into());
    let dir = Path::new(&manifest_dir).join("target/debian-image");
    if std::fs::create_dir_all(&dir).is_ok() {
        println!("cargo::rerun-if-changed=target/debian-image");
    }
    dir.join("debian.tar").is_file()
}

/// Whether `tests/tools/build-erofs-utils.sh target/erofs-utils-1.9` has built its binaries
/// (it installs its `bin` directory whole, by a rename). Watched so that the probe reruns once
/// they appear: the `bin` directory when it exists, else the directory the script builds in,
/// made here if need be (a missing path would rerun this script on every build, and `target`
/// itself changes with every build).
fn mkfs19() -> bool {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into());
    let base = Path::new(&manifest_dir).join("target/erofs-utils-1.9");
    let bin = base.join("bin");
    if bin.is_dir() {
        println!("cargo::rerun-if-changed=target/erofs-utils-1.9/bin");
    } else if std::fs::create_dir_all(&base).is_ok() {
        println!("cargo::rerun-if-changed=target/erofs-utils-1.9");
    }
    ["mkfs.erofs", "fsck.erofs"]
        .iter()
        .all(|t| bin.join(t).is_file())
}

fn py_crypto() -> bool {
    Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import cryptography.hazmat.primitives.ciphers, zstandard",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn gnu_tar() -> bool {
    Command::new("tar")
        .arg("--version")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GNU tar"))
        .unwrap_or(false)
}

/// Whether the kernel mounts EROFS (loading the module if it is one and we may).
fn have_erofs() -> bool {
    let listed = || {
        std::fs::read_to_string("/proc/filesystems")
            .map(|s| s.lines().any(|l| l.trim_end().ends_with("erofs")))
            .unwrap_or(false)
    };
    if listed() {
        return true;
    }
    let _ = Command::new("modprobe").arg("erofs").status();
    listed()
}

/// What `--version` prints beside the package version, in nydus-image's shape (issue 13:
/// acceleration-service reads it): the git commit (`$EROFS_FORGE_GIT_COMMIT`, else `git
/// rev-parse HEAD`, else "unknown"), the cargo profile and the compiler's version.
fn build_info() {
    println!("cargo::rerun-if-env-changed=EROFS_FORGE_GIT_COMMIT");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    // the HEAD reflog changes with every commit and checkout of this work tree
    if let Some(log) = git(&["rev-parse", "--git-path", "logs/HEAD"]) {
        if Path::new(&log).exists() {
            println!("cargo::rerun-if-changed={log}");
        }
    }
    let commit = std::env::var("EROFS_FORGE_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=EROFS_FORGE_GIT_COMMIT={commit}");
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo::rustc-env=EROFS_FORGE_PROFILE={profile}");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=EROFS_FORGE_RUSTC={version}");
}
