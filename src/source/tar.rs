//! Tar source: reads a tar stream (plain, gzip, zstd or xz) in one pass and builds the
//! [`Tree`] as it goes, handing each regular file's data to a [`FileData`] consumer (the chunk
//! pipeline, or the tarfs chunk mapper) while the stream is positioned on it. Memory stays
//! bounded: no file is ever buffered whole.
//!
//! Entry handling, in short (formats/tar.md has the details):
//! * ustar, GNU (`L`/`K` long names, old sparse `S`) and PAX (`x`, `g`) headers; PAX records
//!   are cut by their length prefix, so values may hold newlines.
//! * Names: leading `/` and `.` components are dropped; `..` components, empty names, NUL
//!   bytes and components over 255 bytes are rejected with the entry and its offset.
//! * Directories the archive only implies are 0755, 0:0, mtime 0.
//! * A later entry for the same path replaces the earlier one; a directory replacing a
//!   directory keeps the children.
//! * Hardlinks (to any non-directory) share the target's inode.
//! * Whiteouts (`.wh.*`) are ordinary entries: a layer's tar is stored as it is.
//!
//! It is hand-written rather than built on the `tar` crate for the reasons, each with its test
//! below, in formats/tar.md §6 (PAX values with newlines, PAX sparse files, bounded memory).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::{Error, IoContext, Result};
use crate::format::tar::{self as header, field, kind, Magic, Segment, BLOCK};
use crate::model::{ChunkId, EntryId, FileType, Inode, InodeId, InodeKind, Tree};
use crate::source::limits::DEFAULT_MAX_ENTRIES;

/// Largest PAX extended header accepted (bounded memory).
pub const MAX_PAX_HEADER: u64 = 16 << 20;
/// Largest GNU long name / long link accepted.
pub const MAX_LONG_NAME: u64 = 1 << 20;
/// Longest symlink target accepted (Linux `PATH_MAX` - 1).
pub const MAX_SYMLINK: usize = 4095;
/// Most segments a sparse map may have.
pub const MAX_SPARSE_SEGMENTS: usize = 1 << 20;
/// Longest xattr name (Linux `XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME: usize = 255;
/// Largest xattr value (Linux `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE: usize = 65536;
/// Most xattr bytes (names and values) one entry may carry.
pub const MAX_ENTRY_XATTRS: usize = 256 << 10;
/// Most xattr bytes global PAX headers may set: they are copied into every later entry.
pub const MAX_GLOBAL_XATTRS: usize = 64 << 10;

/// Total size of xattr names and values.
fn xattr_bytes(x: &[(Vec<u8>, Vec<u8>)]) -> usize {
    x.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Checks one xattr against the kernel's limits.
fn check_xattr(name: &[u8], value: &[u8]) -> std::result::Result<(), String> {
    if name.len() > MAX_XATTR_NAME {
        return Err(format!(
            "xattr name of {} bytes (the limit is {MAX_XATTR_NAME})",
            name.len()
        ));
    }
    if value.len() > MAX_XATTR_VALUE {
        return Err(format!(
            "xattr {} has a value of {} bytes (the limit is {MAX_XATTR_VALUE})",
            String::from_utf8_lossy(name),
            value.len()
        ));
    }
    Ok(())
}

/// Compression of a tar stream, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`, or a skippable frame first).
    Zstd,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
}

impl Compression {
    /// Recognises a compressed stream by its magic bytes (at least 6 bytes, fewer at EOF).
    pub fn detect(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
            || (prefix.len() >= 4 && prefix[0] & 0xf0 == 0x50 && prefix[1..4] == [0x2a, 0x4d, 0x18])
        {
            Compression::Zstd
        } else if prefix.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else {
            Compression::None
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        }
    }
}

/// Whether `path` means standard input.
pub fn is_stdin(path: &Path) -> bool {
    path == Path::new("-") || path == Path::new("/dev/stdin")
}

/// Opens the raw input: a file, a fifo, or standard input (`-` or `/dev/stdin`). Returns the
/// reader and, for a regular file, its size.
pub fn open_raw(path: &Path) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    if is_stdin(path) {
        return Ok((Box::new(std::io::stdin()), None));
    }
    let f = File::open(path).ctx("open", path)?;
    crate::io::staged::widen_pipe(&f);
    let meta = f.metadata().ctx("stat", path)?;
    if meta.is_dir() {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            reason: "a tar source must be a file, a fifo or - (standard input), not a directory"
                .into(),
        });
    }
    let size = meta.is_file().then_some(meta.len());
    Ok((Box::new(f), size))
}

/// Detects the compression of `raw` from its first bytes and returns the decompressed stream.
/// An xz or zstd stream that needs more than `max_memory` bytes for its dictionary or window
/// fails its first read with [`Error::DecompressMemory`], before the decoder allocates it.
pub fn decompress<'a>(
    mut raw: Box<dyn Read + Send + 'a>,
    path: &Path,
    max_memory: u64,
) -> Result<(Box<dyn Read + Send + 'a>, Compression)> {
    let mut prefix = Vec::with_capacity(6);
    (&mut raw)
        .take(6)
        .read_to_end(&mut prefix)
        .ctx("read", path)?;
    let compression = Compression::detect(&prefix);
    let whole = std::io::Cursor::new(prefix).chain(raw);
    let buffered = BufReader::with_capacity(256 << 10, whole);
    let decoder: Box<dyn Read + Send + 'a> = match compression {
        Compression::None => return Ok((Box::new(buffered), compression)),
        // inflate's window is 32 KiB whatever the stream says
        Compression::Gzip => {
            let gz = flate2::bufread::MultiGzDecoder::new(buffered);
            return Ok((Box::new(gz), compression));
        }
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(buffered)
                .ctx("start zstd decoding of", path)?;
            d.window_log_max(zstd_window_log(max_memory))
                .ctx("start zstd decoding of", path)?;
            Box::new(d)
        }
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_auto_decoder(
                max_memory,
                liblzma::stream::CONCATENATED,
            )
            .map_err(std::io::Error::from)
            .ctx("start xz decoding of", path)?;
            Box::new(liblzma::bufread::XzDecoder::new_stream(buffered, stream))
        }
    };
    let capped = Capped {
        inner: decoder,
        path: path.to_path_buf(),
        compression,
        max_memory,
    };
    Ok((Box::new(capped), compression))
}

