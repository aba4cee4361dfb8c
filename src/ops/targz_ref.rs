//! `create -t targz-ref`: a bootstrap plus a small zran meta over an unchanged gzip layer. One
//! pass inflates the layer, records where inflating may restart (deflate block boundaries and
//! their 32 KiB windows), cuts file data into chunks and gives each chunk the inflate context
//! it is read through (formats/blob.md §11).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Read};
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use sha2::{Digest as _, Sha256};

use crate::blob::zran::{encode_meta, EncodedMeta, ZranChunk, ZranMeta};
use crate::codec::{digest, Compressor, Digester};
use crate::error::{Error, IoContext, Result};
use crate::format::blob::BlobFeatures;
use crate::format::zran::ZranContext;
use crate::io::staged::{write_temp, Outputs};
use crate::model::{BlobEntry, BlobRefs, ChunkId, ChunkInfo, FileType, InodeId, Tree};
use crate::ops::create::{CreateOptions, CreateOutput, Progress};
use crate::ops::paths::bootstrap_path;
use crate::rafs::v6::{self, EncodeOptions};
use crate::source::tar;

/// Size of the reads from the raw layer (upstream's `ZRAN_READER_BUF_SIZE`).
const INPUT_BUF: usize = 64 << 10;
/// Context cutting thresholds (upstream `ZranContextGenerator`, chunk size 1 MiB): a context
/// spanning this much compressed data is closed ...
const MAX_COMP_HALF: u64 = 512 << 10;
/// ... or one that would pass this much uncompressed data with the next chunk ...
const MAX_UNCOMP: u64 = 2 << 20;
/// ... or one over this size that the next chunk would stretch to more than twice its length.
const MIN_COMP: u64 = 512 << 10;

/// A place inflating may restart: a block boundary (or the end of a gzip member header).
#[derive(Debug, Clone)]
struct Boundary {
    in_pos: u64,
    out_pos: u64,
    ctx_byte: u8,
    ctx_bits: u8,
    window: Vec<u8>,
}

/// The inflating side, shared between the tar reader's input and the chunk cutter.
struct Inflating {
    z: zran::Inflater,
    raw: Box<dyn Read + Send>,
    input: Vec<u8>,
    start: usize,
    end: usize,
    last_byte: u8,
    total_in: u64,
    total_out: u64,
    /// Block boundaries not yet passed by a chunk start (and the last one before it).
    boundaries: VecDeque<Boundary>,
    /// (out, in) after each inflate step, to tell the compressed position of a chunk's ends.
    samples: VecDeque<(u64, u64)>,
    /// Uncompressed offsets where a gzip member started.
    members: VecDeque<u64>,
    ended: bool,
    hasher: Sha256,
    size: u64,
    window: Box<[u8; zran::WINDOW_SIZE]>,
    /// The layer is a plain tar (a tar reference, as upstream makes of one): passed through,
    /// its file data referenced where it lies.
    plain: bool,
}

impl Inflating {
    fn new(raw: Box<dyn Read + Send>, plain: bool) -> Inflating {
        Inflating {
            plain,
            z: zran::Inflater::new(true),
            raw,
            input: vec![0; INPUT_BUF],
            start: 0,
            end: 0,
            last_byte: 0,
            total_in: 0,
            total_out: 0,
            boundaries: VecDeque::new(),
            samples: VecDeque::from([(0, 0)]),
            members: VecDeque::new(),
            ended: false,
            hasher: Sha256::new(),
            size: 0,
            window: Box::new([0; zran::WINDOW_SIZE]),
        }
    }

    fn refill(&mut self) -> std::io::Result<usize> {
        if self.end > 0 {
            self.last_byte = self.input[self.end - 1];
        }
        let n = self.raw.read(&mut self.input)?;
        self.hasher.update(&self.input[..n]);
        self.size += n as u64;
        self.start = 0;
        self.end = n;
        Ok(n)
    }

