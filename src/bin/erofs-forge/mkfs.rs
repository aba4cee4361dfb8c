//! `mkfs.erofs`'s command line (erofs-utils 1.9), for the callers that run it with fixed argv:
//! containerd's EROFS differ and snapshotter, image publishers. The binary answers to it when
//! run as `mkfs.erofs` (a symlink) or as `erofs-forge mkfs ...`. Options are parsed with
//! getopt_long's rules (`-zlz4hc` and `-z lz4hc`, `--tar=f`, `-Enoinline_data` and
//! `-E noinline_data`, unique prefixes of long options, options after operands); an option this
//! front end does not carry out is refused, never ignored (docs/mkfs.md lists them).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use erofs_forge::ops::export_compressed::{ErofsCompression, ErofsCompressor};
use erofs_forge::ops::mkfs::{Exclude, MkfsOptions, MkfsSource, Mtimes, Owners};
use erofs_forge::SourceLimits;

/// Whether an option takes a value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arg {
    No,
    Required,
    /// Only as `--name=value`.
    Optional,
}

/// The options carried out: long name, short letter, argument.
const OPTIONS: &[(&str, Option<char>, Arg)] = &[
    ("version", Some('V'), Arg::No),
    ("help", Some('h'), Arg::No),
    ("", Some('z'), Arg::Required),
    ("", Some('C'), Arg::Required),
    ("", Some('E'), Arg::Required),
    ("", Some('L'), Arg::Required),
    ("", Some('T'), Arg::Required),
    ("", Some('U'), Arg::Required),
    ("", Some('b'), Arg::Required),
    ("", Some('d'), Arg::Required),
    ("", Some('x'), Arg::Required),
    ("quiet", None, Arg::No),
    ("tar", None, Arg::Optional),
    ("aufs", None, Arg::No),
    ("ovlfs-strip", None, Arg::Optional),
    ("sort", None, Arg::Required),
    ("all-time", None, Arg::No),
    ("mkfs-time", None, Arg::No),
    ("all-root", None, Arg::No),
    ("incremental", None, Arg::Optional),
    ("exclude-path", None, Arg::Required),
    ("exclude-regex", None, Arg::Required),
    ("force-uid", None, Arg::Required),
    ("force-gid", None, Arg::Required),
    ("uid-offset", None, Arg::Required),
    ("gid-offset", None, Arg::Required),
    ("workers", None, Arg::Required),
    ("gzip", None, Arg::No),
    ("ungzip", None, Arg::Optional),
    ("unxz", None, Arg::Optional),
    ("unlzma", None, Arg::Optional),
    ("ignore-mtime", None, Arg::No),
    ("preserve-mtime", None, Arg::No),
];

/// `-E` extended options accepted. `noinline_data` is what erofs-forge always does (regular
/// file data is never inlined after its inode); the compression layout hints are valid
/// requests whose output erofs-forge lays out its own way (formats/rafs-v6.md §20).
const EXTENDED: &[&str] = &[
    "noinline_data",
    "^inline_data",
    "inline_data",
    "force-inode-extended",
    "force-inode-compact",
    "nosbcrc",
    "ztailpacking",
    "^ztailpacking",
    "fragments",
    "all-fragments",
    "dedupe",
    "^dedupe",
    "fragdedupe",
    "legacy-compress",
];

/// One option as the command line gave it.
struct Given {
    name: String,
    value: Option<String>,
}

