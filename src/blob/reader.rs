//! Reading chunk data back: locates blobs (a blob directory, a single blob file, or the blob
//! cache's `.blob.data`), decodes chunk-info arrays, decompresses and verifies chunks.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use zerocopy::{FromBytes, IntoBytes};

use crate::codec::Compressor;
use crate::error::{in_file, Error, IoContext, Result};
use crate::format::blob::{
    BatchContext, BlobFeatures, BlobMetaHeader, ChunkInfoV1, BATCH_CONTEXT_SIZE,
    BLOB_META_HEADER_SIZE, BLOB_META_MAGIC,
};
use crate::io::bytes::corrupt;
use crate::model::{BlobEntry, Image};
use crate::model::{ChunkId, ChunkInfo};

/// Where blobs are looked up.
#[derive(Debug, Clone, Default)]
pub struct BlobSource {
    /// A directory holding blobs named by id (or `<id>.blob.data` cache files).
    pub dir: Option<PathBuf>,
    /// One blob file, used for every blob of the image (single-blob images).
    pub file: Option<PathBuf>,
    /// The file holding the blob meta of a zran blob whose bootstrap records no meta digest
    /// (a converter `targz-ref` blob, formats/blob.md §11): the blob itself, or the blob the
    /// bootstrap's file name names.
    pub zran_meta: Option<PathBuf>,
}

enum Opened {
    /// The blob file: chunks at their compressed offsets.
    Blob(File, PathBuf),
    /// A blob cache `.blob.data`: chunks uncompressed at their uncompressed offsets.
    CacheData(File, PathBuf),
}

/// The location of one chunk in its blob, from the blob's own chunk-info array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CiEntry {
    /// Offset of the stored bytes.
    pub compressed_offset: u64,
    /// Stored size.
    pub compressed_size: u32,
    /// Offset in the uncompressed view.
    pub uncompressed_offset: u64,
    /// Uncompressed size.
    pub uncompressed_size: u32,
    /// Stored compressed.
    pub compressed: bool,
    /// Set when the chunk lives inside a batch: then `compressed_offset` is where the batch
    /// starts and `compressed_size` is 0 (formats/blob.md §3.3).
    pub batch: Option<BatchSlot>,
}

/// Where a chunk sits inside a batch chunk (formats/blob.md §3.3, §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSlot {
    /// Index of the batch context.
    pub index: u32,
    /// Offset of the chunk's bytes in the uncompressed batch.
    pub offset: u32,
    /// Stored size of the whole batch (from its context; 0 until resolved).
    pub stored_size: u32,
    /// Uncompressed size of the whole batch (from its context; 0 until resolved).
    pub batch_size: u32,
}

/// v2 chunk-info flag: the chunk lives inside a batch (formats/blob.md §3.3).
const CI_V2_FLAG_BATCH: u64 = 0x04;

/// Decodes a v1 chunk-info record (formats/blob.md §3.2).
pub fn decode_ci_v1(r: &ChunkInfoV1) -> CiEntry {
    let u = r.uncomp_info.get();
    let c = r.comp_info.get();
    let usize_ = ((((u >> 8) & 0xf) << 20) | (u >> 44)) + 1;
    let csize = ((((c >> 40) & 0xf) << 20) | (c >> 44)) + 1;
    CiEntry {
        compressed_offset: c & 0xFF_FFFF_FFFF,
        compressed_size: csize as u32,
        uncompressed_offset: u & 0xFFF_FFFF_F000,
        uncompressed_size: usize_ as u32,
        compressed: csize != usize_,
        batch: None,
    }
}

/// Decodes a v2 chunk-info record (formats/blob.md §3.3).
pub fn decode_ci_v2(raw: &[u8]) -> CiEntry {
    let word = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let u = word(0);
    let c = word(1);
    let data = word(2);
    let batch = ((u >> 56) & CI_V2_FLAG_BATCH != 0).then_some(BatchSlot {
        index: (data >> 32) as u32,
        offset: data as u32,
        stored_size: 0,
        batch_size: 0,
    });
    CiEntry {
        compressed_offset: c & 0xFF_FFFF_FFFF,
        compressed_size: (c >> 40) as u32,
        uncompressed_offset: (u & 0xFFFF_FFFF) << 12,
        uncompressed_size: (((u >> 32) & 0xFF_FFFF) + 1) as u32,
        compressed: (u >> 56) & 0x1 != 0,
        batch,
    }
}

