//! `mkfs.erofs`'s job (the command line of erofs-utils 1.9, `bin/erofs-forge/mkfs.rs`): a tar
//! stream, a tar file or a directory made into one self-contained EROFS image, the data of
//! each regular file stored plain or compressed in EROFS extents (formats/rafs-v6.md §20).
//!
//! The source is read once, in a stream: file data goes straight into the image, from block 1
//! on, as it arrives (compressed a window at a time, in parallel); the metadata, known only
//! once the source has ended, follows the data (`meta_blkaddr`), and the superblock is written
//! last. Memory holds the tree and one compression window, whatever the layer's size.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::codec::{Compressor, Digester};
use crate::error::{Error, IoContext, Result};
use crate::io::staged::{persist, temp_beside};
use crate::model::{EntryId, FileType, InodeId, InodeKind, Tree};
use crate::ops::export_compressed::{
    standalone_superblock, ErofsCompression, ExtentWriter, ImageIdentity,
};
use crate::rafs::v6::encode::{write_standalone_inodes, EncodeOptions, StandaloneFile};
use crate::rafs::v6::layout::{self, RegularLayout};
use crate::source::limits::SourceLimits;
use crate::source::tar::{self, DataLocation};

const BLOCK: u64 = 4096;
/// The zeros that pad a plain file's last block.
const ZERO_BLOCK: [u8; BLOCK as usize] = [0; BLOCK as usize];
/// overlayfs's opaque-directory mark, and the mark of a directory holding whiteouts.
const OVL_OPAQUE: &[u8] = b"trusted.overlay.opaque";
const OVL_ORIGIN: &[u8] = b"trusted.overlay.origin";
/// aufs (and OCI) whiteout spellings that `--aufs` turns into overlayfs ones.
const AUFS_WH_PREFIX: &[u8] = b".wh.";
const AUFS_OPAQUE: &[u8] = b".wh..wh..opq";

/// Where the tree comes from.
#[derive(Debug, Clone)]
pub enum MkfsSource {
    /// A tar stream (plain, gzip, zstd or xz): a file, a fifo, or `-` for standard input.
    Tar(PathBuf),
    /// A directory.
    Directory(PathBuf),
    /// EROFS images (lowest layer first) merged into one metadata image whose files' data
    /// stays in them: each becomes one of the image's devices, in this order, as mkfs.erofs's
    /// rebuild mode makes them (formats/rafs-v6.md §20).
    Images(Vec<PathBuf>),
    /// A tar stream (uncompressed) made into an index only (`--tar=i`): 512-byte blocks, every
    /// file's data referenced where the tar holds it, the tar to be appended to the image
    /// right after the index, which records it as its one extra device at that block
    /// (formats/rafs-v6.md §20).
    TarIndex(PathBuf),
}

/// How file modification times are set (`-T`, `--all-time`, `--mkfs-time`,
/// `SOURCE_DATE_EPOCH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mtimes {
    /// As the source has them.
    #[default]
    Kept,
    /// Every file's mtime is the build time.
    Fixed,
    /// Mtimes later than the build time become the build time.
    Clamped,
}

/// Owner rules (`--all-root`, `--force-uid`, `--force-gid`, `--uid-offset`, `--gid-offset`):
/// forced ids replace the source's, then the offsets are added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owners {
    /// Every inode's uid.
    pub force_uid: Option<u32>,
    /// Every inode's gid.
    pub force_gid: Option<u32>,
    /// Added to every uid.
    pub uid_offset: u32,
    /// Added to every gid.
    pub gid_offset: u32,
}

/// An entry of a directory source left out of the image (`--exclude-path`,
/// `--exclude-regex`), matched against its path relative to the source, without a leading
/// slash, as erofs-utils matches it.
#[derive(Debug, Clone)]
pub enum Exclude {
    /// That exact path.
    Path(Vec<u8>),
    /// Paths the expression matches anywhere in.
    Regex(regex::bytes::Regex),
}

impl Exclude {
    fn matches(&self, rel: &[u8]) -> bool {
        match self {
            Exclude::Path(p) => p == rel,
            Exclude::Regex(r) => r.is_match(rel),
        }
    }
}