    fn bad(&self, what: &str) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} at compressed offset {}", self.total_in),
        )
    }

    /// Inflates into `buf`; 0 at the end of the last gzip member.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.plain {
            let n = self.raw.read(buf)?;
            self.hasher.update(&buf[..n]);
            self.size += n as u64;
            self.total_in += n as u64;
            self.total_out += n as u64;
            return Ok(n);
        }
        let mut produced = 0;
        while produced == 0 && !buf.is_empty() {
            if self.start == self.end {
                if self.refill()? == 0 {
                    if self.ended {
                        return Ok(0);
                    }
                    return Err(self.bad("the gzip stream is cut short"));
                }
                if self.ended {
                    // another member follows; one that is not gzip is trailing garbage
                    self.members.push_back(self.total_out);
                    self.ended = false;
                }
            }
            let step = self
                .z
                .inflate(
                    &self.input[self.start..self.end],
                    &mut buf[produced..],
                    true,
                )
                .map_err(|e| self.bad(&format!("corrupt gzip data ({e})")))?;
            self.start += step.consumed;
            self.total_in += step.consumed as u64;
            self.total_out += step.produced as u64;
            produced += step.produced;
            if step.produced > 0 {
                self.samples.push_back((self.total_out, self.total_in));
            }
            if step.stream_end {
                self.z
                    .reset(true)
                    .map_err(|e| self.bad(&format!("cannot restart inflating ({e})")))?;
                self.ended = true;
                if self.start < self.end {
                    self.members.push_back(self.total_out);
                    self.ended = false;
                }
            } else if step.data_type & 128 != 0 {
                self.boundary(step.data_type);
            } else if step.consumed == 0 && step.produced == 0 && self.start < self.end {
                return Err(self.bad("inflate makes no progress"));
            }
        }
        Ok(produced)
    }

    /// Records the block boundary inflate just stopped at, with its window.
    fn boundary(&mut self, data_type: i32) {
        let bits = (data_type & 7) as u8;
        let ctx_byte = match (bits, self.start) {
            (0, _) => 0,
            (_, 0) => self.last_byte,
            (_, s) => self.input[s - 1],
        };
        let n = self.z.window(&mut self.window);
        self.boundaries.push_back(Boundary {
            in_pos: self.total_in,
            out_pos: self.total_out,
            ctx_byte,
            ctx_bits: bits,
            window: self.window[..n].to_vec(),
        });
    }

    /// Compressed position reached when uncompressed `out` was: lower bound (`upper` false)
    /// or upper bound.
    fn in_at(&self, out: u64, upper: bool) -> u64 {
        if self.plain {
            return out;
        }
        if upper {
            self.samples
                .iter()
                .find(|(o, _)| *o >= out)
                .map_or(self.total_in, |(_, i)| *i)
        } else {
            self.samples
                .iter()
                .rev()
                .find(|(o, _)| *o <= out)
                .map_or(0, |(_, i)| *i)
        }
    }

    /// Forgets samples and boundaries before `out` (keeping the last one before it).
    fn prune(&mut self, out: u64) {
        while self.samples.len() > 1 && self.samples[1].0 <= out {
            self.samples.pop_front();
        }
        while self.boundaries.len() > 1 && self.boundaries[1].out_pos <= out {
            self.boundaries.pop_front();
        }
        while self.members.front().is_some_and(|m| *m <= out) {
            self.members.pop_front();
        }
    }
}

/// The decompressed tar stream the tar reader consumes.
struct TarStream(Rc<RefCell<Inflating>>);

impl Read for TarStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

/// The context being filled: its index and the boundary it started at.
struct Current {
    index: u32,
    block_start: u64,
}

/// Cuts file data into chunks and gives each its inflate context.
struct RefChunks {
    z: Rc<RefCell<Inflating>>,
    chunk_size: u32,
    meta: ZranMeta,
    chunks: Vec<ChunkInfo>,
    by_digest: HashMap<[u8; 32], ChunkId>,
    current: Option<Current>,
    uncompressed_end: u64,
    refs: u64,
    files: u64,
    bytes: u64,
}