/// The largest zstd window log whose window fits in `max_memory`, within what zstd accepts
/// (10 to 31).
fn zstd_window_log(max_memory: u64) -> u32 {
    max_memory.max(1).ilog2().clamp(10, 31)
}

/// A decoder whose refusal of an oversized window or dictionary becomes
/// [`Error::DecompressMemory`], naming the input, the limit and the flag.
struct Capped<'a> {
    inner: Box<dyn Read + Send + 'a>,
    path: PathBuf,
    compression: Compression,
    max_memory: u64,
}

impl Capped<'_> {
    /// Whether `e` is the decoder refusing a stream for the memory it needs.
    fn is_memory_refusal(&self, e: &std::io::Error) -> bool {
        match self.compression {
            Compression::Xz => e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<liblzma::stream::Error>())
                .is_some_and(|inner| matches!(inner, liblzma::stream::Error::MemLimit)),
            // the zstd crate passes on only ZSTD_getErrorName's text for
            // frameParameter_windowTooLarge
            Compression::Zstd => e.to_string().contains("requires too much memory"),
            Compression::None | Compression::Gzip => false,
        }
    }
}

impl Read for Capped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if self.is_memory_refusal(&e) {
                std::io::Error::other(Error::DecompressMemory {
                    path: self.path.clone(),
                    algo: self.compression.name(),
                    limit: self.max_memory,
                })
            } else {
                e
            }
        })
    }
}

/// A reader that reports every byte count it reads (progress of the raw input).
pub struct Counting<'a, R> {
    inner: R,
    report: &'a (dyn Fn(u64) + Sync),
}

impl<'a, R> Counting<'a, R> {
    /// Wraps `inner`, calling `report` with each read's byte count.
    pub fn new(inner: R, report: &'a (dyn Fn(u64) + Sync)) -> Self {
        Counting { inner, report }
    }
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.report)(n as u64);
        Ok(n)
    }
}

/// Where a regular file's data sits in the archive.
#[derive(Debug, Clone, Copy)]
pub struct DataLocation {
    /// Offset of the first data byte in the uncompressed archive.
    pub offset: u64,
    /// The file is sparse: its bytes are not one contiguous run of the archive.
    pub sparse: bool,
}

/// Consumes the data of regular files, in archive order.
pub trait FileData {
    /// `data` yields exactly `size` bytes of `inode` (holes of sparse files expanded). Returns
    /// the file's chunk ids when they are known at once (tarfs), `None` when they come later.
    /// Bytes left unread are skipped by the caller.
    fn file(
        &mut self,
        inode: InodeId,
        data: &mut dyn Read,
        size: u64,
        location: DataLocation,
        name: &Path,
    ) -> Result<Option<Vec<ChunkId>>>;
}

/// Reads the tar stream `input` (already decompressed) into a tree. `source` names the input in
/// I/O errors.
pub fn read_tar(input: &mut dyn Read, source: &Path, files: &mut dyn FileData) -> Result<Tree> {
    read_tar_limited(input, source, files, DEFAULT_MAX_ENTRIES)
}

/// The tar reader's own buffer: it serves the 512-byte headers and the tails of reads; a
/// chunk-sized data read larger than it goes straight to the input. Over a `dyn Read` a
/// `BufReader` zeroes its whole buffer on first use, so a 1 MiB buffer cost a megabyte of page
/// faults on every archive, over the `decompress` reader's 256 KiB buffer, for nothing.
const TAR_BUFFER: usize = 64 << 10;

/// [`read_tar`] refusing an archive that makes the tree hold more than `max_entries` entries
/// or inodes (a later entry replacing an earlier one may add an inode without an entry).
pub fn read_tar_limited(
    input: &mut dyn Read,
    source: &Path,
    files: &mut dyn FileData,
    max_entries: u64,
) -> Result<Tree> {
    let mut r = Reader {
        max_entries,
        s: Stream {
            r: BufReader::with_capacity(TAR_BUFFER, input),
            pos: 0,
            eof: false,
            source: source.to_path_buf(),
        },
        b: Builder::new(),
        global: Ext::default(),
    };
    r.run(files)?;
    // the name index is as large as the tree: gone before pruning and sorting allocate
    let Builder { mut tree, index } = r.b;
    drop(index);
    tree.prune_unreachable();
    tree.sort();
    Ok(tree)
}

struct Stream<'a> {
    r: BufReader<&'a mut dyn Read>,
    /// Bytes consumed so far.
    pos: u64,
    /// The input ended where more was needed.
    eof: bool,
    source: PathBuf,
}

impl Stream<'_> {
    /// Fills `buf` as far as the input allows; returns the byte count.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).ctx("read", &self.source),
            }
        }
        self.pos += got as u64;
        if got < buf.len() {
            self.eof = true;
        }
        Ok(got)
    }

    /// Skips `n` bytes; false when the input ended first.
    fn skip(&mut self, n: u64) -> Result<bool> {
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .ctx("read", &self.source)?;
        self.pos += copied;
        if copied < n {
            self.eof = true;
        }
        Ok(copied == n)
    }

    /// Reads the rest of the input (after the end-of-archive blocks), so that decoders verify
    /// their checksums and digests cover every byte.
    fn drain(&mut self) -> Result<()> {
        let n = std::io::copy(&mut self.r, &mut std::io::sink()).ctx("read", &self.source)?;
        self.pos += n;
        Ok(())
    }
}

/// Reads one entry's data, failing (instead of returning 0) if the archive ends early.
struct DataReader<'s, 'a> {
    s: &'s mut Stream<'a>,
    left: u64,
}

impl Read for DataReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.s.r.read(&mut buf[..want])?;
        if n == 0 {
            self.s.eof = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the archive ends inside this entry's data",
            ));
        }
        self.s.pos += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Expands a sparse file: zeros in the holes, archive data in the segments.
struct SparseReader<'d> {
    data: &'d mut dyn Read,
    map: Vec<Segment>,
    next: usize,
    pos: u64,
    size: u64,
}