/// Options of [`mkfs`]: what mkfs.erofs's command line asks for.
#[derive(Debug, Clone)]
pub struct MkfsOptions {
    /// The image written.
    pub output: PathBuf,
    /// The source.
    pub source: MkfsSource,
    /// File data compression (`-z`); `None` stores it plain.
    pub compression: Option<ErofsCompression>,
    /// Turn aufs whiteouts (`.wh.NAME`, `.wh..wh..opq`) of a tar into overlayfs ones (`--aufs`).
    pub aufs: bool,
    /// Drop overlayfs whiteouts and opaque marks from the image (`--ovlfs-strip=1`).
    pub ovlfs_strip: bool,
    /// The image's UUID (`-U`).
    pub uuid: [u8; 16],
    /// The volume label (`-L`).
    pub label: Option<String>,
    /// Build time, seconds since the epoch (`-T`, `SOURCE_DATE_EPOCH`, else now).
    pub build_time: u64,
    /// How files' mtimes relate to the build time.
    pub mtimes: Mtimes,
    /// Owner rules.
    pub owners: Owners,
    /// Keep xattrs (`-x` below 0 drops them all).
    pub xattrs: bool,
    /// Entries of a directory source left out.
    pub exclude: Vec<Exclude>,
    /// `--incremental=data`: `output` is an existing image (ours, or any whose regular files
    /// are flat plain) and the tar is applied on top of it, its data appended.
    pub incremental: bool,
    /// uid and gid a tar's implied root directory is given (mkfs.erofs: its own).
    pub process_ids: (u32, u32),
    /// Decompressor memory and entry count limits.
    pub limits: SourceLimits,
}

/// What [`mkfs`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MkfsOutput {
    /// Inodes in the image.
    pub inodes: u64,
    /// Blocks of file data.
    pub data_blocks: u64,
    /// Size of the image in bytes.
    pub size: u64,
}

/// Builds the image.
pub fn mkfs(opts: &MkfsOptions) -> Result<MkfsOutput> {
    match &opts.source {
        MkfsSource::Tar(path) => {
            let (raw, _) = tar::open_raw(path)?;
            let (mut input, _) = tar::decompress(raw, path, opts.limits.decompress_memory)?;
            if opts.incremental {
                return incremental(opts, &mut input, path);
            }
            mkfs_tar_stream(opts, &mut input, path)
        }
        _ if opts.incremental => Err(Error::InvalidOption(
            "--incremental applies a tar (--tar=f) on top of an existing image".into(),
        )),
        MkfsSource::Directory(root) => mkfs_dir(opts, root),
        MkfsSource::TarIndex(path) => tar_index(opts, path),
        MkfsSource::Images(layers) => merge_images(opts, layers),
    }
}

/// [`mkfs`] of a full image from a tar stream already open and decompressed (the layers of
/// an OCI image, their digests checked by the caller as they are read); `name` names it in
/// messages. `opts.source` is not read.
pub(crate) fn mkfs_tar_stream(
    opts: &MkfsOptions,
    input: &mut dyn Read,
    name: &Path,
) -> Result<MkfsOutput> {
    full_image(opts, &mut |sink| {
        let mut tree = tar::read_tar_limited(input, name, sink, opts.limits.entries)
            .map_err(|e| crate::error::in_file(name, e))?;
        if opts.aufs {
            aufs_to_overlayfs(&mut tree)?;
        }
        Ok(tree)
    })
}