/// Reads chunks of one image's blobs.
pub struct ChunkReader<'a> {
    image: &'a Image,
    source: BlobSource,
    open: HashMap<u32, Opened>,
    ci: HashMap<u32, Vec<CiEntry>>,
    /// The last batch decompressed, keyed by blob index and batch index: the chunks of a
    /// batch are read one after another, so one entry saves re-decompressing it per chunk.
    last_batch: Option<(BatchKey, Vec<u8>)>,
    zran: HashMap<u32, crate::blob::zran::ZranBlob>,
}

/// Blob index and batch index of a decompressed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchKey {
    blob: u32,
    batch: u32,
}

impl<'a> ChunkReader<'a> {
    /// A reader over `image`'s blobs found through `source`.
    pub fn new(image: &'a Image, source: BlobSource) -> ChunkReader<'a> {
        ChunkReader {
            image,
            source,
            open: HashMap::new(),
            ci: HashMap::new(),
            last_batch: None,
            zran: HashMap::new(),
        }
    }

    fn blob(&self, index: u32) -> Result<&'a BlobEntry> {
        self.image.blobs.get(index as usize).ok_or_else(|| {
            corrupt(
                "chunk",
                u64::from(index),
                "blob index outside the blob table",
            )
        })
    }

    fn open(&mut self, index: u32) -> Result<&Opened> {
        if !self.open.contains_key(&index) {
            let blob = self.blob(index)?;
            let opened = self.find(blob)?;
            self.open.insert(index, opened);
        }
        self.open
            .get(&index)
            .ok_or_else(|| Error::InvalidOption("blob vanished".into()))
    }