impl RefChunks {
    /// The context chunk `[start, start + size)` is read through (upstream's `begin_read` rules,
    /// formats/blob.md §11), then `(context, its out_offset)`.
    fn context(&mut self, start: u64) -> Result<(u32, u64)> {
        let z = self.z.borrow_mut();
        let boundary = z
            .boundaries
            .iter()
            .rev()
            .find(|b| b.out_pos <= start)
            .cloned()
            .ok_or_else(|| Error::Corrupt {
                what: "gzip stream",
                offset: z.in_at(start, false),
                reason: "no deflate block starts before this file data".into(),
            })?;
        let switched = z.members.iter().any(|m| *m <= start);
        let keep = self.current.as_ref().and_then(|cur| {
            let ctx = &self.meta.contexts[cur.index as usize];
            let comp = z.in_at(start, false).saturating_sub(ctx.in_offset.get());
            let uncomp = start - ctx.out_offset.get();
            let first = boundary.in_pos == cur.block_start;
            let enough = !first
                && (comp >= MAX_COMP_HALF || uncomp + u64::from(self.chunk_size) >= MAX_UNCOMP);
            let stretched = !first
                && comp > 2 * u64::from(ctx.in_len.get())
                && u64::from(ctx.in_len.get()) > MIN_COMP;
            (!switched && !enough && !stretched).then_some((cur.index, ctx.out_offset.get()))
        });
        drop(z);
        self.cover_member_end();
        let mut z = self.z.borrow_mut();
        z.prune(start);
        if let Some(k) = keep {
            return Ok(k);
        }
        let ctx = ZranContext {
            in_offset: boundary.in_pos.into(),
            out_offset: boundary.out_pos.into(),
            ctx_byte: boundary.ctx_byte,
            ctx_bits: boundary.ctx_bits,
            ..ZranContext::default()
        };
        let index = self.meta.push_context(ctx, &boundary.window)?;
        self.current = Some(Current {
            index,
            block_start: boundary.in_pos,
        });
        Ok((index, boundary.out_pos))
    }

    /// Records one chunk whose bytes `data` started at uncompressed `start`.
    fn chunk(&mut self, start: u64, data: &[u8]) -> Result<ChunkId> {
        if self.z.borrow().plain {
            return Ok(self.chunk_in_place(start, data));
        }
        let (index, out_offset) = self.context(start)?;
        let end = start + data.len() as u64;
        let (in_start, in_end) = {
            let z = self.z.borrow();
            (z.in_at(start, false), z.in_at(end, true))
        };
        let ctx = &mut self.meta.contexts[index as usize];
        ctx.out_len = u32::try_from(end - out_offset)
            .map_err(|_| Error::Limit("an inflate context spans 4 GiB".into()))?
            .into();
        ctx.in_len = u32::try_from(in_end - ctx.in_offset.get())
            .map_err(|_| Error::Limit("an inflate context spans 4 GiB".into()))?
            .into();
        let at = ZranChunk {
            compressed_offset: in_start,
            compressed_size: (in_end - in_start) as u32,
            context: index,
            offset: (start - out_offset) as u32,
            ..ZranChunk::default()
        };
        Ok(self.record(data, at, true))
    }
}

impl RefChunks {
    /// When the current context's output ends where a gzip member ended, its input must reach
    /// past that member's trailer and the next member's header: nydusd's inflater meets the
    /// member's end and reads both from the context's own input (upstream
    /// `ZranDecoder::uncompress`), where erofs-forge's reader skips them on its own
    /// (formats/blob.md §11). Called once the stream has been read past that point.
    fn cover_member_end(&mut self) {
        let Some(index) = self.current.as_ref().map(|c| c.index as usize) else {
            return;
        };
        let z = self.z.borrow();
        let ctx = &mut self.meta.contexts[index];
        let end = ctx.out_offset.get() + u64::from(ctx.out_len.get());
        if !z.members.contains(&end) {
            return;
        }
        let reach = z
            .samples
            .iter()
            .find(|(o, _)| *o > end)
            .map_or(z.total_in, |(_, i)| *i);
        let len = reach.saturating_sub(ctx.in_offset.get());
        if let Ok(len) = u32::try_from(len) {
            if len > ctx.in_len.get() {
                ctx.in_len = len.into();
            }
        }
    }

    /// Records one chunk of a plain tar, referenced where it lies: stored raw at its tar
    /// offset (upstream's tar-ref, formats/blob.md §11).
    fn chunk_in_place(&mut self, start: u64, data: &[u8]) -> ChunkId {
        let at = ZranChunk {
            compressed_offset: start,
            compressed_size: data.len() as u32,
            crc32: digest::crc32(data),
            ..ZranChunk::default()
        };
        self.record(data, at, false)
    }

    /// Counts a reference to the chunk `data` and, unless equal bytes were recorded already,
    /// records it where `at` says its bytes are (its compressed range, inflate context and
    /// offset: `inflated` when they come out of the gzip stream); returns its id.
    fn record(&mut self, data: &[u8], at: ZranChunk, inflated: bool) -> ChunkId {
        self.refs += 1;
        let digest = Digester::Sha256.digest(data);
        if let Some(id) = self.by_digest.get(&digest) {
            return *id;
        }
        let chunk = ZranChunk {
            uncompressed_offset: self.uncompressed_end,
            uncompressed_size: data.len() as u32,
            ..at
        };
        self.uncompressed_end += (data.len() as u64).div_ceil(4096) * 4096;
        let id = ChunkId::new(self.chunks.len() as u32);
        self.chunks.push(ChunkInfo {
            digest,
            crc32: digest::crc32(data),
            has_crc32: true,
            blob_index: 0,
            index: id.get(),
            compressed: inflated,
            encrypted: false,
            compressed_offset: chunk.compressed_offset,
            compressed_size: chunk.compressed_size,
            uncompressed_offset: chunk.uncompressed_offset,
            uncompressed_size: chunk.uncompressed_size,
        });
        self.meta.chunks.push(chunk);
        self.by_digest.insert(digest, id);
        id
    }
}