impl Read for SparseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos >= self.size || buf.is_empty() {
                return Ok(0);
            }
            let (hole_end, seg_end) = match self.map.get(self.next) {
                Some(s) => (s.offset, s.offset + s.len),
                None => (self.size, self.size),
            };
            if self.pos < hole_end {
                let n = buf
                    .len()
                    .min((hole_end - self.pos).min(usize::MAX as u64) as usize);
                buf[..n].fill(0);
                self.pos += n as u64;
                return Ok(n);
            }
            if self.pos < seg_end {
                let n = buf
                    .len()
                    .min((seg_end - self.pos).min(usize::MAX as u64) as usize);
                let got = self.data.read(&mut buf[..n])?;
                if got == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "sparse data ends early",
                    ));
                }
                self.pos += got as u64;
                return Ok(got);
            }
            self.next += 1;
        }
    }
}

/// Extended attributes of an entry from PAX / GNU headers.
#[derive(Debug, Default, Clone)]
struct Ext {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse_major: Option<u64>,
    sparse_name: Option<Vec<u8>>,
    sparse_size: Option<u64>,
    sparse_map: Option<Vec<u64>>,
    sparse_pairs: Vec<u64>,
}

impl Ext {
    fn apply_pax(&mut self, body: &[u8]) -> std::result::Result<(), String> {
        for rec in header::pax_records(body)? {
            let v = rec.value;
            match rec.key {
                b"path" => self.path = Some(v.to_vec()),
                b"linkpath" => self.linkpath = Some(v.to_vec()),
                b"size" => self.size = Some(header::pax_unsigned(v, "size")?),
                b"uid" => self.uid = Some(header::pax_unsigned(v, "uid")?),
                b"gid" => self.gid = Some(header::pax_unsigned(v, "gid")?),
                b"mtime" => self.mtime = Some(header::pax_time(v)?),
                b"GNU.sparse.major" => {
                    self.sparse_major = Some(header::pax_unsigned(v, "GNU.sparse.major")?)
                }
                b"GNU.sparse.name" => self.sparse_name = Some(v.to_vec()),
                b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                    self.sparse_size = Some(header::pax_unsigned(v, "GNU.sparse.size")?)
                }
                b"GNU.sparse.map" => {
                    let mut nums = Vec::new();
                    if !v.is_empty() {
                        for n in v.split(|b| *b == b',') {
                            nums.push(header::pax_unsigned(n, "GNU.sparse.map")?);
                        }
                    }
                    self.sparse_map = Some(nums);
                }
                b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                    if self.sparse_pairs.len() >= 2 * MAX_SPARSE_SEGMENTS {
                        return Err("sparse map too large".into());
                    }
                    self.sparse_pairs
                        .push(header::pax_unsigned(v, "GNU.sparse.offset")?);
                }
                k => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        if !name.is_empty() {
                            check_xattr(name, v)?;
                            self.xattrs.push((name.to_vec(), v.to_vec()));
                        }
                    } else if let Some(name) = k.strip_prefix(b"LIBARCHIVE.xattr.") {
                        let name = header::url_decode(name)?;
                        let value = base64::engine::GeneralPurpose::new(
                            &base64::alphabet::STANDARD,
                            base64::engine::GeneralPurposeConfig::new().with_decode_padding_mode(
                                base64::engine::DecodePaddingMode::Indifferent,
                            ),
                        )
                        .decode(v)
                        .map_err(|e| {
                            format!(
                                "LIBARCHIVE.xattr.{}: bad base64 value: {e}",
                                String::from_utf8_lossy(&name)
                            )
                        })?;
                        if !name.is_empty() {
                            check_xattr(&name, &value)?;
                            self.xattrs.push((name, value));
                        }
                    }
                    // other keywords (atime, ctime, uname, gname, comment, vendor keys) do
                    // not reach the image
                }
            }
        }
        Ok(())
    }

    /// Keeps what a global header may set for all later entries: owner, mtime, xattrs. A
    /// global path, link or size would apply to every entry and is ignored.
    fn global_only(mut self) -> Ext {
        self.path = None;
        self.linkpath = None;
        self.size = None;
        self.sparse_major = None;
        self.sparse_name = None;
        self.sparse_size = None;
        self.sparse_map = None;
        self.sparse_pairs.clear();
        self
    }
}

struct Reader<'a> {
    /// Most entries (and inodes) the tree may hold.
    max_entries: u64,
    s: Stream<'a>,
    b: Builder,
    global: Ext,
}

/// A sparse file's map of data segments and its real (expanded) size.
struct Sparse {
    map: Vec<Segment>,
    real: u64,
}

/// A symlink's target, or a device's number, checked.
fn special_data(h: &[u8; BLOCK], at: &At, link: Vec<u8>, inode: &mut Inode) -> Result<()> {
    let num = |f: (usize, usize), what: &str| header::unsigned(header::raw(h, f), what);
    match inode.file_type() {
        FileType::Symlink => {
            if link.is_empty() {
                return Err(at.err("symlink with an empty target"));
            }
            if link.contains(&0) {
                return Err(at.err("symlink target holds a NUL byte"));
            }
            if link.len() > MAX_SYMLINK {
                return Err(at.err(format!(
                    "symlink target is {} bytes long, the limit is {MAX_SYMLINK}",
                    link.len()
                )));
            }
            inode.kind = InodeKind::Symlink { target: link };
        }
        FileType::CharDevice | FileType::BlockDevice => {
            let major = num(field::DEVMAJOR, "device major").map_err(|r| at.err(r))?;
            let minor = num(field::DEVMINOR, "device minor").map_err(|r| at.err(r))?;
            let rdev = u32::try_from(major)
                .ok()
                .zip(u32::try_from(minor).ok())
                .and_then(|(ma, mi)| crate::source::dir::encode_rdev(libc::makedev(ma, mi)))
                .ok_or_else(|| {
                    at.err(format!(
                        "device {major}:{minor} cannot be stored (major ≤ 4095, minor ≤ 1048575)"
                    ))
                })?;
            inode.kind = InodeKind::device(inode.file_type(), rdev);
        }
        _ => {}
    }
    Ok(())
}

/// What an error is about: the entry name and the offset of its first header.
struct At {
    name: Vec<u8>,
    offset: u64,
}