/// `--incremental=data`: the tar applied on top of the image at `opts.output`, as erofs-utils
/// applies it (formats/rafs-v6.md §20): its entries replace the image's of the same name,
/// directories merge, a directory marked opaque hides what the image had in it, and what the
/// tar only implies keeps the image's metadata; whiteouts are entries like any other (with
/// `--aufs`, overlayfs whiteouts replacing what they name). The new data follows the image's
/// last block and the metadata is written anew after it. The result is built on a copy and
/// renamed over the image, so a failure leaves the image as it was.
fn incremental(opts: &MkfsOptions, input: &mut dyn Read, name: &Path) -> Result<MkfsOutput> {
    use crate::model::{ChunkId, Image};
    let out = &opts.output;
    let base: Image = decode_layer(out)?;
    let mut tmp = temp_beside(out)?;
    std::fs::copy(out, tmp.path()).ctx("copy", out)?;
    let len = tmp.as_file_mut().metadata().ctx("stat", out)?.len();
    let first = len.div_ceil(BLOCK);
    let (mut upper, files) = {
        let mut sink = DataWriter::at(tmp.as_file_mut(), out, opts.compression, first)?;
        let mut upper = tar::read_tar_limited(input, name, &mut sink, opts.limits.entries)
            .map_err(|e| crate::error::in_file(name, e))?;
        if opts.aufs {
            aufs_to_overlayfs(&mut upper)?;
        }
        (upper, sink.finish()?)
    };
    // the layer's files get chunk ids past the image's, so that they can be told apart after
    // the merge (which keeps chunk ids)
    let (mut new_files, next_block) = files;
    let n_base = base.chunks.len() as u32;
    let mut upper_files: Vec<Option<StandaloneFile>> = Vec::new();
    for ino in upper.inode_ids() {
        if let Some(f) = new_files.remove(&ino) {
            let id = ChunkId::new(n_base + upper_files.len() as u32);
            upper_files.push(Some(f));
            if let Some(file) = upper[ino].file_mut() {
                file.chunks = vec![id];
            }
        }
    }
    let Image {
        tree: mut lower,
        chunks: base_chunks,
        ..
    } = base;
    crate::model::overlay::apply_keeping_marks(&mut lower, &upper, &|c| c);
    let mut tree = lower.compact();
    let mut merged_files = HashMap::new();
    for ino in tree.inode_ids() {
        let Some(f) = tree[ino].file() else { continue };
        let file = match f.chunks.first() {
            None => StandaloneFile::Inline(Vec::new()),
            Some(c) if c.get() < n_base => {
                let at = base_chunks[c.index()].uncompressed_offset / BLOCK;
                StandaloneFile::Plain {
                    blkaddr: u32::try_from(at)
                        .map_err(|_| Error::Limit("image larger than 2^32 blocks".into()))?,
                }
            }
            // each of the layer's inodes is in the result once
            Some(c) => upper_files[(c.get() - n_base) as usize]
                .take()
                .ok_or_else(|| Error::Internal("a layer file merged twice".into()))?,
        };
        merged_files.insert(ino, file);
    }
    shape_common(opts, &mut tree);
    let written = write_metadata(opts, &tree, &merged_files, next_block, tmp.as_file_mut())?;
    persist(tmp, out)?;
    Ok(written)
}

/// [`mkfs`] of a directory: its files' data in numbering order.
fn mkfs_dir(opts: &MkfsOptions, root: &Path) -> Result<MkfsOutput> {
    full_image(opts, &mut |sink| {
        let skip = |rel: &[u8]| opts.exclude.iter().any(|x| x.matches(rel));
        let entries = opts.limits.entries;
        crate::source::dir::walk_excluding(root, entries, &skip, &mut |ino, path, size| {
            let mut f = std::fs::File::open(path).ctx("open", path)?;
            sink.write_file(ino, &mut f, size, path)
        })
    })
}