impl tar::FileData for RefChunks {
    fn file(
        &mut self,
        _inode: InodeId,
        data: &mut dyn Read,
        size: u64,
        location: tar::DataLocation,
        name: &Path,
    ) -> Result<Option<Vec<ChunkId>>> {
        if location.sparse {
            return Err(Error::Unsupported {
                path: name.to_path_buf(),
                reason: "a sparse file cannot be referenced in place (targz-ref)".into(),
            });
        }
        self.files += 1;
        self.bytes += size;
        let mut ids = Vec::new();
        let mut done = 0u64;
        let mut buf = Vec::new();
        while done < size {
            let len = (size - done).min(u64::from(self.chunk_size)) as usize;
            buf.resize(len, 0);
            // the chunk's bytes first: only then has the layer been inflated past its end
            data.read_exact(&mut buf).map_err(|e| Error::Codec {
                algo: "gzip",
                reason: e.to_string(),
            })?;
            ids.push(self.chunk(location.offset + done, &buf)?);
            done += len as u64;
        }
        Ok(Some(ids))
    }
}

/// A layer read through: its tree, chunks and inflate contexts, digest and size.
struct Scanned {
    tree: Tree,
    cut: RefChunks,
    layer_id: String,
    layer_size: u64,
}

/// Reads the whole layer once: tree, chunks, contexts, and its sha256 (the blob id).
fn scan(opts: &CreateOptions, progress: &dyn Progress) -> Result<Scanned> {
    let (raw, size) = tar::open_raw(&opts.source)?;
    progress.start(0, size.unwrap_or(0));
    scan_raw(raw, opts)
}

/// A layer read through by [`scan_layer`]: its tree (eStargz entries dropped) and zran meta.
#[doc(hidden)]
pub struct ScannedLayer {
    /// The tree the layer's tar holds.
    pub tree: Tree,
    /// Its chunks and inflate contexts.
    pub meta: ZranMeta,
    /// The chunk table entries (digests), by chunk index.
    pub chunks: Vec<ChunkInfo>,
}

/// The layer scan of `create -t targz-ref` / `estargz-ref` on any reader (as `opts` says:
/// source type, chunk size; `opts.source` names it in errors). For the fuzz targets.
#[doc(hidden)]
pub fn scan_layer(raw: Box<dyn Read + Send>, opts: &CreateOptions) -> Result<ScannedLayer> {
    let s = scan_raw(raw, opts)?;
    Ok(ScannedLayer {
        tree: s.tree,
        meta: s.cut.meta,
        chunks: s.cut.chunks,
    })
}

/// [`scan`] once the layer is open.
fn scan_raw(raw: Box<dyn Read + Send>, opts: &CreateOptions) -> Result<Scanned> {
    // a layer that is not gzip is taken as a plain tar, as upstream takes it
    let mut raw = std::io::BufReader::with_capacity(INPUT_BUF, raw);
    let head = raw.fill_buf().ctx("read", &opts.source)?;
    let plain = !head.starts_with(&[0x1f, 0x8b]);
    let z = Rc::new(RefCell::new(Inflating::new(Box::new(raw), plain)));
    let mut cut = RefChunks {
        z: z.clone(),
        chunk_size: opts.chunk_size,
        meta: {
            let mut meta = ZranMeta::default();
            meta.in_place = plain;
            // one 32 KiB window a context: on disk, not in memory, while the layer is read
            meta.spill_windows()?;
            meta
        },
        chunks: Vec::new(),
        by_digest: HashMap::new(),
        current: None,
        uncompressed_end: 0,
        refs: 0,
        files: 0,
        bytes: 0,
    };
    let mut stream = TarStream(z.clone());
    let tree = tar::read_tar_limited(&mut stream, &opts.source, &mut cut, opts.limits.entries)
        .map_err(|e| crate::error::in_file(&opts.source, e))?;
    // the rest of the layer (tar padding, gzip trailer) for its digest and size
    std::io::copy(&mut stream, &mut std::io::sink()).map_err(|e| Error::Corrupt {
        what: "gzip stream",
        offset: z.borrow().total_in,
        reason: e.to_string(),
    })?;
    cut.cover_member_end();
    let mut tree = tree;
    if opts.source_type == crate::ops::create::SourceType::EstargzRef {
        drop_estargz_entries(&mut tree, &opts.source)?;
    }
    let z = z.borrow();
    Ok(Scanned {
        layer_id: hex::encode(z.hasher.clone().finalize()),
        layer_size: z.size,
        tree,
        cut,
    })
}