impl At {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Tar {
            entry: String::from_utf8_lossy(&self.name).into_owned(),
            offset: self.offset,
            reason: reason.into(),
        }
    }
}

fn pad(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

impl Reader<'_> {
    fn run(&mut self, files: &mut dyn FileData) -> Result<()> {
        let mut h = [0u8; BLOCK];
        let mut local = Ext::default();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut entry_start: Option<u64> = None;
        loop {
            let Some(off) = self.next_header(&mut h, entry_start.is_some())? else {
                return Ok(());
            };
            let raw_name = header_name(&h);
            let at = At {
                name: raw_name.clone(),
                offset: *entry_start.get_or_insert(off),
            };
            header::checksum_ok(&h).map_err(|r| {
                if off == 0 {
                    Error::Corrupt {
                        what: "tar archive",
                        offset: 0,
                        reason: format!("{r} (the input is not a tar archive, or is compressed with an unsupported format)"),
                    }
                } else {
                    at.err(r)
                }
            })?;
            let t = h[field::TYPEFLAG];
            let size =
                header::unsigned(header::raw(&h, field::SIZE), "size").map_err(|r| at.err(r))?;
            match t {
                kind::PAX_LOCAL | kind::PAX_GLOBAL | kind::GNU_LONGNAME | kind::GNU_LONGLINK => {
                    let limit = if matches!(t, kind::PAX_LOCAL | kind::PAX_GLOBAL) {
                        MAX_PAX_HEADER
                    } else {
                        MAX_LONG_NAME
                    };
                    if size > limit {
                        return Err(at.err(format!(
                            "extended header of {size} bytes (the limit is {limit})"
                        )));
                    }
                    let mut body = vec![0u8; size as usize];
                    if self.s.fill(&mut body)? < body.len() || !self.s.skip(pad(size))? {
                        return Err(at.err("the archive ends inside an extended header"));
                    }
                    match t {
                        kind::PAX_LOCAL => local.apply_pax(&body).map_err(|r| at.err(r))?,
                        kind::PAX_GLOBAL => {
                            self.apply_global(&body, &at)?;
                            entry_start = None;
                        }
                        kind::GNU_LONGNAME => long_name = Some(header::cstr(&body).to_vec()),
                        _ => long_link = Some(header::cstr(&body).to_vec()),
                    }
                    continue;
                }
                kind::GNU_VOLUME => {
                    if !self.s.skip(size + pad(size))? {
                        return Err(at.err("the archive ends inside a volume label"));
                    }
                    entry_start = None;
                    continue;
                }
                _ => {}
            }
            let ext = std::mem::take(&mut local);
            let name = ext.path.clone().or(long_name.take()).unwrap_or(raw_name);
            let link = ext
                .linkpath
                .clone()
                .or(long_link.take())
                .unwrap_or_else(|| header::cstr(header::raw(&h, field::LINKNAME)).to_vec());
            let at = At {
                name,
                offset: at.offset,
            };
            entry_start = None;
            self.entry(&h, at, link, ext, size, files)?;
            let held = self.b.tree.entries.len().max(self.b.tree.inodes.len());
            if held as u64 > self.max_entries {
                return Err(Error::TooManyEntries {
                    path: self.s.source.clone(),
                    limit: self.max_entries,
                });
            }
        }
    }

    /// Reads the next header block into `h` and returns its offset; `None` at the
    /// end-of-archive block (the rest of the stream is drained). `pending` says extended
    /// headers are waiting for their entry.
    fn next_header(&mut self, h: &mut [u8; BLOCK], pending: bool) -> Result<Option<u64>> {
        let off = self.s.pos;
        let got = self.s.fill(h)?;
        let end = |reason: String| Error::Corrupt {
            what: "tar archive",
            offset: off,
            reason,
        };
        if got == 0 {
            return Err(end(if off == 0 {
                "the input is empty, not a tar archive".into()
            } else {
                "the archive ends without its end-of-archive block (truncated?)".into()
            }));
        }
        if got < BLOCK {
            return Err(end(format!(
                "the archive ends inside a header ({got} of 512 bytes)"
            )));
        }
        if header::is_zero(h) {
            if pending {
                return Err(end(
                    "the archive ends after extended headers without their entry".into(),
                ));
            }
            self.s.drain()?;
            return Ok(None);
        }
        Ok(Some(off))
    }

    /// A global PAX header: its values replace earlier global ones.
    fn apply_global(&mut self, body: &[u8], at: &At) -> Result<()> {
        let mut g = std::mem::take(&mut self.global);
        g.apply_pax(body).map_err(|r| at.err(r))?;
        let mut g = g.global_only();
        // later global values replace earlier ones, and what they add up to is copied into
        // every entry: keep it small
        let mut i = Inode::new(FileType::Directory, 0);
        i.set_xattrs(std::mem::take(&mut g.xattrs));
        g.xattrs = i.xattrs;
        if xattr_bytes(&g.xattrs) > MAX_GLOBAL_XATTRS {
            return Err(at.err(format!(
                "global headers set {} bytes of xattrs (the limit is {MAX_GLOBAL_XATTRS})",
                xattr_bytes(&g.xattrs)
            )));
        }
        self.global = g;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        h: &[u8; BLOCK],
        mut at: At,
        link: Vec<u8>,
        ext: Ext,
        header_size: u64,
        files: &mut dyn FileData,
    ) -> Result<()> {
        let stored = ext.size.unwrap_or(header_size);
        let mut t = h[field::TYPEFLAG];
        if t == kind::REGULAR_OLD && at.name.ends_with(b"/") {
            t = kind::DIRECTORY;
        }
        // old GNU sparse: more map blocks follow the header, before the data
        let mut sparse = None;
        if t == kind::GNU_SPARSE {
            sparse = Some(self.gnu_sparse_map(h, &at)?);
            t = kind::REGULAR;
        }
        let pax_sparse =
            ext.sparse_major.is_some() || ext.sparse_map.is_some() || !ext.sparse_pairs.is_empty();
        if pax_sparse {
            if let Some(n) = &ext.sparse_name {
                at.name = n.clone();
            }
        }
        let comps: Vec<Vec<u8>> = header::split_path(&at.name)
            .map_err(|r| at.err(r))?
            .into_iter()
            .map(|c| c.to_vec())
            .collect();
        let file_type = match t {
            kind::REGULAR | kind::REGULAR_OLD | kind::CONTIGUOUS => FileType::Regular,
            kind::HARDLINK => {
                return self.hardlink(&at, &comps, &link, stored);
            }
            kind::SYMLINK => FileType::Symlink,
            kind::CHAR => FileType::CharDevice,
            kind::BLOCK => FileType::BlockDevice,
            kind::DIRECTORY | kind::GNU_DUMPDIR => FileType::Directory,
            kind::FIFO => FileType::Fifo,
            other => return Err(at.err(format!("unsupported entry type {:?}", char::from(other)))),
        };
        if comps.is_empty() && file_type != FileType::Directory {
            return Err(at.err("names the root directory but is not a directory"));
        }
        let mut inode = self.metadata(h, &at, &ext, file_type)?;
        special_data(h, &at, link, &mut inode)?;

        // the data: sparse maps of PAX 1.0 sit at its start
        let mut left = stored;
        if pax_sparse && file_type == FileType::Regular {
            sparse = Some(self.pax_sparse_map(&at, &ext, stored, &mut left)?);
        }
        if let Some(sp) = &sparse {
            header::check_sparse_map(&sp.map, sp.real, left).map_err(|r| at.err(r))?;
        }
        if let Some(f) = inode.file_mut() {
            f.size = sparse.as_ref().map(|s| s.real).unwrap_or(left);
        }
        let size = inode.size();
        let ino = self.b.tree.add_inode(inode);
        self.b.put(&comps, ino).map_err(|r| at.err(r))?;
        if file_type == FileType::Regular && size > 0 {
            left = self.file_data(&at, ino, sparse, left, files)?;
        }
        // data of other types (a directory's GNU dump, for instance) is skipped
        if !self.s.skip(left)? || !self.s.skip(pad(stored))? {
            return Err(at.err(
                "the archive ends inside this entry's data (truncated archive, or a size that overruns the data)",
            ));
        }
        Ok(())
    }

    /// An old GNU sparse header's map, with the extension blocks that follow it.
    fn gnu_sparse_map(&mut self, h: &[u8; BLOCK], at: &At) -> Result<Sparse> {
        let mut map = header::gnu_sparse_entries(h, field::GNU_SPARSE, 4).map_err(|r| at.err(r))?;
        let real = header::unsigned(header::raw(h, field::GNU_REALSIZE), "sparse real size")
            .map_err(|r| at.err(r))?;
        let mut more = h[field::GNU_ISEXTENDED] != 0;
        let mut blk = [0u8; BLOCK];
        while more {
            if self.s.fill(&mut blk)? < BLOCK {
                return Err(at.err("the archive ends inside a sparse map"));
            }
            map.extend(header::gnu_sparse_entries(&blk, 0, 21).map_err(|r| at.err(r))?);
            if map.len() > MAX_SPARSE_SEGMENTS {
                return Err(at.err("sparse map too large"));
            }
            more = blk[504] != 0;
        }
        Ok(Sparse { map, real })
    }

    /// A PAX sparse file's map: in the records (0.0, 0.1) or at the start of the data (1.0,
    /// whose bytes are taken off `left`).
    fn pax_sparse_map(
        &mut self,
        at: &At,
        ext: &Ext,
        stored: u64,
        left: &mut u64,
    ) -> Result<Sparse> {
        let real = ext
            .sparse_size
            .ok_or_else(|| at.err("PAX sparse file without GNU.sparse.size/realsize"))?;
        let nums = if ext.sparse_major == Some(1) {
            let (nums, used) = self.sparse_map_from_data(at, stored)?;
            *left -= used;
            nums
        } else if let Some(m) = &ext.sparse_map {
            m.clone()
        } else {
            ext.sparse_pairs.clone()
        };
        if nums.len() % 2 != 0 {
            return Err(at.err("sparse map has an odd number of values"));
        }
        let map = nums
            .chunks(2)
            .map(|p| Segment {
                offset: p[0],
                len: p[1],
            })
            .collect();
        Ok(Sparse { map, real })
    }

    /// Mode, owner, mtime (PAX records over global ones over the header) and xattrs.
    fn metadata(&self, h: &[u8; BLOCK], at: &At, ext: &Ext, file_type: FileType) -> Result<Inode> {
        let num = |f: (usize, usize), what: &str| header::unsigned(header::raw(h, f), what);
        let mode = num(field::MODE, "mode").map_err(|r| at.err(r))?;
        let mut inode = Inode::new(file_type, (mode & 0o7777) as u16);
        let owner = |v: Option<u64>, f, what: &str| -> Result<u32> {
            let v = match v {
                Some(v) => v,
                None => num(f, what).map_err(|r| at.err(r))?,
            };
            u32::try_from(v).map_err(|_| at.err(format!("{what} {v} does not fit in 32 bits")))
        };
        inode.uid = owner(ext.uid.or(self.global.uid), field::UID, "uid")?;
        inode.gid = owner(ext.gid.or(self.global.gid), field::GID, "gid")?;
        (inode.mtime, inode.mtime_nsec) = match ext.mtime.or(self.global.mtime) {
            Some(t) => t,
            None => (
                header::number(header::raw(h, field::MTIME))
                    .map_err(|r| at.err(format!("mtime: {r}")))?,
                0,
            ),
        };
        if xattr_bytes(&ext.xattrs) > MAX_ENTRY_XATTRS {
            return Err(at.err(format!(
                "{} bytes of xattrs (the limit is {MAX_ENTRY_XATTRS})",
                xattr_bytes(&ext.xattrs)
            )));
        }
        let mut xattrs = self.global.xattrs.clone();
        xattrs.extend(ext.xattrs.iter().cloned());
        inode.set_xattrs(xattrs);
        Ok(inode)
    }

    /// Streams a regular file's data (expanding a sparse map) to `files`; returns the stored
    /// bytes it left unread.
    fn file_data(
        &mut self,
        at: &At,
        ino: InodeId,
        sparse: Option<Sparse>,
        left: u64,
        files: &mut dyn FileData,
    ) -> Result<u64> {
        let size = self.b.tree[ino].size();
        let data_offset = self.s.pos;
        let path = PathBuf::from(OsStr::from_bytes(&at.name));
        let mut data = DataReader {
            s: &mut self.s,
            left,
        };
        let result = match sparse {
            Some(Sparse { map, real }) => {
                let mut sr = SparseReader {
                    data: &mut data,
                    map,
                    next: 0,
                    pos: 0,
                    size: real,
                };
                let loc = DataLocation {
                    offset: data_offset,
                    sparse: true,
                };
                files.file(ino, &mut sr, real, loc, &path)
            }
            None => {
                let loc = DataLocation {
                    offset: data_offset,
                    sparse: false,
                };
                files.file(ino, &mut data, size, loc, &path)
            }
        };
        let left = data.left;
        match result {
            Ok(Some(chunks)) => {
                if let Some(f) = self.b.tree[ino].file_mut() {
                    f.chunks = chunks;
                }
            }
            Ok(None) => {}
            // a full disk (or any output error) is the consumer's, not the archive's
            Err(e @ Error::NoSpace { .. }) => return Err(e),
            Err(e) => {
                return Err(if self.s.eof {
                    at.err("the archive ends inside this entry's data (truncated archive, or a size that overruns the data)")
                } else {
                    at.err(format!("reading its data: {e}"))
                })
            }
        }
        Ok(left)
    }

    fn hardlink(&mut self, at: &At, comps: &[Vec<u8>], link: &[u8], stored: u64) -> Result<()> {
        let target_comps = header::split_path(link).map_err(|r| {
            at.err(format!(
                "hardlink target {:?}: {r}",
                String::from_utf8_lossy(link)
            ))
        })?;
        let target = self.b.find(&target_comps).ok_or_else(|| {
            at.err(format!(
                "hardlink target {:?} does not exist (it must come earlier in the archive)",
                String::from_utf8_lossy(link)
            ))
        })?;
        if self.b.tree.is_dir(target) || comps.is_empty() {
            return Err(at.err(format!(
                "hardlink to {:?}: directories cannot be hardlinked",
                String::from_utf8_lossy(link)
            )));
        }
        let ino = self.b.tree[target].inode;
        let comps: Vec<&[u8]> = comps.iter().map(|c| c.as_slice()).collect();
        if self.b.find(&comps) != Some(target) {
            let owned: Vec<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
            self.b.put(&owned, ino).map_err(|r| at.err(r))?;
        }
        // a hardlink's own data (if an archiver stored it) is the target's: skip it
        if !self.s.skip(stored + pad(stored))? {
            return Err(at.err("the archive ends inside this entry's data"));
        }
        Ok(())
    }

    /// Reads a PAX 1.0 sparse map (decimal numbers, one a line, padded to a block) from the
    /// start of the data. Returns the numbers and the bytes it took.
    fn sparse_map_from_data(&mut self, at: &At, stored: u64) -> Result<(Vec<u64>, u64)> {
        let mut used = 0u64;
        let mut next_number = |s: &mut Stream<'_>| -> Result<u64> {
            let mut text = Vec::new();
            loop {
                let mut b = [0u8; 1];
                if used >= stored || s.fill(&mut b)? == 0 {
                    return Err(at.err("the sparse map runs past the data"));
                }
                used += 1;
                if b[0] == b'\n' {
                    break;
                }
                if text.len() > 20 {
                    return Err(at.err("sparse map number too long"));
                }
                text.push(b[0]);
            }
            header::pax_unsigned(&text, "sparse map").map_err(|r| at.err(r))
        };
        let count = next_number(&mut self.s)?;
        if count > MAX_SPARSE_SEGMENTS as u64 {
            return Err(at.err("sparse map too large"));
        }
        let mut nums = Vec::with_capacity(2 * count as usize);
        for _ in 0..2 * count {
            nums.push(next_number(&mut self.s)?);
        }
        let padding = pad(used);
        if used + padding > stored || !self.s.skip(padding)? {
            return Err(at.err("the sparse map runs past the data"));
        }
        Ok((nums, used + padding))
    }
}