    fn find(&self, blob: &BlobEntry) -> Result<Opened> {
        if let Some(f) = &self.source.file {
            not_a_directory(f)?;
            return Ok(Opened::Blob(File::open(f).ctx("open blob", f)?, f.clone()));
        }
        if let Some(dir) = &self.source.dir {
            let p = dir.join(&blob.id);
            if p.is_dir() && !dir.join(format!("{}.blob.data", blob.id)).is_file() {
                not_a_directory(&p)?;
            }
            if p.is_file() {
                return Ok(Opened::Blob(File::open(&p).ctx("open blob", &p)?, p));
            }
            let c = dir.join(format!("{}.blob.data", blob.id));
            if c.is_file() {
                return Ok(Opened::CacheData(
                    File::open(&c).ctx("open blob cache", &c)?,
                    c,
                ));
            }
            return Err(Error::Io {
                op: "find blob",
                path: p,
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        Err(Error::InvalidOption(
            "no blob directory or blob file given".into(),
        ))
    }

    /// The chunk-info array of a v6 blob, read from the blob file (empty for v5 blobs).
    pub(crate) fn ci_entries(&mut self, index: u32) -> Result<&[CiEntry]> {
        if !self.ci.contains_key(&index) {
            let blob = self.blob(index)?;
            let entries =
                if self.image.version == 6 && blob.ci_uncompressed_size > 0 && !blob.is_tarfs() {
                    match self.open(index)? {
                        Opened::Blob(f, p) if holds_blob_meta(f, p, blob)? => read_ci(f, p, blob)?,
                        // a blob cut down to its data section, as nydus-snapshotter's converter
                        // hands `image.blob` to `unpack` (formats/blob.md §6): the bootstrap's
                        // chunk table locates the chunks, and their digests are still checked
                        Opened::Blob(..) | Opened::CacheData(..) => Vec::new(),
                    }
                } else {
                    Vec::new()
                };
            self.ci.insert(index, entries);
        }
        Ok(self.ci.get(&index).map(Vec::as_slice).unwrap_or(&[]))
    }

    /// The uncompressed bytes of chunk `id`, checked against its digest when known. An error
    /// inside the blob (a short blob, bytes that do not decompress or do not match their
    /// digest: the blob of another image) names the blob file.
    pub fn read(&mut self, id: ChunkId) -> Result<Vec<u8>> {
        crate::io::failpoint::reached("read");
        self.read_chunk(id).map_err(|e| self.name_blob(id, e))
    }

    /// `e`, naming the file of chunk `id`'s blob when it is open.
    fn name_blob(&self, id: ChunkId, e: Error) -> Error {
        let blob = self.image.chunks.get(id.index()).map(|c| c.blob_index);
        match blob.and_then(|b| self.open.get(&b)) {
            Some(Opened::Blob(_, p) | Opened::CacheData(_, p)) => in_file(p, e),
            None => e,
        }
    }

    fn read_chunk(&mut self, id: ChunkId) -> Result<Vec<u8>> {
        let c: ChunkInfo = *self
            .image
            .chunks
            .get(id.index())
            .ok_or_else(|| corrupt("chunk", u64::from(id.get()), "no such chunk"))?;
        let blob = self.blob(c.blob_index)?;
        // a reference to an OCI layer (zran over a .tar.gz, or a plain tar): its meta is a
        // file of its own and its data the layer (formats/blob.md §11)
        if blob.features.contains(BlobFeatures::SEPARATE) {
            let data = self.zran_blob(c.blob_index)?.read(c.index)?;
            return self.verified(id, &c, data, c.compressed_offset);
        }
        let ci = self
            .ci_entries(c.blob_index)?
            .get(c.index as usize)
            .copied();
        let loc = ci.unwrap_or(CiEntry {
            compressed_offset: c.compressed_offset,
            compressed_size: c.compressed_size,
            uncompressed_offset: c.uncompressed_offset,
            uncompressed_size: c.uncompressed_size,
            compressed: c.compressed,
            batch: None,
        });
        if loc.uncompressed_size > crate::format::blob::MAX_CHUNK_SIZE
            || loc.compressed_size > crate::format::blob::MAX_CHUNK_SIZE * 2
        {
            return Err(corrupt(
                "chunk",
                u64::from(c.index),
                "chunk larger than 16 MiB",
            ));
        }
        let tarfs = blob.is_tarfs();
        let data = match (self.open(c.blob_index)?, loc.batch) {
            (Opened::Blob(..), Some(slot)) => self.read_batched(c, loc, slot)?,
            (Opened::Blob(f, p), None) => {
                let mut buf = vec![0u8; loc.compressed_size as usize];
                read_exact_at(f, p, &mut buf, loc.compressed_offset)?;
                let buf = decrypt_chunk(blob, buf, loc.compressed_offset, c.index)?;
                if loc.compressed && !tarfs {
                    let piece = Piece {
                        what: "chunk data",
                        offset: loc.compressed_offset,
                        name: format!("{} chunk {}", blob.id, c.index),
                    };
                    inflate(blob, &buf, loc.uncompressed_size, piece)?
                } else {
                    buf
                }
            }
            (Opened::CacheData(f, p), _) => {
                let mut buf = vec![0u8; loc.uncompressed_size as usize];
                read_exact_at(f, p, &mut buf, loc.uncompressed_offset)?;
                buf
            }
        };
        self.verified(id, &c, data, loc.compressed_offset)
    }

    /// `data` if it matches chunk `id`'s digest (when known).
    fn verified(&self, id: ChunkId, c: &ChunkInfo, data: Vec<u8>, offset: u64) -> Result<Vec<u8>> {
        let blob = self.blob(c.blob_index)?;
        if self
            .image
            .digest_known
            .get(id.index())
            .copied()
            .unwrap_or(false)
            && blob.digester.digest(&data) != c.digest
        {
            return Err(Error::Corrupt {
                what: "chunk data",
                offset,
                reason: format!("digest mismatch for chunk {} of blob {}", c.index, blob.id),
            });
        }
        Ok(data)
    }

    /// The zran blob `index`: its meta decoded and its gzip layer opened, once.
    pub(crate) fn zran_blob(&mut self, index: u32) -> Result<&mut crate::blob::zran::ZranBlob> {
        if !self.zran.contains_key(&index) {
            let blob = self.blob(index)?;
            let z = crate::blob::zran::ZranBlob::open(blob, &self.source)?;
            self.zran.insert(index, z);
        }
        self.zran
            .get_mut(&index)
            .ok_or_else(|| Error::InvalidOption("blob vanished".into()))
    }
}

impl ChunkReader<'_> {
    /// The bytes of chunk `c`, which `loc` places at `slot` of a batch: the whole batch is
    /// read and decompressed (once for consecutive chunks of one batch), then sliced.
    fn read_batched(&mut self, c: ChunkInfo, loc: CiEntry, slot: BatchSlot) -> Result<Vec<u8>> {
        let key = BatchKey {
            blob: c.blob_index,
            batch: slot.index,
        };
        if self.last_batch.as_ref().map(|(k, _)| *k) != Some(key) {
            let blob = self.blob(c.blob_index)?;
            let mut buf = vec![0u8; slot.stored_size as usize];
            if let Opened::Blob(f, p) = self.open(c.blob_index)? {
                read_exact_at(f, p, &mut buf, loc.compressed_offset)?;
            }
            let buf = decrypt_chunk(blob, buf, loc.compressed_offset, c.index)?;
            // a batch that did not compress is stored raw (formats/blob.md §3.4); once
            // decrypted, a raw batch is exactly as long as the batch
            let raw = if buf.len() != slot.batch_size as usize {
                let piece = Piece {
                    what: "batch chunk data",
                    offset: loc.compressed_offset,
                    name: format!("{} batch {}", blob.id, slot.index),
                };
                inflate(blob, &buf, slot.batch_size, piece)?
            } else {
                buf
            };
            self.last_batch = Some((key, raw));
        }
        let batch = self.last_batch.as_ref().map_or(&[][..], |(_, b)| b);
        let start = slot.offset as usize;
        batch
            .get(start..start + loc.uncompressed_size as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                corrupt(
                    "chunk",
                    u64::from(c.index),
                    "chunk reaches past the end of its batch",
                )
            })
    }
}

/// Reads `buf.len()` bytes of the blob `path` at `offset`: a blob that ends first (a blob of
/// another image, a truncated one) is corrupt at that offset, not a bare "failed to fill
/// whole buffer".
fn read_exact_at(f: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    match f.read_exact_at(buf, offset) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(corrupt(
            "chunk data",
            offset,
            &format!("{} bytes needed, the blob ends before them", buf.len()),
        )),
        other => other.ctx("read chunk from", path),
    }
}

