//! `unpack`: writes an image's tree, with its data read back from the blobs and verified, as a
//! PAX tar or into a directory (never writing outside it).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::blob::reader::{BlobSource, ChunkReader};
use crate::error::{Error, IoContext, Result};
use crate::format::tar as tarfmt;
use crate::io::staged::Staged;
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
        if let Err(e) = tmp.commit(out) {
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

struct TarEntry<'a> {
    name: Vec<u8>,
    kind: u8,
    inode: &'a Inode,
    link: Vec<u8>,
    size: u64,
}

/// Sets a numeric field through `set` when the value fits its octal field, else records it in
/// the PAX header and stores 0 (formats/tar.md §5).
fn number_or_pax(
    h: &mut ::tar::Header,
    pax: &mut Vec<u8>,
    field: (&str, usize, u64),
    set: fn(&mut ::tar::Header, u64),
) {
    let (key, len, value) = field;
    if tarfmt::fits_octal(value, len) {
        set(h, value);
    } else {
        tarfmt::push_pax_record(pax, key, value.to_string().as_bytes());
        set(h, 0);
    }
}

fn header(e: &TarEntry, pax: &mut Vec<u8>) -> Result<::tar::Header> {
    let mut h = ::tar::Header::new_ustar();
    let i = e.inode;
    if e.name.len() > 100 || !e.name.is_ascii() {
        tarfmt::push_pax_record(pax, "path", &e.name);
    }
    tarfmt::set_name(&mut h, &e.name);
    h.set_mode(u32::from(i.permissions));
    let old = h.as_old();
    let (uid_len, size_len) = (old.uid.len(), old.size.len());
    number_or_pax(&mut h, pax, ("uid", uid_len, u64::from(i.uid)), |h, v| {
        h.set_uid(v)
    });
    number_or_pax(&mut h, pax, ("gid", uid_len, u64::from(i.gid)), |h, v| {
        h.set_gid(v)
    });
    number_or_pax(&mut h, pax, ("size", size_len, e.size), |h, v| {
        h.set_size(v)
    });
    let secs = i.mtime.max(0) as u64;
    if i.mtime_nsec != 0 {
        let text = format!("{}.{:09}", i.mtime, i.mtime_nsec);
        tarfmt::push_pax_record(pax, "mtime", text.as_bytes());
    }
    if tarfmt::fits_octal(secs, size_len) {
        h.set_mtime(secs);
    } else {
        tarfmt::push_pax_record(pax, "mtime", i.mtime.to_string().as_bytes());
        h.set_mtime(0);
    }
    h.set_entry_type(::tar::EntryType::new(e.kind));
    if !e.link.is_empty() {
        if e.link.len() <= 100 && e.link.is_ascii() {
            h.set_link_name_literal(&e.link).map_err(internal)?;
        } else {
            tarfmt::push_pax_record(pax, "linkpath", &e.link);
        }
    }
    if matches!(i.file_type(), FileType::CharDevice | FileType::BlockDevice) && e.kind != b'1' {
        let dev = u64::from(i.rdev());
        let major = (dev >> 8) & 0xfff;
        let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
        h.set_device_major(major as u32).map_err(internal)?;
        h.set_device_minor(minor as u32).map_err(internal)?;
    }
    for (k, v) in &i.xattrs {
        let key = format!("SCHILY.xattr.{}", String::from_utf8_lossy(k));
        tarfmt::push_pax_record(pax, &key, v);
    }
    tarfmt::set_ustar_checksum(&mut h);
    Ok(h)
}

/// A header setter refusing a value the caller checked: an impossible state.
fn internal(e: std::io::Error) -> Error {
    Error::Internal(format!("tar header: {e}"))
}

/// The `x` header carrying an entry's PAX records.
fn pax_header(len: u64) -> ::tar::Header {
    let mut h = ::tar::Header::new_ustar();
    tarfmt::set_name(&mut h, b"././@PaxHeader");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(len);
    h.set_mtime(0);
    h.set_entry_type(::tar::EntryType::XHeader);
    tarfmt::set_ustar_checksum(&mut h);
    h
}

fn emit<W: Write>(out: &mut ::tar::Builder<W>, e: &TarEntry, name: &Path) -> Result<()> {
    let mut pax = Vec::new();
    let h = header(e, &mut pax)?;
    if !pax.is_empty() {
        out.append(&pax_header(pax.len() as u64), pax.as_slice())
            .ctx("write", name)?;
    }
    out.append(&h, std::io::empty()).ctx("write", name)
}

fn pad(out: &mut dyn Write, len: u64, name: &Path) -> Result<()> {
    let rem = (512 - len % 512) % 512;
    out.write_all(&vec![0u8; rem as usize]).ctx("write", name)
}

/// Writes the tar into a temporary file beside `out` (or straight into `out`, a stream such as
/// a FIFO, in one sequential pass); returns it (to commit) and the count.
fn write_tar(image: &Image, source: BlobSource, out: &Path) -> Result<(Staged, u64)> {
    let tmp = Staged::create(out, None)?;
    let mut reader = ChunkReader::new(image, source);
    let mut first_path: HashMap<InodeId, Vec<u8>> = HashMap::new();
    let mut n = 0;
    {
        let mut w = ::tar::Builder::new(BufWriter::with_capacity(1 << 20, tmp.file()));
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
                // data is streamed chunk by chunk past the builder, which pads only what it copies
                write_file_data(&mut reader, inode, w.get_mut(), out)?;
                pad(w.get_mut(), size, out)?;
            }
            n += 1;
        }
        // the builder ends the archive with two zero blocks
        w.into_inner()
            .ctx("write", out)?
            .flush()
            .ctx("write", out)?;
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