/// The entry name a header spells (ustar prefix joined for POSIX headers).
fn header_name(h: &[u8; BLOCK]) -> Vec<u8> {
    let name = header::cstr(header::raw(h, field::NAME));
    if header::magic(h) == Magic::Posix {
        let prefix = header::cstr(header::raw(h, field::PREFIX));
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(name);
            return full;
        }
    }
    name.to_vec()
}

/// Builds the tree with last-entry-wins replacement.
struct Builder {
    tree: Tree,
    /// Children of each directory entry by name.
    index: HashMap<EntryId, HashMap<Box<[u8]>, EntryId>>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            tree: Tree::new(implied_dir()),
            index: HashMap::new(),
        }
    }

    fn child(&self, dir: EntryId, name: &[u8]) -> Option<EntryId> {
        self.index.get(&dir).and_then(|m| m.get(name)).copied()
    }

    fn find<C: AsRef<[u8]>>(&self, comps: &[C]) -> Option<EntryId> {
        let mut e = EntryId::ROOT;
        for c in comps {
            if !self.tree.is_dir(e) {
                return None;
            }
            e = self.child(e, c.as_ref())?;
        }
        Some(e)
    }

    /// Puts `inode` at `comps`, creating implied parent directories and replacing what was
    /// there (a directory replacing a directory keeps its children).
    fn put(&mut self, comps: &[Vec<u8>], inode: InodeId) -> std::result::Result<(), String> {
        let is_dir = self.tree[inode].file_type() == FileType::Directory;
        let Some((name, parents)) = comps.split_last() else {
            self.tree[EntryId::ROOT].inode = inode;
            return Ok(());
        };
        let mut dir = EntryId::ROOT;
        for (i, c) in parents.iter().enumerate() {
            dir = match self.child(dir, c) {
                Some(e) if self.tree.is_dir(e) => e,
                Some(_) => {
                    return Err(format!(
                        "its parent {:?} is not a directory",
                        String::from_utf8_lossy(&comps[..=i].join(&b'/'))
                    ))
                }
                None => {
                    let d = self.tree.add_inode(implied_dir());
                    self.add(dir, c, d)?
                }
            };
        }
        match self.child(dir, name) {
            Some(e) => {
                if !(is_dir && self.tree.is_dir(e)) {
                    self.detach_children(e);
                }
                self.tree[e].inode = inode;
            }
            None => {
                self.add(dir, name, inode)?;
            }
        }
        Ok(())
    }

    fn add(
        &mut self,
        dir: EntryId,
        name: &[u8],
        inode: InodeId,
    ) -> std::result::Result<EntryId, String> {
        let e = self
            .tree
            .add_entry(dir, name, inode)
            .map_err(|e| e.to_string())?;
        self.index.entry(dir).or_default().insert(name.into(), e);
        Ok(e)
    }

    /// Forgets a subtree (its entries stay in the arena until pruned).
    fn detach_children(&mut self, e: EntryId) {
        let mut stack = vec![e];
        while let Some(d) = stack.pop() {
            self.index.remove(&d);
            stack.extend(std::mem::take(&mut self.tree[d].children));
        }
    }
}