/// Parses and runs; the process's exit code.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args: Vec<String> = match args.into_iter().map(OsString::into_string).collect() {
        Ok(a) => a,
        Err(bad) => return fail(&format!("argument {bad:?} is not UTF-8")),
    };
    let (given, operands) = match getopt(&args) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if given.iter().any(|g| g.name == "help") {
        print!("{}", help());
        return ExitCode::SUCCESS;
    }
    if given.iter().any(|g| g.name == "version") {
        println!("mkfs.erofs 1.9 (erofs-forge {})", env!("CARGO_PKG_VERSION"));
        println!("available compressors: lz4, lz4hc, lzma, zstd");
        return ExitCode::SUCCESS;
    }
    let plan = match Plan::from(&given, &operands) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if let Some(n) = plan.workers {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    if !plan.quiet {
        println!("mkfs.erofs 1.9 (erofs-forge {})", env!("CARGO_PKG_VERSION"));
    }
    match erofs_forge::ops::mkfs::mkfs(&plan.opts) {
        Ok(out) => {
            if !plan.quiet {
                println!(
                    "Build completed: {} inodes, {} data blocks, {} bytes",
                    out.inodes, out.data_blocks, out.size
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&crate::report::error_line(&e.into())),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("mkfs.erofs: {message}");
    ExitCode::FAILURE
}

/// getopt_long over `args` (without argv[0]): the options in order, and the operands.
fn getopt(args: &[String]) -> Result<(Vec<Given>, Vec<String>), String> {
    let mut given = Vec::new();
    let mut operands = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let (full, arg) = long_option(name)?;
            let value = match (arg, value) {
                (Arg::No, Some(_)) => {
                    return Err(format!("option '--{full}' doesn't allow an argument"))
                }
                (Arg::Required, None) => {
                    let v = args
                        .get(i)
                        .cloned()
                        .ok_or_else(|| format!("option '--{full}' requires an argument"))?;
                    i += 1;
                    Some(v)
                }
                (_, v) => v,
            };
            given.push(Given {
                name: full.to_string(),
                value,
            });
        } else if a.len() > 1 && a.starts_with('-') {
            i = short_options(a, args, i, &mut given)?;
        } else {
            operands.push(a.clone());
        }
    }
    Ok((given, operands))
}

/// The long option `name` stands for (exactly, or as the only one it begins).
fn long_option(name: &str) -> Result<(&'static str, Arg), String> {
    if let Some((n, _, a)) = OPTIONS.iter().find(|(n, _, _)| !n.is_empty() && *n == name) {
        return Ok((n, *a));
    }
    let matches: Vec<_> = OPTIONS
        .iter()
        .filter(|(n, _, _)| !n.is_empty() && n.starts_with(name))
        .collect();
    match matches.as_slice() {
        [(n, _, a)] if !name.is_empty() => Ok((n, *a)),
        [] | [_] => Err(unsupported(&format!("--{name}"))),
        _ => Err(format!("option '--{name}' is ambiguous")),
    }
}

/// A cluster of short options (`-Vh`, `-zlz4hc`, `-z` `lz4hc`); returns the next argument's index.
fn short_options(
    a: &str,
    args: &[String],
    mut i: usize,
    given: &mut Vec<Given>,
) -> Result<usize, String> {
    let letters: Vec<char> = a[1..].chars().collect();
    for (k, c) in letters.iter().enumerate() {
        let Some((long, _, arg)) = OPTIONS.iter().find(|(_, s, _)| *s == Some(*c)) else {
            return Err(unsupported(&format!("-{c}")));
        };
        let name = if long.is_empty() {
            c.to_string()
        } else {
            long.to_string()
        };
        if *arg == Arg::No {
            given.push(Given { name, value: None });
            continue;
        }
        let rest: String = letters[k + 1..].iter().collect();
        let value = if !rest.is_empty() {
            rest
        } else {
            let v = args
                .get(i)
                .cloned()
                .ok_or_else(|| format!("option requires an argument -- '{c}'"))?;
            i += 1;
            v
        };
        given.push(Given {
            name,
            value: Some(value),
        });
        break;
    }
    Ok(i)
}

fn unsupported(option: &str) -> String {
    let mut names: Vec<String> = OPTIONS
        .iter()
        .map(|(l, s, _)| match (l.is_empty(), s) {
            (false, Some(c)) => format!("-{c}/--{l}"),
            (false, None) => format!("--{l}"),
            (true, Some(c)) => format!("-{c}"),
            (true, None) => String::new(),
        })
        .collect();
    names.retain(|n| !n.is_empty());
    format!(
        "unsupported option '{option}' (supported: {})",
        names.join(", ")
    )
}

/// The parsed command line, as library options and the front end's own settings.
struct Plan {
    opts: MkfsOptions,
    quiet: bool,
    workers: Option<usize>,
}

/// Settings gathered option by option before they become [`MkfsOptions`].
#[derive(Default)]
struct Settings {
    tar: Option<String>,
    compression: Option<ErofsCompression>,
    pcluster: Option<u32>,
    aufs: bool,
    ovlfs_strip: bool,
    uuid: Option<[u8; 16]>,
    label: Option<String>,
    timestamp: Option<u64>,
    mtimes: Option<Mtimes>,
    owners: Owners,
    xattrs: bool,
    exclude: Vec<Exclude>,
    incremental: bool,
    quiet: bool,
    workers: Option<usize>,
}

impl Plan {
    fn from(given: &[Given], operands: &[String]) -> Result<Plan, String> {
        let mut s = Settings {
            xattrs: true,
            ..Settings::default()
        };
        for g in given {
            s.apply(g)?;
        }
        let index = |p: &str| MkfsSource::TarIndex(PathBuf::from(p));
        let source = match (s.tar.as_deref(), operands) {
            (Some("headerball"), _) => {
                return Err("--tar=headerball is not supported: only f (full) and i (index)".into())
            }
            (Some("i" | "0"), [_]) => index("-"),
            (Some("i" | "0"), [_, tar]) => index(tar),
            (Some(_), [_]) => MkfsSource::Tar(PathBuf::from("-")),
            (Some(_), [_, tar]) => MkfsSource::Tar(PathBuf::from(tar)),
            (None, [_, src]) if std::path::Path::new(src).is_dir() => {
                MkfsSource::Directory(PathBuf::from(src))
            }
            // rebuild mode: the sources are EROFS images, lowest layer first
            (None, [_, images @ ..]) if !images.is_empty() => {
                for i in images {
                    if !is_erofs(std::path::Path::new(i)) {
                        return Err(format!(
                            "{i}: neither a directory nor an EROFS image (a tar source needs --tar)"
                        ));
                    }
                }
                MkfsSource::Images(images.iter().map(PathBuf::from).collect())
            }
            (_, []) => return Err("missing output image".into()),
            _ => return Err("too many operands: IMAGE [SOURCE]".into()),
        };
        if !s.exclude.is_empty() && !matches!(source, MkfsSource::Directory(_)) {
            return Err("--exclude-path and --exclude-regex apply to a directory source".into());
        }
        let output = PathBuf::from(&operands[0]);
        if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(format!("{}: no such directory", parent.display()));
            }
        }
        let (build_time, mtimes) = times(s.timestamp, s.mtimes)?;
        let compression = s.compression.map(|c| ErofsCompression {
            extent_blocks: s.pcluster.map_or(c.extent_blocks, |p| (p / 4096).max(2)),
            // an explicit -C asks for physical clusters that size: filled, as erofs-utils fills
            // them (with its fixed-output compression)
            fill: s.pcluster.is_some(),
            ..c
        });
        let opts = MkfsOptions {
            output,
            source,
            compression,
            aufs: s.aufs,
            ovlfs_strip: s.ovlfs_strip,
            uuid: s.uuid.unwrap_or_else(random_uuid),
            label: s.label,
            build_time,
            mtimes,
            owners: s.owners,
            xattrs: s.xattrs,
            exclude: s.exclude,
            incremental: s.incremental,
            process_ids: (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            ),
            limits: SourceLimits::default(),
        };
        Ok(Plan {
            opts,
            quiet: s.quiet,
            workers: s.workers,
        })
    }
}

