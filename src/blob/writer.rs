//! The blob writer: one ordered writer appends chunks, then the blob meta, and optionally an
//! inlined bootstrap; it hashes everything it writes for the blob id (formats/blob.md §6) and
//! can mirror the chunks into blob cache files (formats/blob.md §7).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;
use zerocopy::{FromZeros, IntoBytes};

use crate::codec::cipher::BlobKey;
use crate::codec::{Compressor, Digester};
use crate::error::{write_error, Error, IoContext, Result};
use crate::format::blob::{
    self as format, BatchContext, BlobFeatures, BlobMetaHeader, ChunkInfoV1, ChunkInfoV2, TocEntry,
};
use crate::io::staged::{is_stream, temp_in, Outputs, Staged};
use crate::model::{BlobEntry, ChunkInfo};

/// The largest chunk index a v6 chunk index can address (24 bits, one value reserved).
pub const MAX_CHUNKS_PER_BLOB: usize = 0xFF_FFFF;
/// Uncompressed chunk offsets are aligned to this in v6 blobs.
pub const CHUNK_ALIGN: u64 = 4096;
const IO_BUF: usize = 1 << 20;

/// How to write a blob.
#[derive(Debug, Clone)]
pub struct BlobWriterOptions {
    /// Chunk compression.
    pub compressor: Compressor,
    /// Chunk digests.
    pub digester: Digester,
    /// Frame sections with tar headers and append the bootstrap (`--blob-inline-meta`).
    pub inline_meta: bool,
    /// With `inline_meta`: also the chunk digests, a zstd bootstrap and a ToC, as upstream's
    /// `--features blob-toc` (formats/blob.md §9).
    pub toc: bool,
    /// Index this blob gets in the bootstrap's blob table.
    pub blob_index: u32,
    /// Write the blob file (false: only hash it, for blob-cache-only builds).
    pub write_blob: bool,
    /// Also write `<id>.blob.data` and `<id>.blob.meta` into this directory.
    pub cache_dir: Option<PathBuf>,
    /// RAFS v6 layout: 4 KiB-aligned uncompressed offsets and a blob meta. False for v5
    /// (chunk data only).
    pub v6: bool,
    /// Align uncompressed offsets to 4 KiB in a v5 blob (`--aligned-chunk`).
    pub aligned: bool,
    /// Write the temporary files here instead of beside their outputs (`create --tmp-dir`).
    pub tmp_dir: Option<PathBuf>,
    /// The blob's final name when it is known up front (`--blob`): a stream there (a FIFO the
    /// client reads) is written in place, in order, instead of through a temporary file.
    pub blob_path: Option<PathBuf>,
    /// Where the blob's bytes will start inside a larger file (`create --blob-offset`): the
    /// offsets recorded for chunks and the blob meta count from there.
    pub blob_offset: u64,
    /// `--batch-size`: small chunks (see [`is_batched`]) are packed into batches of under this
    /// many bytes, each compressed as one frame (formats/blob.md §3.4). v6 only.
    pub batch_size: Option<u32>,
    /// `--encrypt`: every stored piece is encrypted with this key (formats/blob.md §10). v6
    /// only.
    pub cipher: Option<BlobKey>,
}

/// Whether a chunk of `len` bytes goes into a batch under `--batch-size batch`: only the one
/// chunk of a file, and only under half a batch (upstream's rule, formats/blob.md §3.4).
pub fn is_batched(batch: Option<u32>, len: u32, only_chunk: bool) -> bool {
    batch.is_some_and(|b| only_chunk && len < b / 2)
}

/// How a chunk's chunk-info record places it (formats/blob.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CiPlace {
    /// Stored on its own, where its [`ChunkInfo`] says.
    Alone,
    /// Inside a batch.
    Batched(BatchPlace),
}

/// Where a batch member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchPlace {
    /// Blob offset of the batch's stored frame.
    frame_offset: u64,
    /// Index of the batch context.
    index: u32,
    /// Offset of the member inside the uncompressed batch.
    offset: u32,
}

/// A finished blob: its blob-table entry and what is only the writer's to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenBlob {
    /// The blob-table entry. Its `compressed_size` is the file size, or with an inlined
    /// bootstrap the offset where the bootstrap starts; its id is empty until
    /// [`BlobWriter::finish`].
    pub entry: BlobEntry,
    /// Size of the whole blob file.
    pub file_size: u64,
}