/// A full image: `read` builds the tree, every regular file's data going into the sink as
/// it is read; the metadata follows.
fn full_image(
    opts: &MkfsOptions,
    read: &mut dyn FnMut(&mut DataWriter<'_>) -> Result<Tree>,
) -> Result<MkfsOutput> {
    let mut tmp = temp_beside(&opts.output)?;
    let (mut tree, files, next_block) = {
        let mut sink = DataWriter::new(tmp.as_file_mut(), &opts.output, opts.compression)?;
        let tree = read(&mut sink)?;
        let (files, next_block) = sink.finish()?;
        (tree, files, next_block)
    };
    shape_common(opts, &mut tree);
    let out = write_metadata(opts, &tree, &files, next_block, tmp.as_file_mut())?;
    persist(tmp, &opts.output)?;
    Ok(out)
}

/// `--tar=i`: the index of a tar, to which the tar itself is appended. The tar is read once
/// (hashed: its sha256 names the device) and not copied; the index is a tarfs bootstrap
/// (formats/rafs-v6.md §18) whose device slot places the tar at the block right after the
/// index, which is padded (sparsely) up to there, so that `[index][tar]` mounts as one file.
fn tar_index(opts: &MkfsOptions, path: &Path) -> Result<MkfsOutput> {
    use crate::rafs::v6;
    let (raw, _) = tar::open_raw(path)?;
    let chunk_size = crate::format::blob::DEFAULT_CHUNK_SIZE;
    let crate::ops::create::TarfsRead {
        mut tree,
        chunks,
        blobs,
        ..
    } = crate::ops::create::read_tarfs(raw, path, chunk_size, &opts.limits, None)?;
    if opts.aufs {
        aufs_to_overlayfs(&mut tree)?;
    }
    shape_common(opts, &mut tree);
    let eopts = EncodeOptions::tarfs(chunk_size);
    let mut bytes = v6::encode(&tree, &chunks, &blobs, &eopts)?;
    stamp_identity(&mut bytes, opts)?;
    // where the tar starts: the device slot's mapped block (512-byte blocks)
    let tar_at = v6::encode::mapped_blkaddrs(bytes.len() as u64, &blobs, eopts.block_size)
        .first()
        .map_or(bytes.len() as u64, |b| b * eopts.block_size);
    let mut tmp = temp_beside(&opts.output)?;
    tmp.as_file_mut()
        .write_all(&bytes)
        .ctx("write", &opts.output)?;
    tmp.as_file_mut()
        .set_len(tar_at)
        .ctx("write", &opts.output)?;
    persist(tmp, &opts.output)?;
    Ok(MkfsOutput {
        inodes: tree.entries.len() as u64,
        data_blocks: 0,
        size: tar_at,
    })
}

/// Rebuild mode: the trees of EROFS layer images (ours, or any whose regular files are flat
/// plain) stacked with overlayfs's rules (character devices 0:0 remove, `trusted.overlay.opaque`
/// hides what is below; neither is kept), every file's data referenced in the layer that holds
/// it. The layers are the image's devices in the order given, each tagged with its UUID in
/// hex, so that `mount -o device=L1,...,device=Ln` in that order mounts the merged tree.
fn merge_images(opts: &MkfsOptions, layers: &[PathBuf]) -> Result<MkfsOutput> {
    use crate::model::overlay::{self, WhiteoutSpec};
    use crate::model::{BlobEntry, ChunkId, ChunkInfo};
    let mut tree = crate::model::stack::empty_tree();
    let mut chunks: Vec<ChunkInfo> = Vec::new();
    let mut blobs: Vec<BlobEntry> = Vec::new();
    for (i, path) in layers.iter().enumerate() {
        let image = decode_layer(path)?;
        let own = layer_blob(&image, path, image.size)?;
        let offset = chunks.len() as u32;
        chunks.extend(image.chunks.iter().map(|c| ChunkInfo {
            blob_index: i as u32,
            ..*c
        }));
        blobs.push(own);
        overlay::apply(&mut tree, &image.tree, WhiteoutSpec::Overlayfs, &|id| {
            ChunkId::new(id.get() + offset)
        });
    }
    let mut tree = tree.compact();
    shape_common(opts, &mut tree);
    let eopts = EncodeOptions::standalone(crate::rafs::v6::decode::IN_IMAGE_CHUNK as u32);
    let mut bytes = crate::rafs::v6::encode(&tree, &chunks, &blobs, &eopts)?;
    stamp_identity(&mut bytes, opts)?;
    let mut tmp = temp_beside(&opts.output)?;
    tmp.as_file_mut()
        .write_all(&bytes)
        .ctx("write", &opts.output)?;
    persist(tmp, &opts.output)?;
    Ok(MkfsOutput {
        inodes: tree.entries.len() as u64,
        data_blocks: 0,
        size: bytes.len() as u64,
    })
}

/// A layer image decoded from its metadata alone. An image laid out data first (ours:
/// `meta_blkaddr` past the data, no shared xattrs) is read as block 0 and its metadata area,
/// the file data between them skipped (the decoder never reads a plain file's data; a read
/// there fails): merging layers of gigabytes stays small. Any other image is read whole.
fn decode_layer(path: &Path) -> Result<crate::model::Image> {
    use crate::format::rafs_v6::{SuperBlock, SUPERBLOCK_OFFSET};
    use zerocopy::FromBytes;
    let in_file = |e| crate::error::in_file(path, e);
    let mut f = std::fs::File::open(path).ctx("open", path)?;
    let len = f.metadata().ctx("stat", path)?.len();
    let mut head = vec![0u8; BLOCK as usize];
    let got = read_up_to(&mut f, &mut head).ctx("read", path)?;
    let sb = SuperBlock::ref_from_bytes(&head[SUPERBLOCK_OFFSET..SUPERBLOCK_OFFSET + 128]).ok();
    let meta_at = sb.map_or(0, |sb| u64::from(sb.meta_blkaddr.get()) * BLOCK);
    let data_first = sb.is_some_and(|sb| sb.xattr_blkaddr.get() == 0 && sb.blkszbits == 12);
    if got < head.len() || meta_at <= BLOCK || meta_at >= len || !data_first {
        let bytes = std::fs::read(path).ctx("read", path)?;
        return crate::rafs::decode(&bytes).map_err(in_file);
    }
    f.seek(SeekFrom::Start(meta_at)).ctx("seek", path)?;
    let mut meta = Vec::new();
    f.read_to_end(&mut meta).ctx("read", path)?;
    head.extend_from_slice(&meta);
    drop(meta);
    crate::rafs::v6::decode::decode_sparse(&head, BLOCK, meta_at - BLOCK).map_err(in_file)
}

/// Reads until `buf` is full or the input ends; how much was read.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The device a layer image becomes: the blob standing for its own data (every chunk of a
/// plain image's flat files is in it), or a placeholder when it has no file data.
fn layer_blob(
    image: &crate::model::Image,
    path: &Path,
    size: u64,
) -> Result<crate::model::BlobEntry> {
    match image.blobs.as_slice() {
        [] => Ok(crate::model::BlobEntry {
            compressed_size: size,
            uncompressed_size: size,
            ..crate::model::BlobEntry::new(
                format!("{:032x}", 0),
                Compressor::None,
                Digester::Blake3,
            )
        }),
        [own] => Ok(own.clone()),
        _ => Err(Error::Unsupported {
            path: path.to_path_buf(),
            reason: "a layer with devices of its own cannot be merged (its data is elsewhere)"
                .into(),
        }),
    }
}

/// Sets the UUID, build time and label in an encoded image's superblock.
fn stamp_identity(bytes: &mut [u8], opts: &MkfsOptions) -> Result<()> {
    use crate::format::rafs_v6::{SuperBlock, SUPERBLOCK_OFFSET};
    use zerocopy::FromBytes;
    let end = SUPERBLOCK_OFFSET + size_of::<SuperBlock>();
    let sb = bytes
        .get_mut(SUPERBLOCK_OFFSET..end)
        .and_then(|b| SuperBlock::mut_from_bytes(b).ok())
        .ok_or_else(|| Error::Internal("encoded image without a superblock".into()))?;
    sb.uuid = opts.uuid;
    sb.build_time = opts.build_time.into();
    sb.volume_name = volume_name(opts.label.as_deref());
    Ok(())
}

/// Regular files up to this size are compressed side by side (a batch of them in parallel,
/// each on one thread, while the next batch is read); larger ones stream through
/// [`ExtentWriter`], a window at a time. It is erofs-utils' segment size, the most a filled
/// file compresses on one thread anyway (formats/rafs-v6.md §19.1).
const SMALL_FILE: u64 = 16 << 20;
/// Bytes of small files held for one batch.
const BATCH_BYTES: usize = 8 << 20;
/// Batches being compressed while the next is read: enough that the pool always has a batch's
/// files to start while the last file of another finishes.
const BATCHES_IN_FLIGHT: usize = 2;

/// Small files, in source order, with their bytes.
type Batch = Vec<(InodeId, Vec<u8>)>;
/// A batch and its files' packed extents, or why packing failed.
type PackedBatch = Result<(Batch, Vec<Vec<crate::ops::export_compressed::Packed>>)>;

/// Where each regular file's data went, and the writer putting it there.
struct DataWriter<'a> {
    /// Small files waiting to be compressed together, in source order.
    batch: Batch,
    batch_bytes: usize,
    /// Batches handed to the thread pool, oldest first; each is written when it is the
    /// oldest and more are in flight, so the points where blocks are assigned (and so the
    /// image) do not depend on how fast the threads are.
    in_flight: std::collections::VecDeque<std::sync::mpsc::Receiver<PackedBatch>>,
    out: BufWriter<&'a mut std::fs::File>,
    /// The image's final name, for messages.
    image: &'a Path,
    compression: Option<ErofsCompression>,
    files: HashMap<InodeId, StandaloneFile>,
    next_block: u64,
}