/// The eStargz TOC and landmark files (containerd/stargz-snapshotter `docs/estargz.md`): tar
/// entries of the layer, not files of the image. Their chunks stay in the layer, unreferenced.
const ESTARGZ_ENTRIES: [&[u8]; 3] = [
    b"stargz.index.json",
    b".prefetch.landmark",
    b".no.prefetch.landmark",
];

/// Drops the eStargz entries from the root; a layer without a TOC is not eStargz.
fn drop_estargz_entries(tree: &mut Tree, source: &Path) -> Result<()> {
    let root = crate::model::EntryId::ROOT;
    let has_toc = tree[root]
        .children
        .iter()
        .any(|c| tree[*c].name == ESTARGZ_ENTRIES[0]);
    if !has_toc {
        return Err(Error::Unsupported {
            path: source.to_path_buf(),
            reason: "not an eStargz layer: no stargz.index.json entry".into(),
        });
    }
    let kept: Vec<_> = tree[root]
        .children
        .iter()
        .copied()
        .filter(|c| !ESTARGZ_ENTRIES.contains(&tree[*c].name.as_slice()))
        .collect();
    tree[root].children = kept;
    tree.prune_unreachable();
    Ok(())
}

/// The blob-table entry of the layer: the `.tar.gz` is the data, `meta` its zran meta.
fn ref_blob(s: &Scanned, features: BlobFeatures, meta: &EncodedMeta, refs: BlobRefs) -> BlobEntry {
    BlobEntry {
        chunk_count: s.cut.chunks.len() as u32,
        features,
        compressed_size: s.layer_size,
        uncompressed_size: s.cut.uncompressed_end,
        ci_offset: 0,
        ci_compressed_size: meta.ci_compressed_size,
        ci_uncompressed_size: meta.ci_uncompressed_size,
        ci_compressor: Compressor::Zstd.code(),
        refs,
        ..BlobEntry::new(s.layer_id.clone(), Compressor::Gzip, Digester::Sha256)
    }
}

/// Encoding options of a targz-ref bootstrap: gzip chunks, sha256 digests (as upstream forces).
fn encode_options(opts: &CreateOptions, tree: &Tree) -> EncodeOptions {
    EncodeOptions {
        chunk_size: opts.chunk_size,
        compressor: Compressor::Gzip,
        digester: Digester::Sha256,
        explicit_uid_gid: !opts.repeatable,
        block_size: v6::encode::BLOCK_SIZE,
        tarfs: false,
        single_device: false,
        prefetch: opts.prefetch.table(tree),
        has_xattr: false,
    }
}

/// The build report of a targz-ref layer.
fn report(s: &Scanned, bootstrap: String, blobs: Vec<String>, t0: Instant) -> CreateOutput {
    let mut timings = std::collections::BTreeMap::new();
    timings.insert("total_build".into(), t0.elapsed().as_secs_f64());
    CreateOutput {
        bootstrap,
        blob_size: if blobs.is_empty() { 0 } else { s.layer_size },
        blobs,
        blob_path: None,
        entries: s.tree.entries.len() as u64,
        files: s
            .tree
            .inodes
            .iter()
            .filter(|i| i.file_type() == FileType::Regular && !i.chunks().is_empty())
            .count() as u64,
        data_bytes: s.cut.bytes,
        chunks: s.cut.refs,
        unique_chunks: s.cut.chunks.len() as u64,
        compressor: Compressor::Gzip,
        fs_version: 6,
        timings,
    }
}