impl Settings {
    fn apply(&mut self, g: &Given) -> Result<(), String> {
        let v = g.value.as_deref().unwrap_or("");
        match g.name.as_str() {
            "z" => self.compression = Some(compressor(v)?),
            "C" => self.pcluster = Some(pcluster(v)?),
            "E" => extended(v)?,
            "L" => self.label = Some(v.chars().take(15).collect()),
            "T" => self.timestamp = Some(number(v, "-T")?),
            "U" => self.uuid = Some(uuid(v)?),
            "b" if number(v, "-b")? == 4096 => {}
            "b" => return Err(format!("block size {v}: only 4096 is supported")),
            "d" => self.quiet |= number(v, "-d")? == 0,
            "x" => self.xattrs = !v.trim().starts_with('-'),
            "quiet" => self.quiet = true,
            "tar" => self.tar = Some(if v.is_empty() { "f".into() } else { v.into() }),
            "aufs" => self.aufs = true,
            "ovlfs-strip" => self.ovlfs_strip = v.is_empty() || v == "1",
            "sort" | "gzip" | "preserve-mtime" => {}
            "ungzip" | "unxz" | "unlzma" if v.is_empty() => {}
            "ungzip" | "unxz" | "unlzma" => {
                return Err(format!(
                    "--{}={v}: decompressing into a file is not supported",
                    g.name
                ))
            }
            "all-time" | "ignore-mtime" => self.mtimes = Some(Mtimes::Fixed),
            "mkfs-time" => self.mtimes = Some(Mtimes::Kept),
            "all-root" => (self.owners.force_uid, self.owners.force_gid) = (Some(0), Some(0)),
            "incremental" if v.is_empty() || v == "data" => self.incremental = true,
            "incremental" => {
                return Err(format!(
                    "--incremental={v}: only data (the new data appended)"
                ))
            }
            "exclude-path" => self.exclude.push(Exclude::Path(v.as_bytes().to_vec())),
            "exclude-regex" => self.exclude.push(Exclude::Regex(
                regex::bytes::Regex::new(v)
                    .map_err(|e| format!("invalid --exclude-regex {v:?}: {e}"))?,
            )),
            "force-uid" => self.owners.force_uid = Some(id(v, "--force-uid")?),
            "force-gid" => self.owners.force_gid = Some(id(v, "--force-gid")?),
            "uid-offset" => self.owners.uid_offset = id(v, "--uid-offset")?,
            "gid-offset" => self.owners.gid_offset = id(v, "--gid-offset")?,
            "workers" => self.workers = Some(number(v, "--workers")?.max(1) as usize),
            other => return Err(unsupported(other)),
        }
        Ok(())
    }
}