impl<'a> DataWriter<'a> {
    /// Starts writing data at block 1: block 0 holds the superblock, written last.
    fn new(
        file: &'a mut std::fs::File,
        image: &'a Path,
        compression: Option<ErofsCompression>,
    ) -> Result<Self> {
        let mut w = DataWriter::at(file, image, compression, 0)?;
        w.out.write_all(&ZERO_BLOCK).ctx("write", image)?;
        w.next_block = 1;
        Ok(w)
    }

    /// A writer whose data starts at block `first` of `file` (an image being added to).
    fn at(
        file: &'a mut std::fs::File,
        image: &'a Path,
        compression: Option<ErofsCompression>,
        first: u64,
    ) -> Result<Self> {
        file.seek(SeekFrom::Start(first * BLOCK))
            .ctx("seek", image)?;
        let out = BufWriter::with_capacity(1 << 20, file);
        Ok(DataWriter {
            batch: Vec::new(),
            batch_bytes: 0,
            in_flight: std::collections::VecDeque::new(),
            out,
            image,
            compression,
            files: HashMap::new(),
            next_block: first,
        })
    }

    /// Stores the `size` bytes `data` yields for `ino`.
    fn write_file(
        &mut self,
        ino: InodeId,
        data: &mut dyn Read,
        size: u64,
        name: &Path,
    ) -> Result<()> {
        // tests stop here to interrupt a build halfway through its data
        crate::io::failpoint::reached("chunk");
        let file = match self.compression {
            _ if size == 0 => StandaloneFile::Inline(Vec::new()),
            Some(how) if size > BLOCK && size <= SMALL_FILE => {
                return self.queue(how, ino, data, size, name);
            }
            Some(how) if size > BLOCK => self.compressed(how, data, size, name)?,
            _ => self.plain(data, size, name)?,
        };
        self.files.insert(ino, file);
        Ok(())
    }