/// Refuses a directory given where a blob file is expected, with EISDIR as the cause (opening
/// it would succeed and only the first read would fail, without the blob's name).
fn not_a_directory(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::Io {
            op: "open blob",
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::EISDIR),
        });
    }
    Ok(())
}

/// A stored piece of a blob (a chunk or a batch), as errors name it.
struct Piece {
    what: &'static str,
    offset: u64,
    name: String,
}

/// Decompresses `stored` (the piece `piece` of `blob`) into exactly `size` bytes.
fn inflate(blob: &BlobEntry, stored: &[u8], size: u32, piece: Piece) -> Result<Vec<u8>> {
    blob.compressor
        .decompress(stored, size as usize)
        .map_err(|e| Error::Corrupt {
            what: piece.what,
            offset: piece.offset,
            reason: format!("{}: {e}", piece.name),
        })
}

/// An ENCRYPTED blob whose blob-table entry holds no key (`cipher_algo` 0).
const NO_KEY: &str = "the blob is encrypted but the bootstrap holds no key for it";

/// The stored bytes of chunk `index` (or of the batch holding it) in the clear: decrypted when
/// the blob is encrypted (formats/blob.md §10). XTS cannot tell a wrong key or damaged bytes;
/// the decompression and the digest check after this catch them.
pub fn decrypt_chunk(
    blob: &BlobEntry,
    stored: Vec<u8>,
    offset: u64,
    index: u32,
) -> Result<Vec<u8>> {
    match &blob.cipher {
        None if blob.features.contains(BlobFeatures::ENCRYPTED) => Err(Error::Corrupt {
            what: "chunk data",
            offset,
            reason: format!("{} chunk {index}: {NO_KEY}", blob.id),
        }),
        None => Ok(stored),
        Some(key) => key.decrypt(&stored).map_err(|e| Error::Corrupt {
            what: "chunk data",
            offset,
            reason: format!("{} chunk {index}: cannot decrypt: {e}", blob.id),
        }),
    }
}

/// Whether the blob file reaches into its blob meta, or is only the data section before it.
/// (A file that stops inside the blob meta is read, and reported, as a truncated blob.)
fn holds_blob_meta(f: &File, path: &Path, blob: &BlobEntry) -> Result<bool> {
    Ok(f.metadata().ctx("stat", path)?.len() > blob.ci_offset)
}

/// Largest chunk-info array accepted: 24 bytes (a v2 record) for each chunk a blob can hold.
pub const MAX_CI_SIZE: u64 =
    (24 + BATCH_CONTEXT_SIZE as u64) * crate::blob::writer::MAX_CHUNKS_PER_BLOB as u64;

/// A blob's meta as the blob stores it: the (possibly compressed) chunk-info array and the
/// 4 KiB header after it.
struct StoredMeta {
    ci: Vec<u8>,
    header: Vec<u8>,
}