/// Temporary output files of a blob, renamed into place by [`BlobFiles::persist`].
#[derive(Debug)]
pub struct BlobFiles {
    blob: Option<Staged>,
    cache_data: Option<NamedTempFile>,
    cache_meta: Option<NamedTempFile>,
    cache_dir: Option<PathBuf>,
}

impl BlobFiles {
    /// Adds the blob (as `blob_path`, if it was written) and the cache files (as
    /// `<cache_dir>/<id>.blob.data|meta`) to the outputs to commit.
    pub fn add_to(self, outputs: &mut Outputs, blob_path: Option<&Path>, id: &str) {
        if let (Some(tmp), Some(path)) = (self.blob, blob_path) {
            outputs.add(tmp, path.to_path_buf());
        }
        if let Some(dir) = &self.cache_dir {
            if let Some(tmp) = self.cache_data {
                outputs.add(tmp, dir.join(format!("{id}.blob.data")));
            }
            if let Some(tmp) = self.cache_meta {
                outputs.add(tmp, dir.join(format!("{id}.blob.meta")));
            }
        }
    }
}

/// Writes one data blob.
pub struct BlobWriter {
    opts: BlobWriterOptions,
    out: Option<(Staged, BufWriter<File>)>,
    cache: Option<(NamedTempFile, BufWriter<File>, u64)>,
    hasher: Sha256,
    pos: u64,
    uncompressed_end: u64,
    chunks: Vec<ChunkInfo>,
    written: Option<WrittenBlob>,
    cache_meta: Option<NamedTempFile>,
    bootstrap_start: Option<u64>,
    /// ToC entries of the sections written so far (`toc` blobs only).
    toc: Vec<TocEntry>,
    /// What errors name as the blob being written (its final path or directory).
    label: PathBuf,
    cache_label: PathBuf,
    /// Per chunk, in chunk-index order: how its chunk-info record places it.
    places: Vec<CiPlace>,
    /// The members of the batch being gathered, uncompressed and unpadded.
    batch: Vec<u8>,
    /// One context per batch written.
    batch_contexts: Vec<BatchContext>,
}

impl BlobWriter {
    /// Starts a blob whose temporary files go to `blob_dir` (and the cache directory).
    pub fn new(opts: BlobWriterOptions, blob_dir: &Path) -> Result<BlobWriter> {
        let out = if opts.write_blob {
            let staged = match &opts.blob_path {
                Some(path) if is_stream(path) => Staged::create(path, None)?,
                _ => Staged::Temp(temp_in(opts.tmp_dir.as_deref().unwrap_or(blob_dir))?),
            };
            let file = staged.writer()?;
            Some((staged, BufWriter::with_capacity(IO_BUF, file)))
        } else {
            None
        };
        let cache = match &opts.cache_dir {
            Some(dir) => {
                let tmp = temp_in(opts.tmp_dir.as_deref().unwrap_or(dir))?;
                let file = tmp.reopen().ctx("open", tmp.path())?;
                Some((tmp, BufWriter::with_capacity(IO_BUF, file), 0))
            }
            None => None,
        };
        let cache_label = opts
            .cache_dir
            .as_ref()
            .map(|d| d.join("<blob id>.blob.data"))
            .unwrap_or_default();
        let blob_offset = opts.blob_offset;
        Ok(BlobWriter {
            label: blob_dir.join("<blob id>"),
            cache_label,
            opts,
            out,
            cache,
            hasher: Sha256::new(),
            pos: blob_offset,
            uncompressed_end: 0,
            chunks: Vec::new(),
            written: None,
            cache_meta: None,
            bootstrap_start: None,
            toc: Vec::new(),
            places: Vec::new(),
            batch: Vec::new(),
            batch_contexts: Vec::new(),
        })
    }

    /// Whether the bytes this writer stores differ from the chunks' stored bytes (batches,
    /// encryption): then it hashes them itself and [`BlobWriter::add_chunk_unhashed`] is not
    /// available.
    pub fn hashes_itself(&self) -> bool {
        self.opts.batch_size.is_some() || self.opts.cipher.is_some()
    }

    /// Names the blob in errors (default: `<blob dir>/<blob id>`).
    pub fn set_label(&mut self, path: &Path) {
        self.label = path.to_path_buf();
    }