/// Build time and mtime rule: `SOURCE_DATE_EPOCH` clamps (and overrides `-T`); `-T` fixes
/// every mtime unless `--mkfs-time`; otherwise now, mtimes kept.
fn times(timestamp: Option<u64>, mtimes: Option<Mtimes>) -> Result<(u64, Mtimes), String> {
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        let t = epoch
            .parse()
            .map_err(|_| format!("environment variable $SOURCE_DATE_EPOCH {epoch} is invalid"))?;
        return Ok((t, Mtimes::Clamped));
    }
    match timestamp {
        Some(t) => Ok((t, mtimes.unwrap_or(Mtimes::Fixed))),
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Ok((now, mtimes.unwrap_or(Mtimes::Kept)))
        }
    }
}

/// Whether `p` starts like an EROFS image (the superblock magic at 1024); a file that cannot
/// be read is left to the merge, which names the error.
fn is_erofs(p: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 1028];
    match std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut head)) {
        Ok(()) => head[1024..1028] == 0xE0F5_E1E2u32.to_le_bytes(),
        Err(e) => e.kind() != std::io::ErrorKind::UnexpectedEof,
    }
}

/// `-z ALG[,level=N][,N][:ALG2...]`: the first algorithm (alternatives are not used).
fn compressor(v: &str) -> Result<ErofsCompression, String> {
    let first = v.split(':').next().unwrap_or("");
    let mut parts = first.split(',');
    let algo: ErofsCompressor = parts
        .next()
        .unwrap_or("")
        .parse()
        .map_err(|e: erofs_forge::Error| e.to_string())?;
    let mut level = None;
    for p in parts {
        let n = p.strip_prefix("level=").unwrap_or(p);
        if p.starts_with("dictsize=") {
            continue;
        }
        level = Some(number(n, "-z level")? as u32);
    }
    Ok(ErofsCompression {
        algo,
        level: level.or(match algo {
            // mkfs.erofs's own defaults
            ErofsCompressor::Zstd => Some(3),
            ErofsCompressor::Lz4hc => Some(9),
            ErofsCompressor::Lzma => Some(6),
            ErofsCompressor::Lz4 => None,
        }),
        ..ErofsCompression::export(algo)
    })
}