/// Reads the stored blob meta at the place the blob table gives, after checking its sizes
/// against the blob table and the file.
fn read_stored_meta(f: &File, path: &Path, blob: &BlobEntry) -> Result<StoredMeta> {
    check_ci_sizes(blob)?;
    let hdr_at = blob.ci_offset.saturating_add(blob.ci_compressed_size);
    if hdr_at.saturating_add(BLOB_META_HEADER_SIZE as u64) > f.metadata().ctx("stat", path)?.len() {
        return Err(corrupt(
            "blob meta",
            hdr_at,
            &format!("{} ends before the blob meta header", path.display()),
        ));
    }
    let mut ci = vec![0u8; blob.ci_compressed_size as usize];
    f.read_exact_at(&mut ci, blob.ci_offset)
        .ctx("read chunk-info array of", path)?;
    let mut header = vec![0u8; BLOB_META_HEADER_SIZE];
    f.read_exact_at(&mut header, blob.ci_offset + blob.ci_compressed_size)
        .ctx("read blob meta header of", path)?;
    Ok(StoredMeta { ci, header })
}

/// The blob meta of the file at `path` (a data blob, or a targz-ref meta blob), checked
/// against the blob table, in the clear: the chunk-info data uncompressed and the header
/// (formats/blob.md §3, §10).
pub(crate) fn read_plain_meta(path: &Path, blob: &BlobEntry) -> Result<(Vec<u8>, BlobMetaHeader)> {
    let f = File::open(path).ctx("open blob meta", path)?;
    let m = read_stored_meta(&f, path, blob)?;
    open_blob_meta(m.ci, &m.header, blob).map(|p| (p.ci, p.header))
}

fn read_ci(f: &File, path: &Path, blob: &BlobEntry) -> Result<Vec<CiEntry>> {
    let m = read_stored_meta(f, path, blob)?;
    decode_blob_meta(m.ci, &m.header, blob)
}

/// The `<id>.blob.meta` file a blob cache holds (formats/blob.md §7), rebuilt from the data
/// blob at `path`: the chunk-info array uncompressed, zeros up to a 4 KiB boundary, then the
/// blob meta header (checked against the blob table first). nydus-snapshotter's converter
/// ships the same bytes in a v6 image's bootstrap layer, as `image/<blob id>.blob.meta`.
pub fn cache_meta_file(path: &Path, blob: &BlobEntry) -> Result<Vec<u8>> {
    let f = File::open(path).ctx("open", path)?;
    let m = read_stored_meta(&f, path, blob)?;
    let plain = open_blob_meta(m.ci, &m.header, blob)?;
    let mut out = plain.ci;
    out.resize(out.len().div_ceil(4096) * 4096, 0);
    out.extend_from_slice(plain.header.as_bytes());
    Ok(out)
}

/// Rejects chunk-info sizes no blob of this tool or upstream's can have, before anything is
/// allocated from them.
fn check_ci_sizes(blob: &BlobEntry) -> Result<()> {
    let records = u64::from(blob.chunk_count).min(crate::blob::writer::MAX_CHUNKS_PER_BLOB as u64);
    // a v2 record per chunk, and at most one 40-byte batch context per chunk, or for a zran
    // meta one inflate context and its window per chunk (formats/blob.md §11)
    let per_chunk = if blob.features.contains(BlobFeatures::ZRAN) {
        24 + (crate::format::zran::ZRAN_CONTEXT_SIZE + crate::format::zran::ZRAN_WINDOW_SIZE) as u64
    } else {
        24 + BATCH_CONTEXT_SIZE as u64
    };
    let max_ci = if blob.features.contains(BlobFeatures::ZRAN) {
        MAX_CI_SIZE * per_chunk / 24
    } else {
        MAX_CI_SIZE
    };
    if blob.ci_compressed_size > max_ci
        || blob.ci_uncompressed_size > max_ci
        || blob.ci_uncompressed_size > per_chunk * records + 4096
    {
        return Err(corrupt(
            "blob meta",
            blob.ci_offset,
            &format!(
                "chunk-info array of {} bytes ({} stored) is too large for {} chunks",
                blob.ci_uncompressed_size, blob.ci_compressed_size, blob.chunk_count
            ),
        ));
    }
    Ok(())
}

