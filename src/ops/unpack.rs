//! `unpack`: writes an image's tree, with its data read back from the blobs and verified, as a
//! PAX tar or into a directory (never writing outside it).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::blob::reader::{BlobSource, ChunkReader};
use crate::error::{Error, IoContext, Result};
use crate::io::staged::{persist, temp_beside};
use crate::model::Image;
use crate::model::{EntryId, FileType, Inode, InodeId};
use crate::ops::opened::OpenedImage;

/// Options of `unpack`.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Bootstrap (or a blob with an inlined bootstrap).
    pub bootstrap: PathBuf,
    /// Where the blobs are.
    pub blobs: BlobSource,
    /// Write a tar here.
    pub output_tar: Option<PathBuf>,
    /// Extract into this directory (which must not exist or be empty).
    pub output_dir: Option<PathBuf>,
}

/// Runs `unpack`; returns the number of entries written.
pub fn unpack(opts: &UnpackOptions) -> Result<u64> {
    let OpenedImage {
        image,
        blobs: source,
    } = OpenedImage::open(&opts.bootstrap, &opts.blobs)?;
    if opts.output_tar.is_none() && opts.output_dir.is_none() {
        return Err(Error::InvalidOption(
            "unpack needs --output or --output-dir".into(),
        ));
    }
    let mut n = 0;
    // the tar stays under its temporary name until the directory (if any) is in place too
    let tar = match &opts.output_tar {
        Some(out) => {
            let (tmp, count) = write_tar(&image, source.clone(), out)?;
            n = count;
            Some((tmp, out))
        }
        None => None,
    };
    if let Some(dir) = &opts.output_dir {
        n = extract(&image, source, dir)?;
    }
    if let Some((tmp, out)) = tar {
        if let Err(e) = persist(tmp, out) {
            if let Some(dir) = &opts.output_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(e);
        }
    }
    Ok(n)
}

/// The path of an entry relative to the image root (empty for the root).
fn rel_path(image: &Image, e: EntryId) -> PathBuf {
    let p = image.tree.path(e);
    p.strip_prefix("/").map(Path::to_path_buf).unwrap_or(p)
}