    /// Holds a small file for the next batch; compresses the batch when it is full.
    fn queue(
        &mut self,
        how: ErofsCompression,
        ino: InodeId,
        data: &mut dyn Read,
        size: u64,
        name: &Path,
    ) -> Result<()> {
        let mut bytes = vec![0u8; size as usize];
        data.read_exact(&mut bytes).ctx("read", name)?;
        self.batch_bytes += bytes.len();
        self.batch.push((ino, bytes));
        if self.batch_bytes >= BATCH_BYTES {
            self.flush_batch(how)?;
        }
        Ok(())
    }

    /// Hands the held files to the thread pool, to be compressed in parallel while the next
    /// batch is read; writes the oldest batch once more than [`BATCHES_IN_FLIGHT`] are out.
    fn flush_batch(&mut self, how: ErofsCompression) -> Result<()> {
        use rayon::prelude::*;
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if !batch.is_empty() {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            rayon::spawn(move || {
                let packed = batch
                    .par_iter()
                    .map(|(_, d)| how.pack_file(d))
                    .collect::<Result<Vec<_>>>();
                // the receiver is gone only when the build already failed
                let _ = tx.send(packed.map(|p| (batch, p)));
            });
            self.in_flight.push_back(rx);
        }
        while self.in_flight.len() > BATCHES_IN_FLIGHT {
            self.write_oldest_batch(how)?;
        }
        Ok(())
    }

    /// Waits for the oldest batch in flight and writes its files in source order: the image
    /// is the same whatever the number of threads.
    fn write_oldest_batch(&mut self, how: ErofsCompression) -> Result<()> {
        let Some(rx) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let (batch, packed) = rx
            .recv()
            .map_err(|_| Error::Internal("a compression task ended without a result".into()))??;
        for ((ino, data), packed) in batch.into_iter().zip(packed) {
            let (file, next) =
                ExtentWriter::whole(how, self.next_block, &data, packed, &mut self.out)?;
            self.next_block = next;
            self.files.insert(ino, file);
        }
        Ok(())
    }

    /// Contiguous blocks, the last one zero-padded (flat plain).
    fn plain(&mut self, data: &mut dyn Read, size: u64, name: &Path) -> Result<StandaloneFile> {
        let blkaddr = self.block_u32()?;
        let copied = std::io::copy(&mut data.take(size), &mut self.out).ctx("read", name)?;
        if copied != size {
            return Err(short(name, copied, size));
        }
        let pad = (BLOCK - size % BLOCK) % BLOCK;
        self.out
            .write_all(&ZERO_BLOCK[..pad as usize])
            .ctx("write", self.image)?;
        self.next_block += size.div_ceil(BLOCK);
        Ok(StandaloneFile::Plain { blkaddr })
    }

    /// EROFS extents, compressed a window at a time.
    fn compressed(
        &mut self,
        how: ErofsCompression,
        data: &mut dyn Read,
        size: u64,
        name: &Path,
    ) -> Result<StandaloneFile> {
        let mut w = ExtentWriter::new(how, self.next_block, size);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = data.read(&mut buf[..want]).ctx("read", name)?;
            if n == 0 {
                return Err(short(name, size - left, size));
            }
            w.push(&buf[..n], &mut self.out)?;
            left -= n as u64;
        }
        let (file, next) = w.finish(&mut self.out)?;
        self.next_block = next;
        Ok(file)
    }

    fn block_u32(&self) -> Result<u32> {
        u32::try_from(self.next_block)
            .map_err(|_| Error::Limit("image larger than 2^32 blocks".into()))
    }

    /// The files' bodies and the first block after the data.
    fn finish(mut self) -> Result<(HashMap<InodeId, StandaloneFile>, u64)> {
        if let Some(how) = self.compression {
            self.flush_batch(how)?;
            while !self.in_flight.is_empty() {
                self.write_oldest_batch(how)?;
            }
        }
        self.out
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx("write", self.image)?;
        Ok((self.files, self.next_block))
    }
}

impl tar::FileData for DataWriter<'_> {
    fn file(
        &mut self,
        inode: InodeId,
        data: &mut dyn Read,
        size: u64,
        _location: DataLocation,
        name: &Path,
    ) -> Result<Option<Vec<crate::model::ChunkId>>> {
        self.write_file(inode, data, size, name)?;
        Ok(None)
    }
}