/// A directory the archive implies but does not list: 0755 0:0 mtime 0, marked implied so
/// that a merge keeps the lower layer's directory (as container runtimes do).
fn implied_dir() -> Inode {
    Inode::implied_dir()
}

/// Reads through whatever it wraps, counting the bytes and, when asked, hashing them: an OCI
/// layer is checked against its digests this way, and a tar referenced in place (tarfs) is
/// named by its sha256.
pub struct Digesting<R> {
    inner: R,
    hasher: Option<sha2::Sha256>,
    count: u64,
}

impl<R> Digesting<R> {
    /// Counts what `inner` yields, and hashes it when `hash`.
    pub fn new(inner: R, hash: bool) -> Self {
        Digesting {
            inner,
            hasher: hash.then(<sha2::Sha256 as sha2::Digest>::new),
            count: 0,
        }
    }

    /// Bytes read and their sha256 (hex), if hashed.
    pub fn finish(self) -> (u64, Option<String>) {
        (
            self.count,
            self.hasher.map(|h| hex::encode(sha2::Digest::finalize(h))),
        )
    }
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            sha2::Digest::update(h, &buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// The tarfs [`FileData`]: records where each chunk of a file lies in the tar (no data is
/// copied; chunk digests are not computed, as upstream).
pub struct TarfsChunks {
    /// Chunk size of the image.
    pub chunk_size: u32,
    /// Every chunk, in archive order.
    pub chunks: Vec<crate::model::ChunkInfo>,
}

impl FileData for TarfsChunks {
    fn file(
        &mut self,
        _inode: InodeId,
        _data: &mut dyn Read,
        size: u64,
        location: DataLocation,
        name: &Path,
    ) -> Result<Option<Vec<ChunkId>>> {
        if location.sparse {
            return Err(Error::Unsupported {
                path: name.to_path_buf(),
                reason: "a sparse file cannot be referenced in place (tarfs)".into(),
            });
        }
        let cs = u64::from(self.chunk_size);
        let mut ids = Vec::new();
        let mut done = 0;
        while done < size {
            let len = (size - done).min(cs) as u32;
            let id = self.chunks.len() as u32;
            if self.chunks.len() >= crate::blob::writer::MAX_CHUNKS_PER_BLOB {
                return Err(Error::Limit("too many chunks in one tar".into()));
            }
            self.chunks.push(crate::model::ChunkInfo {
                digest: [0; 32],
                crc32: 0,
                has_crc32: false,
                encrypted: false,
                blob_index: 0,
                index: id,
                compressed: false,
                compressed_offset: location.offset + done,
                compressed_size: len,
                uncompressed_offset: location.offset + done,
                uncompressed_size: len,
            });
            ids.push(ChunkId::new(id));
            done += u64::from(len);
        }
        Ok(Some(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression() {
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8, 0, 0, 0]),
            Compression::Gzip
        );
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]),
            Compression::Zstd
        );
        assert_eq!(
            Compression::detect(&[0x50, 0x2a, 0x4d, 0x18, 0, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"\xfd7zXZ\0"), Compression::Xz);
        assert_eq!(Compression::detect(b"./\0\0\0\0"), Compression::None);
        assert_eq!(Compression::detect(b""), Compression::None);
    }