/// `create -t targz-ref` with a separate meta (`-B bootstrap -D dir`): writes the bootstrap
/// and `<dir>/<sha256 of the meta>`; the layer itself is the data blob, id = its sha256.
pub(crate) fn create_targz_ref(
    opts: &CreateOptions,
    progress: &dyn Progress,
) -> Result<CreateOutput> {
    if opts.blob_inline_meta {
        return create_converter_blob(opts, progress);
    }
    let t0 = Instant::now();
    let dir = opts.blob_dir.clone().ok_or_else(|| {
        Error::InvalidOption("targz-ref writes its meta blob into --blob-dir (-D)".into())
    })?;
    let s = scan(opts, progress)?;
    let features = BlobFeatures::ALIGNED
        | BlobFeatures::CHUNK_INFO_V2
        | s.cut.meta.kind()
        | BlobFeatures::SEPARATE
        | BlobFeatures::CAP_TAR_TOC;
    let meta = encode_meta(&s.cut.meta, features)?;
    let meta_digest: [u8; 32] = Sha256::digest(&meta.bytes).into();
    let refs = BlobRefs {
        meta_digest,
        meta_size: meta.bytes.len() as u64,
        ..BlobRefs::default()
    };
    let blobs = if s.cut.chunks.is_empty() {
        Vec::new()
    } else {
        vec![ref_blob(&s, features, &meta, refs)]
    };
    let bytes = v6::encode(
        &s.tree,
        &s.cut.chunks,
        &blobs,
        &encode_options(opts, &s.tree),
    )?;
    let path = bootstrap_path(opts.bootstrap.as_deref(), Some(&dir), &bytes)?;
    let mut outputs = Outputs::new();
    outputs.add(
        write_temp(&path, &bytes, opts.tmp_dir.as_deref())?,
        path.clone(),
    );
    if !blobs.is_empty() {
        let meta_path = dir.join(hex::encode(meta_digest));
        outputs.add(
            write_temp(&meta_path, &meta.bytes, opts.tmp_dir.as_deref())?,
            meta_path,
        );
    }
    let ids = blobs.iter().map(|b| b.id.clone()).collect();
    let out = report(&s, path.display().to_string(), ids, t0);
    crate::ops::create::publish_output(out, opts, outputs)
}

/// `create -t targz-ref --blob-inline-meta --features blob-toc --blob F`, nydus-snapshotter's
/// OCIRef call: F holds the meta, the chunk digests and the bootstrap, framed and listed in a
/// ToC (formats/blob.md §11); its bootstrap records no meta digest (the runtime takes F's own
/// name), the layer's sha256 stays the blob id.
fn create_converter_blob(opts: &CreateOptions, progress: &dyn Progress) -> Result<CreateOutput> {
    let t0 = Instant::now();
    if !opts.blob_toc {
        return Err(Error::InvalidOption(
            "targz-ref with --blob-inline-meta is written as the converter does: add --features blob-toc".into(),
        ));
    }
    let blob_path = opts.blob.clone().ok_or_else(|| {
        Error::InvalidOption("targz-ref with --blob-inline-meta writes --blob FILE".into())
    })?;
    let s = scan(opts, progress)?;
    let features = BlobFeatures::ALIGNED
        | BlobFeatures::INLINED_FS_META
        | BlobFeatures::CHUNK_INFO_V2
        | s.cut.meta.kind()
        | BlobFeatures::SEPARATE
        | BlobFeatures::INLINED_CHUNK_DIGEST
        | BlobFeatures::HAS_TAR_HEADER
        | BlobFeatures::HAS_TOC
        | BlobFeatures::CAP_TAR_TOC;
    let meta = encode_meta(&s.cut.meta, features)?;
    let blobs = if s.cut.chunks.is_empty() {
        Vec::new()
    } else {
        vec![ref_blob(&s, features, &meta, BlobRefs::default())]
    };
    let boot = v6::encode(
        &s.tree,
        &s.cut.chunks,
        &blobs,
        &encode_options(opts, &s.tree),
    )?;
    let digests: Vec<[u8; 32]> = s.cut.chunks.iter().map(|c| c.digest).collect();
    let bytes = crate::blob::zran::converter_blob(&meta, &digests, &boot)?;
    let mut outputs = Outputs::new();
    outputs.add(
        write_temp(&blob_path, &bytes, opts.tmp_dir.as_deref())?,
        blob_path.clone(),
    );
    if let Some(b) = &opts.bootstrap {
        outputs.add(write_temp(b, &boot, opts.tmp_dir.as_deref())?, b.clone());
    }
    let ids = blobs.iter().map(|b| b.id.clone()).collect();
    let name = opts.bootstrap.as_ref().map(|b| b.display().to_string());
    let mut out = report(&s, name.unwrap_or_default(), ids, t0);
    out.blob_path = Some(blob_path);
    crate::ops::create::publish_output(out, opts, outputs)
}