/// Decodes a blob meta from memory: `stored` is the (possibly compressed) chunk-info array and
/// `header` the 4 KiB blob meta header that follows it; `blob` is what the bootstrap says about
/// them. Pure: no I/O (the fuzz target drives this).
pub fn decode_blob_meta(stored: Vec<u8>, header: &[u8], blob: &BlobEntry) -> Result<Vec<CiEntry>> {
    let plain = open_blob_meta(stored, header, blob)?;
    let raw = plain.ci;
    let v2 = blob.features.contains(BlobFeatures::CHUNK_INFO_V2);
    let mut entries = decode_ci_array(&raw, blob.chunk_count, v2);
    if entries.iter().any(|e| e.batch.is_some()) {
        let hdr_at = blob.ci_offset.saturating_add(blob.ci_compressed_size);
        let contexts = batch_contexts(&raw, &plain.header, hdr_at)?;
        for e in &mut entries {
            if let Some(slot) = &mut e.batch {
                let member = BatchMember {
                    size: e.uncompressed_size,
                    encrypted: blob.cipher.is_some(),
                };
                resolve_batch(slot, member, &contexts, hdr_at)?;
            }
        }
    }
    Ok(entries)
}

/// A blob meta in the clear: the chunk-info data uncompressed (records, then any batch
/// table) and the header.
struct PlainMeta {
    ci: Vec<u8>,
    header: BlobMetaHeader,
}

/// Checks a stored blob meta against the blob table, decrypts it when the blob is encrypted
/// (formats/blob.md §10) and returns its chunk-info data uncompressed with its header.
fn open_blob_meta(stored: Vec<u8>, header: &[u8], blob: &BlobEntry) -> Result<PlainMeta> {
    check_ci_sizes(blob)?;
    if stored.len() as u64 != blob.ci_compressed_size {
        return Err(corrupt(
            "blob meta",
            blob.ci_offset,
            &format!(
                "{} bytes of chunk-info array, the blob table says {}",
                stored.len(),
                blob.ci_compressed_size
            ),
        ));
    }
    let hdr_at = blob.ci_offset.saturating_add(blob.ci_compressed_size);
    let (stored, header) = match &blob.cipher {
        None if blob.features.contains(BlobFeatures::ENCRYPTED) => {
            return Err(corrupt("blob meta", blob.ci_offset, NO_KEY))
        }
        None => (stored, header.to_vec()),
        Some(key) => {
            let decrypt = |bytes: &[u8], what: &'static str, at: u64| {
                key.decrypt(bytes)
                    .map_err(|e| corrupt(what, at, &format!("cannot decrypt: {e}")))
            };
            (
                decrypt(&stored, "chunk-info array", blob.ci_offset)?,
                decrypt(header, "blob meta header", hdr_at)?,
            )
        }
    };
    let h = BlobMetaHeader::read_from_bytes(&header)
        .map_err(|_| corrupt("blob meta header", hdr_at, "bad size"))?;
    if h.magic.get() != BLOB_META_MAGIC || h.magic2.get() != BLOB_META_MAGIC {
        let why = if blob.cipher.is_some() {
            "bad magic (wrong key?)"
        } else {
            "bad magic"
        };
        return Err(corrupt("blob meta header", hdr_at, why));
    }
    if h.ci_offset.get() != blob.ci_offset || h.ci_compressed_size.get() != blob.ci_compressed_size
    {
        return Err(corrupt(
            "blob meta header",
            hdr_at,
            "does not match the blob table",
        ));
    }
    let algo = Compressor::from_code(blob.ci_compressor).ok_or_else(|| {
        corrupt(
            "blob meta header",
            blob.ci_offset,
            "unknown chunk-info compression",
        )
    })?;
    let ci = if algo == Compressor::None {
        stored
    } else {
        algo.decompress(&stored, blob.ci_uncompressed_size as usize)
            .map_err(|e| corrupt("chunk-info array", blob.ci_offset, &e.to_string()))?
    };
    Ok(PlainMeta { ci, header: h })
}

/// The batch context table of a BATCH blob, found in the uncompressed chunk-info data by the
/// header's zran fields, which batch blobs reuse (formats/blob.md §3.1, §3.4).
fn batch_contexts(raw: &[u8], h: &BlobMetaHeader, hdr_at: u64) -> Result<Vec<BatchContext>> {
    let start = h.ci_zran_offset.get();
    let count = u64::from(h.ci_zran_count.get());
    let end = count
        .checked_mul(BATCH_CONTEXT_SIZE as u64)
        .and_then(|n| n.checked_add(start))
        .filter(|end| *end <= raw.len() as u64)
        .ok_or_else(|| {
            corrupt(
                "blob meta header",
                hdr_at,
                "batch context table outside the chunk-info data",
            )
        })?;
    Ok(raw[start as usize..end as usize]
        .chunks_exact(BATCH_CONTEXT_SIZE)
        .filter_map(|r| BatchContext::read_from_bytes(r).ok())
        .collect())
}