    /// The chunks written so far, in chunk-index order (the chunk pipeline's tests read them).
    #[cfg(test)]
    pub fn chunks(&self) -> &[ChunkInfo] {
        &self.chunks
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.emit_unhashed(bytes)
    }

    fn emit_unhashed(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some((_, w)) = &mut self.out {
            if let Err(e) = w.write_all(bytes) {
                let needed = (w.buffer().len() + bytes.len()) as u64;
                return Err(write_error(e, &self.label, Some(needed)));
            }
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Appends a new chunk: `stored` holds its compressed bytes, or is `None` to store `raw`.
    pub fn add_chunk(
        &mut self,
        digest: [u8; 32],
        crc32: u32,
        raw: &[u8],
        stored: Option<&[u8]>,
    ) -> Result<ChunkInfo> {
        self.flush_batch()?;
        let mut info = self.next_chunk(digest, crc32, raw)?;
        let bytes = stored.unwrap_or(raw);
        info.compressed = stored.is_some();
        info.compressed_offset = self.pos;
        match self.opts.cipher {
            None => {
                self.emit(bytes)?;
                info.compressed_size = bytes.len() as u32;
            }
            Some(key) => {
                let sealed = encrypt(&key, bytes, &self.label)?;
                self.emit(&sealed)?;
                info.compressed_size = sealed.len() as u32;
            }
        }
        self.push_chunk(info, raw, CiPlace::Alone)
    }

    /// Takes the blob-id hasher, so that chunk bytes can be hashed on another thread while
    /// they are written with [`BlobWriter::add_chunk_unhashed`].
    pub fn take_hasher(&mut self) -> Sha256 {
        std::mem::take(&mut self.hasher)
    }

    /// Gives back the hasher taken with [`BlobWriter::take_hasher`], fed with every chunk's
    /// stored bytes in order.
    pub fn restore_hasher(&mut self, hasher: Sha256) {
        self.hasher = hasher;
    }

    /// [`BlobWriter::add_chunk`] without hashing: the caller feeds the stored bytes (`stored`,
    /// or `raw`) to the hasher it took, in the same order. Not for a writer that
    /// [`BlobWriter::hashes_itself`].
    pub fn add_chunk_unhashed(
        &mut self,
        digest: [u8; 32],
        crc32: u32,
        raw: &[u8],
        stored: Option<&[u8]>,
    ) -> Result<ChunkInfo> {
        if self.hashes_itself() {
            return Err(Error::Internal(
                "a batched or encrypted blob hashes what it writes itself".into(),
            ));
        }
        let mut info = self.next_chunk(digest, crc32, raw)?;
        let bytes = stored.unwrap_or(raw);
        info.compressed = stored.is_some();
        info.compressed_offset = self.pos;
        info.compressed_size = bytes.len() as u32;
        self.emit_unhashed(bytes)?;
        self.push_chunk(info, raw, CiPlace::Alone)
    }

    /// Appends a chunk to the batch being gathered (`--batch-size`, for chunks that
    /// [`is_batched`]), writing the batch out first when the chunk would fill it. As upstream,
    /// the bootstrap records a member without a place of its own (offset and size 0, not
    /// compressed): only the chunk-info record locates it (formats/blob.md §3.4).
    pub fn add_batched_chunk(
        &mut self,
        digest: [u8; 32],
        crc32: u32,
        raw: &[u8],
    ) -> Result<ChunkInfo> {
        let Some(limit) = self.opts.batch_size else {
            return Err(Error::Internal("batched chunk without --batch-size".into()));
        };
        if !self.batch.is_empty() && self.batch.len() + raw.len() >= limit as usize {
            self.flush_batch()?;
        }
        let mut info = self.next_chunk(digest, crc32, raw)?;
        info.compressed_offset = 0;
        info.compressed_size = 0;
        let place = BatchPlace {
            frame_offset: self.pos,
            index: self.batch_contexts.len() as u32,
            offset: self.batch.len() as u32,
        };
        self.batch.extend_from_slice(raw);
        self.push_chunk(info, raw, CiPlace::Batched(place))
    }

    /// Writes out the batch being gathered, compressed as one frame (stored raw when that does
    /// not shrink it) and encrypted in an encrypted blob, and records its context.
    fn flush_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let raw = std::mem::take(&mut self.batch);
        let mut packed = Vec::new();
        let mut stored = if self.opts.compressor.compress_into(&raw, &mut packed)? {
            packed
        } else {
            raw.clone()
        };
        if let Some(key) = self.opts.cipher {
            if stored.len() < BLOCK_OF_AES {
                // upstream's reader takes a batch as compressed when its stored size differs
                // from its size, and encryption pads a piece under one AES block to 18 bytes:
                // such a batch is stored compressed, whatever that costs, to stay readable
                if let Some(frame) = self.opts.compressor.compress_whole(&raw)? {
                    stored = frame;
                }
            }
            stored = encrypt(&key, &stored, &self.label)?;
        }
        self.emit(&stored)?;
        self.batch_contexts.push(BatchContext {
            compressed_size: (stored.len() as u32).into(),
            uncompressed_batch_size: (raw.len() as u32).into(),
            reserved: [0; 32],
        });
        self.batch = raw;
        self.batch.clear();
        Ok(())
    }

    /// A new chunk of `raw`'s bytes: its index and uncompressed offset assigned, its stored
    /// place still to fill in.
    fn next_chunk(&mut self, digest: [u8; 32], crc32: u32, raw: &[u8]) -> Result<ChunkInfo> {
        if self.chunks.len() >= MAX_CHUNKS_PER_BLOB {
            return Err(Error::Limit(format!(
                "a blob holds at most {MAX_CHUNKS_PER_BLOB} chunks; use a larger --chunk-size"
            )));
        }
        Ok(ChunkInfo {
            digest,
            crc32,
            has_crc32: true,
            encrypted: self.opts.cipher.is_some(),
            blob_index: self.opts.blob_index,
            index: self.chunks.len() as u32,
            compressed: false,
            compressed_offset: 0,
            compressed_size: 0,
            uncompressed_offset: self.uncompressed_end,
            uncompressed_size: raw.len() as u32,
        })
    }

    /// Records chunk `info` (its bytes `raw` mirrored into the blob cache) and moves the
    /// uncompressed end past it.
    fn push_chunk(&mut self, info: ChunkInfo, raw: &[u8], place: CiPlace) -> Result<ChunkInfo> {
        crate::io::failpoint::reached("chunk");
        self.uncompressed_end += if self.opts.v6 || self.opts.aligned {
            (raw.len() as u64).div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN
        } else {
            raw.len() as u64
        };
        if let Some((_, w, cache_pos)) = &mut self.cache {
            let gap = info.uncompressed_offset - *cache_pos;
            if let Err(e) = write_zeros(w, gap).and_then(|_| w.write_all(raw)) {
                let needed = w.buffer().len() as u64 + gap + raw.len() as u64;
                return Err(write_error(e, &self.cache_label, Some(needed)));
            }
            *cache_pos = info.uncompressed_offset + raw.len() as u64;
        }
        self.chunks.push(info);
        self.places.push(place);
        Ok(info)
    }

    /// Writes the blob meta after the last chunk. Returns what the blob table needs; with
    /// inlined meta the id is not final until [`BlobWriter::finish`].
    /// Returns `None` for a blob without chunks (no blob is recorded then).
    pub fn finish_data(&mut self) -> Result<Option<WrittenBlob>> {
        self.flush_batch()?;
        if self.chunks.is_empty() {
            return Ok(None);
        }
        let mut feature_bits = BlobFeatures::CAP_TAR_TOC;
        // the ToC is v6 only (create refuses it for v5)
        let toc = self.opts.inline_meta && self.opts.toc;
        if toc {
            feature_bits |= BlobFeatures::HAS_TOC | BlobFeatures::INLINED_CHUNK_DIGEST;
        }
        if self.opts.inline_meta {
            // the data framed by its `image.blob` header, in v5 too, as upstream frames it
            feature_bits |= BlobFeatures::INLINED_FS_META | BlobFeatures::HAS_TAR_HEADER;
            self.frame_chunk_data(toc)?;
        }
        if !self.opts.v6 {
            // a v5 blob has no blob meta (formats/blob.md §1)
            let mut entry = self.entry();
            entry.features = feature_bits;
            return Ok(Some(self.record(entry)));
        }
        feature_bits |= BlobFeatures::ALIGNED | self.ci_features();
        let ci = self.chunk_info_data();
        let mut compressed = Vec::new();
        let (ci_compressor, stored) = if self.opts.compressor.compress_into(&ci, &mut compressed)? {
            (self.opts.compressor.code(), compressed)
        } else {
            (Compressor::None.code(), ci.clone())
        };
        let stored = match &self.opts.cipher {
            Some(key) => encrypt(key, &stored, &self.label)?,
            None => stored,
        };
        let ci_offset = self.pos;
        let records = self.chunks.len() * self.ci_record_size();
        let table = (ci.len() - records) as u64;
        let header = BlobMetaHeader {
            magic: format::BLOB_META_MAGIC.into(),
            features: feature_bits.bits().into(),
            ci_compressor: ci_compressor.into(),
            ci_entries: (self.chunks.len() as u32).into(),
            ci_offset: ci_offset.into(),
            ci_compressed_size: (stored.len() as u64).into(),
            ci_uncompressed_size: (ci.len() as u64).into(),
            // batch blobs reuse the zran fields for their context table (formats/blob.md §3.4)
            ci_zran_offset: (if self.opts.batch_size.is_some() {
                records as u64
            } else {
                0
            })
            .into(),
            ci_zran_size: table.into(),
            ci_zran_count: (self.batch_contexts.len() as u32).into(),
            reserved: [0; 4032],
            magic2: format::BLOB_META_MAGIC.into(),
        };
        let stored_len = stored.len() as u64;
        self.emit(&stored)?;
        let header_stored = match &self.opts.cipher {
            Some(key) => encrypt(key, header.as_bytes(), &self.label)?,
            None => header.as_bytes().to_vec(),
        };
        self.emit(&header_stored)?;
        if self.opts.inline_meta {
            self.emit(&tar_header(
                "blob.meta",
                stored_len + header_stored.len() as u64,
            ))?;
        }
        if toc {
            let ci_place = Place {
                offset: ci_offset,
                stored: stored_len,
                size: ci.len() as u64,
            };
            self.add_meta_toc_entries(&ci, ci_compressor, ci_place, &header);
            self.append_chunk_digests()?;
        }
        self.write_cache_meta(&ci, &header)?;
        let entry = BlobEntry {
            features: feature_bits,
            ci_compressor,
            ci_offset,
            ci_compressed_size: stored_len,
            ci_uncompressed_size: ci.len() as u64,
            cipher: self.opts.cipher,
            ..self.entry()
        };
        Ok(Some(self.record(entry)))
    }

    /// Blob features the chunk-info records need: v2 records for batches and encryption.
    fn ci_features(&self) -> BlobFeatures {
        let mut bits = BlobFeatures::NONE;
        if self.opts.batch_size.is_some() {
            bits |= BlobFeatures::CHUNK_INFO_V2 | BlobFeatures::BATCH;
        }
        if self.opts.cipher.is_some() {
            bits |= BlobFeatures::CHUNK_INFO_V2 | BlobFeatures::ENCRYPTED;
        }
        bits
    }

    fn ci_record_size(&self) -> usize {
        if self.ci_features().contains(BlobFeatures::CHUNK_INFO_V2) {
            format::CHUNK_INFO_V2_SIZE
        } else {
            format::CHUNK_INFO_V1_SIZE
        }
    }

    /// The uncompressed chunk-info data: one record per chunk, then the batch context table.
    fn chunk_info_data(&self) -> Vec<u8> {
        let v2 = self.ci_features().contains(BlobFeatures::CHUNK_INFO_V2);
        let mut ci = Vec::with_capacity(self.chunks.len() * self.ci_record_size());
        for (c, place) in self.chunks.iter().zip(&self.places) {
            if v2 {
                ci.extend_from_slice(encode_chunk_info_v2(c, *place).as_bytes());
            } else {
                ci.extend_from_slice(encode_chunk_info_v1(c).as_bytes());
            }
        }
        for ctx in &self.batch_contexts {
            ci.extend_from_slice(ctx.as_bytes());
        }
        ci
    }

    /// The entry of the chunks written so far, without features or chunk-info array.
    fn entry(&self) -> BlobEntry {
        BlobEntry {
            chunk_count: self.chunks.len() as u32,
            compressed_size: self.pos,
            uncompressed_size: self.uncompressed_end,
            ..BlobEntry::new(String::new(), self.opts.compressor, self.opts.digester)
        }
    }

    /// Keeps `entry` as the blob's, for [`BlobWriter::finish`] to complete.
    fn record(&mut self, entry: BlobEntry) -> WrittenBlob {
        let written = WrittenBlob {
            entry,
            file_size: self.pos,
        };
        self.written = Some(written.clone());
        written
    }

    /// Frames the chunk data with its `image.blob` header; in a ToC blob also its ToC entry.
    fn frame_chunk_data(&mut self, toc: bool) -> Result<()> {
        let size = self.pos;
        self.emit(&tar_header("image.blob", size))?;
        if toc {
            // as upstream: the digest covers the data and its tar header, and the uncompressed
            // size is that of the chunk data (formats/blob.md §9)
            let digest = self.hasher.clone().finalize().into();
            let place = Place {
                offset: 0,
                stored: size,
                size: self.uncompressed_end,
            };
            self.toc.push(toc_entry("image.blob", None, digest, place));
        }
        Ok(())
    }

    /// The ToC entries of the ci array (`blob.meta`) and of the blob-meta header.
    fn add_meta_toc_entries(
        &mut self,
        ci: &[u8],
        ci_compressor: u32,
        ci_place: Place,
        header: &BlobMetaHeader,
    ) {
        let compressor = Compressor::from_code(ci_compressor).unwrap_or(Compressor::None);
        let ci_digest = Sha256::digest(ci).into();
        let entry = toc_entry("blob.meta", Some(compressor), ci_digest, ci_place);
        self.toc.push(entry);
        let header_digest = Sha256::digest(header.as_bytes()).into();
        let size = format::BLOB_META_HEADER_SIZE as u64;
        let place = Place {
            offset: ci_place.offset + ci_place.stored,
            stored: size,
            size,
        };
        let entry = toc_entry("blob.meta.header", None, header_digest, place);
        self.toc.push(entry);
    }

    /// Writes `<id>.blob.meta` for the blob cache: the raw ci array, padding, the header.
    fn write_cache_meta(&mut self, ci: &[u8], header: &BlobMetaHeader) -> Result<()> {
        let Some(dir) = self.opts.cache_dir.clone() else {
            return Ok(());
        };
        let mut tmp = temp_in(self.opts.tmp_dir.as_deref().unwrap_or(&dir))?;
        let padded = (ci.len() as u64).div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN;
        let f = tmp.as_file_mut();
        let total = padded + header.as_bytes().len() as u64;
        f.write_all(ci)
            .and_then(|_| write_zeros(f, padded - ci.len() as u64))
            .and_then(|_| f.write_all(header.as_bytes()))
            .map_err(|e| {
                let written = f.metadata().map(|m| m.len()).unwrap_or(0);
                write_error(
                    e,
                    &dir.join("<blob id>.blob.meta"),
                    Some(total.saturating_sub(written)),
                )
            })?;
        self.cache_meta = Some(tmp);
        Ok(())
    }

    /// Appends the chunk digests, in chunk-index order, and their `blob.digest` header.
    fn append_chunk_digests(&mut self) -> Result<()> {
        let digests: Vec<u8> = self.chunks.iter().flat_map(|c| c.digest).collect();
        let (offset, len) = (self.pos, digests.len() as u64);
        self.emit(&digests)?;
        self.emit(&tar_header("blob.digest", len))?;
        let digest = Sha256::digest(&digests).into();
        let place = Place {
            offset,
            stored: len,
            size: len,
        };
        self.toc.push(toc_entry("blob.digest", None, digest, place));
        Ok(())
    }

    /// Appends an inlined bootstrap and its `image.boot` tar header (formats/blob.md §5); in a
    /// ToC blob zstd-compressed, then the ToC and its `rafs.blob.toc` header (§9).
    pub fn append_bootstrap(&mut self, bootstrap: &[u8]) -> Result<()> {
        self.bootstrap_start = Some(self.pos);
        if !self.opts.toc {
            self.emit(bootstrap)?;
            return self.emit(&tar_header(format::BOOT_SECTION, bootstrap.len() as u64));
        }
        let mut stored = Vec::new();
        let compressor = if Compressor::Zstd.compress_into(bootstrap, &mut stored)? {
            Compressor::Zstd
        } else {
            stored = bootstrap.to_vec();
            Compressor::None
        };
        let offset = self.pos;
        self.emit(&stored)?;
        self.emit(&tar_header(format::BOOT_SECTION, stored.len() as u64))?;
        let digest = Sha256::digest(bootstrap).into();
        let place = Place {
            offset,
            stored: stored.len() as u64,
            size: bootstrap.len() as u64,
        };
        let entry = toc_entry(format::BOOT_SECTION, Some(compressor), digest, place);
        self.toc.push(entry);
        let toc: Vec<u8> = self
            .toc
            .iter()
            .flat_map(|e| e.as_bytes().to_vec())
            .collect();
        self.emit(&toc)?;
        self.emit(&tar_header(format::TOC_SECTION, toc.len() as u64))
    }

    /// Flushes everything. Returns the finished blob (`None` when the blob has no chunks), the
    /// id of the bytes written (the file name of an inline-meta blob even without chunks) and
    /// the temporary files to persist.
    pub fn finish(mut self) -> Result<(Option<WrittenBlob>, String, BlobFiles)> {
        let id = hex::encode(self.hasher.finalize_reset());
        let blob = match self.out.take() {
            Some((tmp, mut w)) => {
                if let Err(e) = w.flush() {
                    let needed = w.buffer().len() as u64;
                    return Err(write_error(e, &self.label, Some(needed)));
                }
                Some(tmp)
            }
            None => None,
        };
        // a blob without chunks is not recorded in the bootstrap: no cache files for it
        let cache = if self.written.is_some() {
            self.cache.take()
        } else {
            None
        };
        let cache_data = match cache {
            Some((tmp, mut w, cache_pos)) => {
                let gap = self.uncompressed_end - cache_pos;
                if let Err(e) = write_zeros(&mut w, gap).and_then(|_| w.flush()) {
                    let needed = w.buffer().len() as u64 + gap;
                    return Err(write_error(e, &self.cache_label, Some(needed)));
                }
                Some(tmp)
            }
            None => None,
        };
        let written = self.written.take().map(|mut w| {
            w.entry.id = id.clone();
            w.file_size = self.pos - self.opts.blob_offset;
            w
        });
        let files = BlobFiles {
            blob,
            cache_data,
            cache_meta: self.cache_meta.take(),
            cache_dir: self.opts.cache_dir.clone(),
        };
        Ok((written, id, files))
    }
}

fn write_zeros(w: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Where a section lies, for its ToC entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    /// Offset of the stored section.
    pub(crate) offset: u64,
    /// Stored size.
    pub(crate) stored: u64,
    /// Uncompressed size.
    pub(crate) size: u64,
}

/// A ToC entry: `compressor` `None` writes the "none" flag (formats/blob.md §9).
pub(crate) fn toc_entry(
    name: &str,
    compressor: Option<Compressor>,
    digest: [u8; 32],
    place: Place,
) -> TocEntry {
    let flags = match compressor {
        Some(Compressor::Zstd) => format::TOC_FLAG_ZSTD,
        Some(Compressor::Lz4Block) => format::TOC_FLAG_LZ4_BLOCK,
        // sections are never gzip (only targz-ref chunk data is, and it is not in the blob)
        Some(Compressor::None | Compressor::Gzip) | None => format::TOC_FLAG_NONE,
    };
    let mut e = TocEntry::new_zeroed();
    e.flags = flags.into();
    e.name[..name.len()].copy_from_slice(name.as_bytes());
    e.uncompressed_digest = digest;
    e.compressed_offset = place.offset.into();
    e.compressed_size = place.stored.into();
    e.uncompressed_size = place.size.into();
    e
}

/// AES block size: encryption pads a piece shorter than this (formats/blob.md §10).
const BLOCK_OF_AES: usize = 16;

/// One piece encrypted with `key`; an error names the blob being written.
fn encrypt(key: &BlobKey, plain: &[u8], label: &Path) -> Result<Vec<u8>> {
    key.encrypt(plain).map_err(|e| Error::Unsupported {
        path: label.to_path_buf(),
        reason: format!("cannot encrypt: {e}"),
    })
}

/// Packs a chunk into a v2 chunk-info record (formats/blob.md §3.3): its own place, or its
/// place in a batch.
fn encode_chunk_info_v2(c: &ChunkInfo, place: CiPlace) -> ChunkInfoV2 {
    use format::ci_v2_flags as f;
    let mut flags = if c.encrypted { f::ENCRYPTED } else { 0 };
    let (offset, size, data) = match place {
        CiPlace::Alone => {
            flags |= f::HAS_CRC32 | if c.compressed { f::COMPRESSED } else { 0 };
            (c.compressed_offset, c.compressed_size, u64::from(c.crc32))
        }
        // a member carries no crc32: the data word holds its batch position instead
        CiPlace::Batched(b) => {
            flags |= f::COMPRESSED | f::BATCH;
            (
                b.frame_offset,
                0,
                u64::from(b.index) << 32 | u64::from(b.offset),
            )
        }
    };
    let uncomp = (c.uncompressed_offset >> 12) & 0xFFFF_FFFF
        | (u64::from(c.uncompressed_size.saturating_sub(1)) & 0xFF_FFFF) << 32
        | u64::from(flags) << 56;
    let comp = (offset & 0xFF_FFFF_FFFF) | u64::from(size) << 40;
    ChunkInfoV2 {
        uncomp_info: uncomp.into(),
        comp_info: comp.into(),
        data: data.into(),
    }
}

/// Packs a chunk into a v1 chunk-info record (formats/blob.md §3.2).
pub fn encode_chunk_info_v1(c: &ChunkInfo) -> ChunkInfoV1 {
    let usize_m1 = u64::from(c.uncompressed_size.saturating_sub(1));
    let csize_m1 = u64::from(c.compressed_size.saturating_sub(1));
    let uncomp = ((usize_m1 >> 20) & 0xf) << 8
        | (c.uncompressed_offset & 0xFFF_FFFF_F000)
        | (usize_m1 & 0xF_FFFF) << 44;
    let comp = (c.compressed_offset & 0xFF_FFFF_FFFF)
        | ((csize_m1 >> 20) & 0xf) << 40
        | (csize_m1 & 0xF_FFFF) << 44;
    ChunkInfoV1 {
        uncomp_info: uncomp.into(),
        comp_info: comp.into(),
    }
}

/// A GNU tar header placed after a framed section (formats/blob.md §4): name, size, mtime 0,
/// the crate's own checksum (seven digits and a NUL), as upstream writes it.
pub fn tar_header(name: &str, size: u64) -> [u8; format::TAR_HEADER_SIZE] {
    let mut h = ::tar::Header::new_gnu();
    crate::format::tar::set_name(&mut h, name.as_bytes());
    h.set_size(size);
    h.set_mtime(0);
    h.set_entry_type(::tar::EntryType::Regular);
    h.set_cksum();
    *h.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_record_of_a_five_byte_chunk() {
        let c = ChunkInfo {
            digest: [0; 32],
            crc32: 0,
            has_crc32: true,
            encrypted: false,
            blob_index: 0,
            index: 0,
            compressed: false,
            compressed_offset: 0,
            compressed_size: 5,
            uncompressed_offset: 0,
            uncompressed_size: 5,
        };
        let r = encode_chunk_info_v1(&c);
        assert_eq!(
            r.as_bytes(),
            &[0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0][..]
        );
    }

    #[test]
    fn tar_header_matches_gnu_layout() {
        use crate::format::tar::{field, raw};
        let h = tar_header("blob.meta", 4112);
        assert_eq!(crate::format::tar::cstr(raw(&h, field::NAME)), b"blob.meta");
        assert_eq!(raw(&h, field::SIZE), b"00000010020\0");
        assert_eq!(raw(&h, field::MTIME), b"00000000000\0");
        assert_eq!(raw(&h, field::MODE), &[0; 8]);
        assert_eq!(raw(&h, field::MAGIC), b"ustar  \0");
        assert_eq!(h[field::TYPEFLAG], b'0');
        crate::format::tar::checksum_ok(&h).unwrap();
        // upstream's form: seven digits and a NUL
        let sum: u32 = h
            .iter()
            .enumerate()
            .map(|(i, b)| match i {
                148..=155 => 32,
                _ => u32::from(*b),
            })
            .sum();
        assert_eq!(raw(&h, field::CHKSUM), format!("{sum:07o}\0").as_bytes());
    }
}