    /// Reads and discards file data.
    struct Discard;
    impl FileData for Discard {
        fn file(
            &mut self,
            _inode: InodeId,
            data: &mut dyn Read,
            size: u64,
            _location: DataLocation,
            name: &Path,
        ) -> Result<Option<Vec<ChunkId>>> {
            let n = std::io::copy(data, &mut std::io::sink()).ctx("read", name)?;
            assert_eq!(n, size);
            Ok(None)
        }
    }

    fn header_with_link(name: &[u8], kind: u8, size: usize, link: &[u8]) -> [u8; BLOCK] {
        let mut h = ::tar::Header::new_ustar();
        header::set_name(&mut h, name);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size as u64);
        h.set_mtime(0);
        h.set_entry_type(::tar::EntryType::new(kind));
        h.set_link_name_literal(link).unwrap();
        header::set_ustar_checksum(&mut h);
        *h.as_bytes()
    }

    fn header(name: &[u8], kind: u8, size: usize) -> [u8; BLOCK] {
        header_with_link(name, kind, size, b"")
    }

    /// Appends a header and its data, padded to whole blocks.
    fn put(t: &mut Vec<u8>, name: &[u8], kind: u8, data: &[u8]) {
        t.extend_from_slice(&header(name, kind, data.len()));
        t.extend_from_slice(data);
        t.resize(t.len().div_ceil(BLOCK) * BLOCK, 0);
    }

    fn sample() -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&header(b"d/", b'5', 0));
        put(
            &mut t,
            b"PaxHeaders/f",
            b'x',
            b"14 path=d/f\nx\n25 SCHILY.xattr.user.a=\n\n",
        );
        put(&mut t, b"f", b'0', &[b'z'; 700]);
        t.extend_from_slice(&header_with_link(b"d/h", b'1', 0, b"d/f\nx"));
        t.extend_from_slice(&[0u8; 1024]);
        t
    }

    #[test]
    fn reads_a_small_archive() {
        let t = sample();
        let tree = read_tar(&mut t.as_slice(), Path::new("t"), &mut Discard).unwrap();
        let d = tree[EntryId::ROOT].children[0];
        assert_eq!(tree[d].name, b"d");
        let names: Vec<&[u8]> = tree[d]
            .children
            .iter()
            .map(|c| tree[*c].name.as_slice())
            .collect();
        assert_eq!(names, vec![&b"f\nx"[..], b"h"]);
        let (f, h) = (tree[d].children[0], tree[d].children[1]);
        assert_eq!(tree[f].inode, tree[h].inode);
        let inode = tree.inode_of(f);
        assert_eq!(inode.size(), 700);
        assert_eq!(inode.xattrs, vec![(b"user.a".to_vec(), b"\n".to_vec())]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Damaged archives give an error or a tree, never a panic.
        #[test]
        fn damaged_archives_never_panic(
            edits in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8),
            cut in 0usize..4096,
        ) {
            let mut t = sample();
            for (at, b) in edits {
                let at = at % t.len();
                t[at] = b;
            }
            t.truncate(cut.max(1).min(t.len()));
            let _ = read_tar(&mut t.as_slice(), Path::new("t"), &mut Discard);
        }
    }

    #[test]
    fn sparse_reader_fills_holes() {
        let mut data: &[u8] = b"abcXY";
        let mut r = SparseReader {
            data: &mut data,
            map: vec![Segment { offset: 2, len: 3 }, Segment { offset: 8, len: 2 }],
            next: 0,
            pos: 0,
            size: 12,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"\0\0abc\0\0\0XY\0\0");
    }

    // Why this reader is hand-written rather than `tar::Archive` (formats/tar.md §6): each test
    // feeds the same bytes to both and shows what the crate gets wrong or cannot bound.

    /// Keeps every file's data.
    #[derive(Default)]
    struct Collect(Vec<(Vec<u8>, DataLocation)>);
    impl FileData for Collect {
        fn file(
            &mut self,
            _inode: InodeId,
            data: &mut dyn Read,
            _size: u64,
            location: DataLocation,
            name: &Path,
        ) -> Result<Option<Vec<ChunkId>>> {
            let mut v = Vec::new();
            data.read_to_end(&mut v).ctx("read", name)?;
            self.0.push((v, location));
            Ok(None)
        }
    }

    #[test]
    fn crate_cuts_pax_values_at_newlines() {
        let t = sample();
        // ours: the name `d/f\nx` and the xattr value `\n` (reads_a_small_archive)
        read_tar(&mut t.as_slice(), Path::new("t"), &mut Discard).unwrap();
        // the crate splits PAX records at every newline: the path record is lost
        let mut archive = ::tar::Archive::new(t.as_slice());
        let paths: Vec<Vec<u8>> = archive
            .entries()
            .unwrap()
            .map(|e| e.map(|e| e.path_bytes().into_owned()))
            .collect::<std::io::Result<_>>()
            .unwrap_or_default();
        assert!(!paths.iter().any(|p| p == b"d/f\nx"), "{paths:?}");
    }

    #[test]
    fn crate_does_not_expand_pax_sparse_files() {
        // PAX sparse 1.0: the map is at the start of the data, the real name in GNU.sparse.name
        let mut t = Vec::new();
        let pax = b"22 GNU.sparse.major=1\n22 GNU.sparse.minor=0\n21 GNU.sparse.name=f\n26 GNU.sparse.realsize=12\n";
        put(&mut t, b"PaxHeaders/f", b'x', pax);
        let mut data = b"1\n2\n3\n".to_vec();
        data.resize(BLOCK, 0);
        data.extend_from_slice(b"abc");
        put(&mut t, b"GNUSparseFile.0/f", b'0', &data);
        t.extend_from_slice(&[0u8; 1024]);
        let mut ours = Collect::default();
        let tree = read_tar(&mut t.as_slice(), Path::new("t"), &mut ours).unwrap();
        let f = tree[EntryId::ROOT].children[0];
        assert_eq!(tree[f].name, b"f");
        assert_eq!(ours.0[0].0, b"\0\0abc\0\0\0\0\0\0\0");
        // the crate hands out the stored bytes, map included, under the placeholder name
        let mut archive = ::tar::Archive::new(t.as_slice());
        let mut e = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), b"GNUSparseFile.0/f");
        let mut got = Vec::new();
        e.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
    }

    /// Counts the bytes a reader pulls from its input.
    struct Counted<'a>(&'a [u8], &'a std::cell::Cell<usize>);
    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.set(self.1.get() + n);
            Ok(n)
        }
    }

    #[test]
    fn crate_buffers_any_pax_header_whole() {
        // one comment record just over our limit: the crate reads all of it into memory (it
        // has no limit, so a header claiming terabytes grows until memory runs out)
        let len = MAX_PAX_HEADER as usize + 4096;
        let mut record = format!("{len} comment=").into_bytes();
        record.resize(len - 1, b'a');
        record.push(b'\n');
        let mut t = Vec::new();
        put(&mut t, b"PaxHeaders/f", b'x', &record);
        put(&mut t, b"f", b'0', b"x");
        t.extend_from_slice(&[0u8; 1024]);
        let used = std::cell::Cell::new(0);
        let err = read_tar(&mut Counted(&t, &used), Path::new("t"), &mut Discard).unwrap_err();
        assert!(err.to_string().contains("the limit is"), "{err}");
        assert!(used.get() <= 1 << 20, "ours read {} bytes", used.get());
        let crate_used = std::cell::Cell::new(0);
        let mut archive = ::tar::Archive::new(Counted(&t, &crate_used));
        let e = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), b"f");
        assert!(
            crate_used.get() > len,
            "the crate read {} bytes",
            crate_used.get()
        );
    }

    #[test]
    fn crate_gives_the_same_data_offsets() {
        // where the crate can do it: exact data offsets for tarfs (raw_file_position)
        let t = sample();
        let mut ours = Collect::default();
        read_tar(&mut t.as_slice(), Path::new("t"), &mut ours).unwrap();
        let mut archive = ::tar::Archive::new(t.as_slice());
        let offsets: Vec<u64> = archive
            .entries()
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.header().entry_type().is_file())
            .map(|e| e.raw_file_position())
            .collect();
        assert_eq!(offsets, vec![ours.0[0].1.offset]);
        assert_eq!(ours.0[0].1.offset, 4 * BLOCK as u64);
    }
}