fn short(name: &Path, got: u64, size: u64) -> Error {
    Error::Corrupt {
        what: "file data",
        offset: got,
        reason: format!("{}: {got} of {size} bytes", name.display()),
    }
}

/// What mkfs.erofs does to every tree between reading the source and writing it: owners and
/// times set as asked, then the directories a tar only implied made from their parents,
/// xattrs dropped with `-x` below 0, overlayfs marks kept or stripped.
fn shape_common(opts: &MkfsOptions, tree: &mut Tree) {
    for ino in tree.inode_ids() {
        let inode = &mut tree[ino];
        if !opts.xattrs {
            inode.set_xattrs(Vec::new());
        }
        if marked_implied(inode) {
            continue;
        }
        owners(&opts.owners, &mut inode.uid, &mut inode.gid);
        match opts.mtimes {
            Mtimes::Kept => {}
            Mtimes::Fixed => (inode.mtime, inode.mtime_nsec) = (opts.build_time as i64, 0),
            Mtimes::Clamped => {
                if inode.mtime > opts.build_time as i64 {
                    (inode.mtime, inode.mtime_nsec) = (opts.build_time as i64, 0);
                }
            }
        }
    }
    implied_dirs(tree, opts);
    overlay_marks(tree, opts.ovlfs_strip);
    tree.prune_unreachable();
}

fn owners(rules: &Owners, uid: &mut u32, gid: &mut u32) {
    *uid = rules
        .force_uid
        .unwrap_or(*uid)
        .wrapping_add(rules.uid_offset);
    *gid = rules
        .force_gid
        .unwrap_or(*gid)
        .wrapping_add(rules.gid_offset);
}

/// `--aufs` (erofs-utils `erofs_rebuild_get_dentry`): `.wh.NAME` becomes a character device
/// 0:0 named NAME with no permission bits (replacing what the layer had under NAME), and
/// `.wh..wh..opq` marks its directory opaque (`trusted.overlay.opaque=y`) and goes.
fn aufs_to_overlayfs(tree: &mut Tree) -> Result<()> {
    for e in tree.numbering_order() {
        let name = tree[e].name.clone();
        let parent = tree[e].parent;
        if e == EntryId::ROOT || !name.starts_with(AUFS_WH_PREFIX) {
            continue;
        }
        if name == AUFS_OPAQUE {
            let dir = tree[parent].inode;
            let mut xattrs = tree[dir].xattrs.clone();
            xattrs.retain(|(k, _)| k != OVL_OPAQUE);
            xattrs.push((OVL_OPAQUE.to_vec(), b"y".to_vec()));
            tree[dir].set_xattrs(xattrs);
            tree.detach(e);
            continue;
        }
        let target = name[AUFS_WH_PREFIX.len()..].to_vec();
        if let Some(old) = tree.child(parent, &target) {
            tree.detach(old);
        }
        let ino = tree[e].inode;
        let mut whiteout = tree[ino].clone();
        whiteout.kind = InodeKind::CharDevice { rdev: 0 };
        whiteout.permissions = 0;
        whiteout.set_xattrs(Vec::new());
        let wino = tree.add_inode(whiteout);
        tree.detach(e);
        tree.add_entry(parent, &target, wino)?;
    }
    tree.sort();
    Ok(())
}

/// A tar's implied directories as mkfs.erofs makes them: the root 0777, owned by mkfs.erofs's
/// own ids or the forced ones, never offset, its mtime the build time (erofs-utils
/// `erofs_mkfs_alloc_root`); any other 0755 plus its parent's group and other write bits, its
/// parent's owner and mtime as shaped (`erofs_rebuild_mkdir`), so offset only below a listed
/// directory. Parents come first in numbering order.
fn implied_dirs(tree: &mut Tree, opts: &MkfsOptions) {
    for e in tree.numbering_order() {
        let ino = tree[e].inode;
        if !marked_implied(&tree[ino]) {
            continue;
        }
        if e == EntryId::ROOT {
            let root = &mut tree[ino];
            root.permissions = 0o777;
            let (uid, gid) = opts.process_ids;
            root.uid = opts.owners.force_uid.unwrap_or(uid);
            root.gid = opts.owners.force_gid.unwrap_or(gid);
            (root.mtime, root.mtime_nsec) = (opts.build_time as i64, 0);
        } else {
            let p = tree[tree[e].parent].inode;
            let (pmode, puid, pgid, pm, pn) = {
                let pi = &tree[p];
                (pi.permissions, pi.uid, pi.gid, pi.mtime, pi.mtime_nsec)
            };
            let d = &mut tree[ino];
            d.permissions = 0o755 | (pmode & 0o022);
            (d.uid, d.gid, d.mtime, d.mtime_nsec) = (puid, pgid, pm, pn);
        }
        tree[ino].kind = InodeKind::Directory { implied: false };
    }
}