fn write_file_data(
    reader: &mut ChunkReader,
    inode: &Inode,
    out: &mut dyn Write,
    name: &Path,
) -> Result<()> {
    for id in inode.chunks() {
        let data = reader.read(*id)?;
        out.write_all(&data).ctx("write", name)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- tar

fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // the length prefix counts itself
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

struct TarEntry<'a> {
    name: Vec<u8>,
    kind: u8,
    inode: &'a Inode,
    link: Vec<u8>,
    size: u64,
}

fn header(e: &TarEntry, pax: &mut Vec<u8>) -> [u8; 512] {
    let mut h = [0u8; 512];
    let i = e.inode;
    if e.name.len() <= 100 && e.name.is_ascii() {
        h[..e.name.len()].copy_from_slice(&e.name);
    } else {
        pax_record(pax, "path", &e.name);
        let short: Vec<u8> = e.name.iter().take(100).copied().collect();
        h[..short.len()].copy_from_slice(&short);
    }
    octal(&mut h[100..108], u64::from(i.permissions));
    if !octal(&mut h[108..116], u64::from(i.uid)) {
        pax_record(pax, "uid", i.uid.to_string().as_bytes());
        octal(&mut h[108..116], 0);
    }
    if !octal(&mut h[116..124], u64::from(i.gid)) {
        pax_record(pax, "gid", i.gid.to_string().as_bytes());
        octal(&mut h[116..124], 0);
    }
    if !octal(&mut h[124..136], e.size) {
        pax_record(pax, "size", e.size.to_string().as_bytes());
        octal(&mut h[124..136], 0);
    }
    let secs = i.mtime.max(0) as u64;
    if i.mtime_nsec != 0 {
        pax_record(
            pax,
            "mtime",
            format!("{}.{:09}", i.mtime, i.mtime_nsec).as_bytes(),
        );
    }
    if !octal(&mut h[136..148], secs) {
        pax_record(pax, "mtime", i.mtime.to_string().as_bytes());
        octal(&mut h[136..148], 0);
    }
    h[156] = e.kind;
    if !e.link.is_empty() {
        if e.link.len() <= 100 && e.link.is_ascii() {
            h[157..157 + e.link.len()].copy_from_slice(&e.link);
        } else {
            pax_record(pax, "linkpath", &e.link);
        }
    }
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if matches!(i.file_type(), FileType::CharDevice | FileType::BlockDevice) && e.kind != b'1' {
        let dev = u64::from(i.rdev());
        let major = (dev >> 8) & 0xfff;
        let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
        octal(&mut h[329..337], major);
        octal(&mut h[337..345], minor);
    }
    for (k, v) in &i.xattrs {
        let key = format!("SCHILY.xattr.{}", String::from_utf8_lossy(k));
        pax_record(pax, &key, v);
    }
    h
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

fn emit(out: &mut dyn Write, e: &TarEntry, name: &Path) -> Result<()> {
    let mut pax = Vec::new();
    let mut h = header(e, &mut pax);
    if !pax.is_empty() {
        let mut ph = [0u8; 512];
        let pname = b"././@PaxHeader";
        ph[..pname.len()].copy_from_slice(pname);
        octal(&mut ph[100..108], 0o644);
        octal(&mut ph[108..116], 0);
        octal(&mut ph[116..124], 0);
        octal(&mut ph[124..136], pax.len() as u64);
        octal(&mut ph[136..148], 0);
        ph[156] = b'x';
        ph[257..263].copy_from_slice(b"ustar\0");
        ph[263..265].copy_from_slice(b"00");
        checksum(&mut ph);
        out.write_all(&ph).ctx("write", name)?;
        out.write_all(&pax).ctx("write", name)?;
        pad(out, pax.len() as u64, name)?;
    }
    checksum(&mut h);
    out.write_all(&h).ctx("write", name)
}

fn pad(out: &mut dyn Write, len: u64, name: &Path) -> Result<()> {
    let rem = (512 - len % 512) % 512;
    out.write_all(&vec![0u8; rem as usize]).ctx("write", name)
}

/// Writes the tar into a temporary file beside `out`; returns it (to persist) and the count.
fn write_tar(
    image: &Image,
    source: BlobSource,
    out: &Path,
) -> Result<(tempfile::NamedTempFile, u64)> {
    let mut tmp = temp_beside(out)?;
    let mut reader = ChunkReader::new(image, source);
    let mut first_path: HashMap<InodeId, Vec<u8>> = HashMap::new();
    let mut n = 0;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        for e in image.tree.numbering_order() {
            let ino = image.tree[e].inode;
            let inode = &image.tree[ino];
            let mut name = b"./".to_vec();
            name.extend_from_slice(rel_path(image, e).as_os_str().as_bytes());
            if inode.file_type() == FileType::Directory && e != EntryId::ROOT {
                name.push(b'/');
            }
            let (kind, link, size) = if let Some(first) = first_path
                .get(&ino)
                .filter(|_| inode.file_type() != FileType::Directory)
            {
                (b'1', first.clone(), 0)
            } else {
                first_path.insert(ino, name.clone());
                match inode.file_type() {
                    FileType::Regular => (b'0', Vec::new(), inode.size()),
                    FileType::Directory => (b'5', Vec::new(), 0),
                    FileType::Symlink => (b'2', inode.target().to_vec(), 0),
                    FileType::CharDevice => (b'3', Vec::new(), 0),
                    FileType::BlockDevice => (b'4', Vec::new(), 0),
                    FileType::Fifo => (b'6', Vec::new(), 0),
                    FileType::Socket => {
                        log::warn!(
                            "{}: a tar cannot hold a socket; skipped",
                            image.tree.path(e).display()
                        );
                        continue;
                    }
                }
            };
            let entry = TarEntry {
                name,
                kind,
                inode,
                link,
                size,
            };
            emit(&mut w, &entry, out)?;
            if kind == b'0' {
                write_file_data(&mut reader, inode, &mut w, out)?;
                pad(&mut w, size, out)?;
            }
            n += 1;
        }
        w.write_all(&[0u8; 1024]).ctx("write", out)?;
        w.flush().ctx("write", out)?;
    }
    Ok((tmp, n))
}

// ---------------------------------------------------------------- directory

/// Extracts into a temporary directory beside `dir`, renamed to `dir` when complete (and
/// removed on any error): `dir` never holds a partial tree.
fn extract(image: &Image, source: BlobSource, dir: &Path) -> Result<u64> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(Error::InvalidOption(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        Ok(_) => {
            if std::fs::read_dir(dir).ctx("read", dir)?.next().is_some() {
                return Err(Error::InvalidOption(format!(
                    "{} is not empty",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).ctx("stat", dir),
    }
    let tmp = crate::io::staged::temp_dir_beside(dir)?;
    let result = extract_into(image, source, &tmp)
        .and_then(|n| crate::io::staged::persist_dir(&tmp, dir).map(|_| n));
    if result.is_err() {
        crate::io::staged::discard_dir(&tmp);
    }
    result
}

fn extract_into(image: &Image, source: BlobSource, dir: &Path) -> Result<u64> {
    let mut reader = ChunkReader::new(image, source);
    let mut first_path: HashMap<InodeId, PathBuf> = HashMap::new();
    let order = image.tree.numbering_order();
    let mut n = 0;
    for &e in &order {
        let ino = image.tree[e].inode;
        let inode = &image.tree[ino];
        // names are validated by the decoder (no '/', '.', '..' or NUL), and every parent was
        // created just now as a real directory, so this path cannot leave `dir`
        let rel = rel_path(image, e);
        if !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            // the decoder rejects such names; never write through one regardless
            return Err(Error::Unsupported {
                path: rel,
                reason: "entry name would leave the output directory".into(),
            });
        }
        let path = dir.join(&rel);
        if e != EntryId::ROOT {
            if let Some(first) = first_path.get(&ino) {
                std::fs::hard_link(first, &path).ctx("hardlink", &path)?;
                n += 1;
                continue;
            }
            match inode.file_type() {
                FileType::Directory => std::fs::create_dir(&path).ctx("create directory", &path)?,
                FileType::Regular => {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .ctx("create", &path)?;
                    let mut w = BufWriter::with_capacity(1 << 20, f);
                    write_file_data(&mut reader, inode, &mut w, &path)?;
                    w.flush().ctx("write", &path)?;
                }
                FileType::Symlink => {
                    std::os::unix::fs::symlink(OsStr::from_bytes(inode.target()), &path)
                        .ctx("symlink", &path)?
                }
                FileType::CharDevice
                | FileType::BlockDevice
                | FileType::Fifo
                | FileType::Socket => {
                    make_node(inode, &path)?;
                }
            }
            first_path.insert(ino, path.clone());
        }
        if inode.file_type() != FileType::Directory {
            set_metadata(inode, &path)?;
        }
        n += 1;
    }
    // directories last and deepest first, so creating children does not change their mtime
    for &e in order.iter().rev() {
        let inode = image.tree.inode_of(e);
        if inode.file_type() == FileType::Directory {
            set_metadata(inode, &dir.join(rel_path(image, e)))?;
        }
    }
    Ok(n)
}

fn make_node(inode: &Inode, path: &Path) -> Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let kind = match inode.file_type() {
        FileType::CharDevice => SFlag::S_IFCHR,
        FileType::BlockDevice => SFlag::S_IFBLK,
        FileType::Fifo => SFlag::S_IFIFO,
        _ => SFlag::S_IFSOCK,
    };
    let dev = u64::from(inode.rdev());
    let major = (dev >> 8) & 0xfff;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    let rdev = nix::sys::stat::makedev(major, minor);
    match mknod(path, kind, Mode::from_bits_truncate(0o600), rdev) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            log::warn!(
                "{}: not permitted to create this device; skipped",
                path.display()
            );
            Ok(())
        }
        Err(e) => Err(Error::Io {
            op: "mknod",
            path: path.to_path_buf(),
            source: std::io::Error::from(e),
        }),
    }
}

fn set_metadata(inode: &Inode, path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(()); // a device we were not allowed to create
    }
    if let Err(e) = std::os::unix::fs::lchown(path, Some(inode.uid), Some(inode.gid)) {
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(e).ctx("chown", path);
        }
    }
    for (k, v) in &inode.xattrs {
        if let Err(e) = xattr::set(path, OsStr::from_bytes(k), v) {
            log::warn!(
                "{}: cannot set xattr {}: {e}",
                path.display(),
                String::from_utf8_lossy(k)
            );
        }
    }
    if inode.file_type() != FileType::Symlink {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(u32::from(inode.permissions)),
        )
        .ctx("chmod", path)?;
    }
    let t = filetime::FileTime::from_unix_time(inode.mtime, inode.mtime_nsec);
    filetime::set_symlink_file_times(path, t, t).ctx("set times of", path)
}