/// `-C BYTES`: a multiple of the block size; extents hold at most that much (1 MiB at most).
fn pcluster(v: &str) -> Result<u32, String> {
    let n = number(v, "-C")?;
    if n == 0 || n % 4096 != 0 || n > 1 << 20 {
        return Err(format!(
            "physical cluster size {v}: a multiple of 4096 up to 1048576"
        ));
    }
    Ok(n as u32)
}

fn extended(v: &str) -> Result<(), String> {
    for opt in v.split(',').filter(|o| !o.is_empty()) {
        let key = opt.split('=').next().unwrap_or(opt);
        if !EXTENDED.contains(&key) {
            return Err(format!(
                "unsupported extended option '{opt}' (supported: {})",
                EXTENDED.join(", ")
            ));
        }
    }
    Ok(())
}

fn number(v: &str, what: &str) -> Result<u64, String> {
    crate::args::parse_number(v.trim()).map_err(|_| format!("invalid {what} value '{v}'"))
}

fn id(v: &str, what: &str) -> Result<u32, String> {
    u32::try_from(number(v, what)?).map_err(|_| format!("invalid {what} value '{v}'"))
}

/// `-U clear|random|UUID`.
fn uuid(v: &str) -> Result<[u8; 16], String> {
    match v {
        "clear" => Ok([0; 16]),
        "random" => Ok(random_uuid()),
        _ => {
            let hex: String = v.chars().filter(|c| *c != '-').collect();
            let mut out = [0u8; 16];
            if v.len() != 36 || hex::decode_to_slice(&hex, &mut out).is_err() {
                return Err(format!("invalid UUID {v}"));
            }
            Ok(out)
        }
    }
}

/// A version 4 UUID from the OS's secure source.
fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    let _ = getrandom::fill(&mut u);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

fn help() -> String {
    format!(
        "Usage: mkfs.erofs [OPTIONS] FILE SOURCE(s)
Generate an EROFS image (FILE) from a directory, a tarball or standard input
(erofs-forge {}, with erofs-utils 1.9's command line).

 -zX[,level=Y]          X=compressor: lz4, lz4hc, lzma, zstd (Y=compression level)
 -C#                    largest physical cluster in bytes (multiple of 4096, up to 1 MiB)
 -EX[,...]              extended options: noinline_data (always), ^inline_data,
                        force-inode-extended, force-inode-compact, nosbcrc, ztailpacking,
                        fragments, all-fragments, dedupe, fragdedupe (accepted)
 -L volume-label        set the volume label (at most 15 bytes)
 -T#                    fixed UNIX timestamp # as build time
    --all-time          the timestamp is also applied to all files (default)
    --mkfs-time         the timestamp is applied as build time only
 -UX                    filesystem UUID: clear, random (default) or a UUID
 -b#                    block size (4096)
 -d#                    verbosity (0: quiet)
 -x#                    xattr tolerance (< 0: no xattrs)
 --all-root             make all files owned by root
 --incremental[=data]  apply the tar (--tar=f) on top of the existing IMAGE, appending its data
 --exclude-path=X       leave out X (a directory source's path, relative to it)
 --exclude-regex=X      leave out paths the regular expression X matches
 --force-uid=#          set all file uids to #
 --force-gid=#          set all file gids to #
 --uid-offset=#         add # to all file uids
 --gid-offset=#         add # to all file gids
 --aufs                 replace aufs special files with overlayfs metadata
 --ovlfs-strip=<0,1>    strip overlayfs metadata in the target image (e.g. whiteouts)
 --tar=X                generate an image from a tarball, from SOURCE or standard input
                        (X = f: full mode; i: index only, 512-byte blocks, the tar to be
                        appended to the image); gzip, zstd and xz tarballs (f) are detected
 --gzip, --ungzip       accepted: compressed tarballs are detected
 --sort=<path,none>     accepted: data goes in tar order
 --workers=#            compression threads
 --quiet                quiet execution
 -V, --version          print the version
 -h, --help             display this help and exit
",
        env!("CARGO_PKG_VERSION")
    )
}