/// A batch member as its blob describes it.
#[derive(Debug, Clone, Copy)]
struct BatchMember {
    /// The member chunk's own size.
    size: u32,
    /// The blob is encrypted.
    encrypted: bool,
}

/// Fills in a batch member's batch sizes from its context, refusing what upstream's reader
/// refuses: an unknown context, a batch stored larger than itself, a member past its end.
fn resolve_batch(
    slot: &mut BatchSlot,
    member: BatchMember,
    contexts: &[BatchContext],
    hdr_at: u64,
) -> Result<()> {
    let size = member.size;
    let ctx = contexts.get(slot.index as usize).ok_or_else(|| {
        corrupt(
            "chunk-info array",
            hdr_at,
            &format!("batch index {} outside the batch table", slot.index),
        )
    })?;
    let (stored, whole) = (ctx.compressed_size.get(), ctx.uncompressed_batch_size.get());
    // only encryption stores a piece larger than itself: one under an AES block takes 18 bytes
    let most = if member.encrypted {
        whole.max(18)
    } else {
        whole
    };
    if stored > most
        || whole > crate::format::blob::MAX_CHUNK_SIZE
        || u64::from(slot.offset) + u64::from(size) > u64::from(whole)
    {
        return Err(corrupt(
            "chunk-info array",
            hdr_at,
            &format!("batch {} context does not hold its chunks", slot.index),
        ));
    }
    slot.stored_size = stored;
    slot.batch_size = whole;
    Ok(())
}