/// Whether a tar reader marked this directory as only implied. Not
/// [`crate::model::Inode::is_implied_dir`]'s guess from 0755 0:0 mtime 0, which a listed
/// directory meets once `-T0` has set its time, and which layers read back from images need.
fn marked_implied(inode: &crate::model::Inode) -> bool {
    matches!(inode.kind, InodeKind::Directory { implied: true })
}

/// overlayfs marks: with `--ovlfs-strip` whiteouts (character devices 0:0), opaque marks and
/// empty origin marks go; otherwise a directory holding a whiteout gets an empty `trusted.overlay.origin`, which
/// keeps overlayfs from listing it directly (Linux commit b79e05aaa166; erofs-utils does so).
fn overlay_marks(tree: &mut Tree, strip: bool) {
    for e in tree.numbering_order() {
        let ino = tree[e].inode;
        if tree[ino].file_type() != FileType::Directory {
            continue;
        }
        let whiteouts: Vec<EntryId> = tree[e]
            .children
            .iter()
            .copied()
            .filter(|c| {
                let i = &tree[tree[*c].inode];
                i.file_type() == FileType::CharDevice && i.rdev() == 0
            })
            .collect();
        let mut xattrs = tree[ino].xattrs.clone();
        if strip {
            for w in whiteouts {
                tree.detach(w);
            }
            // an empty origin only marks a directory that held whiteouts (erofs-utils reads it
            // back so, and writes it only without --ovlfs-strip)
            xattrs.retain(|(k, v)| k != OVL_OPAQUE && !(k == OVL_ORIGIN && v.is_empty()));
        } else if !whiteouts.is_empty() && !xattrs.iter().any(|(k, _)| k == OVL_ORIGIN) {
            xattrs.push((OVL_ORIGIN.to_vec(), Vec::new()));
        }
        tree[ino].set_xattrs(xattrs);
    }
}

/// Lays out and writes the metadata after the data, then the superblock in block 0.
fn write_metadata(
    opts: &MkfsOptions,
    tree: &Tree,
    files: &HashMap<InodeId, StandaloneFile>,
    meta_blkaddr: u64,
    out: &mut std::fs::File,
) -> Result<MkfsOutput> {
    let lay = layout::compute_with(tree, BLOCK, &|ino, _| {
        files
            .get(&ino)
            .map_or(RegularLayout::Data(0), StandaloneFile::regular_layout)
    })?;
    let meta_len = lay.end.div_ceil(BLOCK) * BLOCK;
    let mut meta = vec![0u8; meta_len as usize];
    let eopts = EncodeOptions::standalone(crate::format::blob::DEFAULT_CHUNK_SIZE);
    write_standalone_inodes(&mut meta, tree, &eopts, &lay, files, meta_blkaddr)?;
    let total_blocks = meta_blkaddr + meta_len / BLOCK;
    let mut block0 = vec![0u8; BLOCK as usize];
    let identity = ImageIdentity {
        uuid: opts.uuid,
        build_time: opts.build_time,
        volume_name: volume_name(opts.label.as_deref()),
    };
    standalone_superblock(
        &mut block0,
        opts.compression,
        lay.order.len() as u64,
        total_blocks,
        meta_blkaddr,
        &identity,
    )?;
    // the metadata area's first block stays unused: nids count from `meta_blkaddr`, and the
    // root's (128) is that block's end, as in an image whose metadata starts at block 0
    meta[..BLOCK as usize].fill(0);
    let path = &opts.output;
    out.seek(SeekFrom::Start(meta_blkaddr * BLOCK))
        .ctx("seek", path)?;
    out.write_all(&meta).ctx("write", path)?;
    out.seek(SeekFrom::Start(0)).ctx("seek", path)?;
    out.write_all(&block0).ctx("write", path)?;
    out.flush().ctx("write", path)?;
    Ok(MkfsOutput {
        inodes: lay.order.len() as u64,
        data_blocks: meta_blkaddr - 1,
        size: total_blocks * BLOCK,
    })
}

fn volume_name(label: Option<&str>) -> [u8; 16] {
    let mut name = [0u8; 16];
    if let Some(l) = label {
        let n = l.len().min(16);
        name[..n].copy_from_slice(&l.as_bytes()[..n]);
    }
    name
}