/// Decodes up to `chunk_count` records of a raw (uncompressed) chunk-info array, v1 (16-byte)
/// or v2 (24-byte) records; a trailing partial record is ignored.
pub fn decode_ci_array(raw: &[u8], chunk_count: u32, v2: bool) -> Vec<CiEntry> {
    let size = if v2 { 24 } else { 16 };
    let n = (chunk_count as usize).min(raw.len() / size);
    raw.chunks_exact(size)
        .take(n)
        .map(|r| {
            if v2 {
                decode_ci_v2(r)
            } else {
                ChunkInfoV1::ref_from_bytes(r)
                    .map(decode_ci_v1)
                    .unwrap_or(CiEntry {
                        compressed_offset: 0,
                        compressed_size: 0,
                        uncompressed_offset: 0,
                        uncompressed_size: 0,
                        compressed: false,
                        batch: None,
                    })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::writer::encode_chunk_info_v1;

    fn blob(chunk_count: u32, ci_compressed_size: u64, ci_uncompressed_size: u64) -> BlobEntry {
        BlobEntry {
            chunk_count,
            ci_compressed_size,
            ci_uncompressed_size,
            ci_compressor: Compressor::Zstd.code(),
            ..BlobEntry::new("b".into(), Compressor::Zstd, crate::codec::Digester::Blake3)
        }
    }

    #[test]
    fn chunk_info_sizes_are_checked_before_allocating() {
        // a bootstrap claiming 4 G chunks and a 96 GiB array: refused, nothing allocated
        let err = decode_blob_meta(Vec::new(), &[0; 4096], &blob(u32::MAX, 0, 96 << 30))
            .unwrap_err()
            .to_string();
        assert!(err.contains("too large"), "{err}");
        // more than 24 bytes a chunk
        let err = decode_blob_meta(Vec::new(), &[0; 4096], &blob(10, 0, 1 << 20))
            .unwrap_err()
            .to_string();
        assert!(err.contains("for 10 chunks"), "{err}");
        // the stored size must be what the blob table says
        let err = decode_blob_meta(vec![0; 5], &[0; 4096], &blob(10, 6, 160))
            .unwrap_err()
            .to_string();
        assert!(err.contains("blob table says 6"), "{err}");
    }

    #[test]
    fn ci_array_stops_at_the_chunk_count_and_whole_records() {
        assert_eq!(decode_ci_array(&[0; 16 * 3 + 5], 10, false).len(), 3);
        assert_eq!(decode_ci_array(&[0; 16 * 3], 2, false).len(), 2);
        assert_eq!(decode_ci_array(&[0; 24 * 2 + 23], 10, true).len(), 2);
    }

    /// A v2 record of a batch member: flags compressed | batch, data = index << 32 | offset.
    fn batch_record(uncompressed_offset: u64, size: u32, index: u32, offset: u32) -> [u8; 24] {
        let mut r = [0u8; 24];
        let u = (uncompressed_offset >> 12) | (u64::from(size - 1) << 32) | (0x05 << 56);
        r[..8].copy_from_slice(&u.to_le_bytes());
        r[16..].copy_from_slice(&((u64::from(index) << 32) | u64::from(offset)).to_le_bytes());
        r
    }

    fn context(stored: u32, whole: u32) -> BatchContext {
        BatchContext {
            compressed_size: stored.into(),
            uncompressed_batch_size: whole.into(),
            reserved: [0; 32],
        }
    }

    #[test]
    fn v2_batch_member_decodes_and_resolves_against_its_context() {
        // upstream's v6-batch: inline-5000 is the third member, at offset 7 of batch 0
        let mut e = decode_ci_v2(&batch_record(8192, 5000, 0, 7));
        assert_eq!((e.uncompressed_offset, e.uncompressed_size), (8192, 5000));
        assert!(e.compressed);
        let slot = e.batch.as_mut().unwrap();
        assert_eq!((slot.index, slot.offset), (0, 7));
        let plain = BatchMember {
            size: 5000,
            encrypted: false,
        };
        resolve_batch(slot, plain, &[context(25, 5007)], 0).unwrap();
        assert_eq!((slot.stored_size, slot.batch_size), (25, 5007));
        // an unknown context, a member past the batch's end, a frame larger than its batch
        let err = |index, offset, ctx| {
            let mut slot = decode_ci_v2(&batch_record(0, 5000, index, offset))
                .batch
                .unwrap();
            resolve_batch(&mut slot, plain, &[ctx], 0)
                .unwrap_err()
                .to_string()
        };
        assert!(err(1, 0, context(25, 5007)).contains("outside the batch table"));
        assert!(err(0, 8, context(25, 5007)).contains("does not hold"));
        assert!(err(0, 0, context(6000, 5007)).contains("does not hold"));
        // encryption pads a batch under one AES block to 18 bytes, and nothing else
        let mut slot = decode_ci_v2(&batch_record(0, 7, 0, 0)).batch.unwrap();
        let tiny = BatchMember {
            size: 7,
            encrypted: true,
        };
        resolve_batch(&mut slot, tiny, &[context(18, 7)], 0).unwrap();
        assert!(resolve_batch(&mut slot, tiny, &[context(19, 7)], 0).is_err());
        let clear = BatchMember {
            encrypted: false,
            ..tiny
        };
        assert!(resolve_batch(&mut slot, clear, &[context(18, 7)], 0).is_err());
    }

    #[test]
    fn batch_table_must_lie_inside_the_ci_data() {
        let mut h = BlobMetaHeader::read_from_bytes(&[0u8; BLOB_META_HEADER_SIZE][..]).unwrap();
        h.ci_zran_offset = 24.into();
        h.ci_zran_count = 1.into();
        let mut raw = vec![0u8; 24 + 40];
        raw[24..28].copy_from_slice(&25u32.to_le_bytes());
        raw[28..32].copy_from_slice(&5007u32.to_le_bytes());
        let got = batch_contexts(&raw, &h, 0).unwrap();
        assert_eq!(got[0].uncompressed_batch_size.get(), 5007);
        h.ci_zran_count = 2.into();
        assert!(batch_contexts(&raw, &h, 0).is_err());
        h.ci_zran_offset = u64::MAX.into();
        assert!(batch_contexts(&raw, &h, 0).is_err());
    }

    #[test]
    fn v1_round_trip() {
        let c = ChunkInfo {
            digest: [0; 32],
            crc32: 0,
            blob_index: 0,
            index: 3,
            compressed: true,
            has_crc32: true,
            encrypted: false,
            compressed_offset: 0x12_3456_789a,
            compressed_size: 0x10_0000,
            uncompressed_offset: 0x7_0000_1000,
            uncompressed_size: 0x100_0000,
        };
        let d = decode_ci_v1(&encode_chunk_info_v1(&c));
        assert_eq!(d.compressed_offset, c.compressed_offset);
        assert_eq!(d.compressed_size, c.compressed_size);
        assert_eq!(d.uncompressed_offset, c.uncompressed_offset);
        assert_eq!(d.uncompressed_size, c.uncompressed_size);
        assert!(d.compressed);
    }
}
