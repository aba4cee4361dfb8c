//! Reading the chunks of a zran (`targz-ref`) blob: the chunk-info records and inflate contexts
//! of its blob meta, and inflating one chunk from its context inside the original gzip layer
//! (formats/blob.md §11).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::blob::reader::BlobSource;
use crate::codec::Compressor;
use crate::error::{Error, IoContext, Result};
use crate::format::blob::BlobFeatures;
use crate::format::blob::{BlobMetaHeader, BLOB_META_HEADER_SIZE, BLOB_META_MAGIC};
use crate::format::zran::{
    ZranContext, CI_V2_FLAG_COMPRESSED, CI_V2_FLAG_HAS_CRC32, CI_V2_FLAG_ZRAN, ZRAN_CONTEXT_SIZE,
    ZRAN_WINDOW_SIZE,
};
use crate::io::bytes::corrupt;
use crate::model::BlobEntry;

/// Largest span one context may cover, compressed or not: upstream cuts contexts at 2 MiB of
/// output (plus the chunk that crosses the cut), and a span never needs more input than a stored
/// deflate stream's overhead on top of that.
const MAX_SPAN: u32 = 64 << 20;

/// One chunk of a zran blob, as its v2 record says (formats/blob.md §3.3, §10).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZranChunk {
    /// Offset in the `.tar.gz` of the compressed bytes inflated while the chunk came out.
    pub compressed_offset: u64,
    /// Their length.
    pub compressed_size: u32,
    /// Offset in the blob's (4 KiB-aligned) uncompressed view.
    pub uncompressed_offset: u64,
    /// Chunk length.
    pub uncompressed_size: u32,
    /// Index of its inflate context.
    pub context: u32,
    /// Offset of the chunk inside the context's decompressed span.
    pub offset: u32,
    /// CRC-32C of a chunk stored in place (tar-ref; zran records hold no crc32).
    pub crc32: u32,
}

/// A zran blob meta, decoded: chunk records, inflate contexts and the dictionary table.
#[derive(Debug, Clone, Default)]
pub struct ZranMeta {
    /// The chunks, by chunk index.
    pub chunks: Vec<ZranChunk>,
    /// The inflate contexts, by index.
    pub contexts: Vec<ZranContext>,
    dicts: Vec<u8>,
    /// The layer is a plain tar (upstream's tar-ref, made of a targz-ref of a tar): its chunks
    /// are stored raw where they lie in it; no contexts.
    pub in_place: bool,
    /// While writing: the windows go to this unnamed temporary file instead of `dicts`, so that
    /// memory does not grow with the layer (32 KiB a context); `encode_meta` streams them back.
    spill: Option<Spill>,
}

/// Windows written out while a layer is read (see [`ZranMeta::spill_windows`]).
#[derive(Debug, Clone)]
struct Spill {
    file: std::sync::Arc<File>,
    len: u64,
}

impl ZranMeta {
    /// Decodes the uncompressed ci area `raw` of a blob with `chunk_count` chunks, laid out as
    /// `header` says (formats/blob.md §11).
    pub fn parse(raw: &[u8], header: &BlobMetaHeader, chunk_count: u32) -> Result<ZranMeta> {
        let at = |off: u64, len: u64, what: &'static str| -> Result<&[u8]> {
            let end = off.checked_add(len).filter(|e| *e <= raw.len() as u64);
            end.map(|e| &raw[off as usize..e as usize]).ok_or_else(|| {
                corrupt(
                    what,
                    off,
                    &format!("{len} bytes needed, the ci area has {}", raw.len()),
                )
            })
        };
        let records = at(0, 24 * u64::from(chunk_count), "zran chunk records")?;
        let in_place = !BlobFeatures(header.features.get()).contains(BlobFeatures::ZRAN);
        let chunks = records
            .chunks_exact(24)
            .enumerate()
            .map(|(i, r)| decode_record(r, i, in_place))
            .collect::<Result<Vec<_>>>()?;
        let count = u64::from(header.ci_zran_count.get());
        let table_len = count * ZRAN_CONTEXT_SIZE as u64;
        let offset = header.ci_zran_offset.get();
        let table = at(offset, table_len, "zran context table")?;
        let contexts: Vec<ZranContext> = table
            .chunks_exact(ZRAN_CONTEXT_SIZE)
            .filter_map(|c| ZranContext::read_from_bytes(c).ok())
            .collect();
        let dict_len = header
            .ci_zran_size
            .get()
            .checked_sub(table_len)
            .ok_or_else(|| {
                corrupt(
                    "zran context table",
                    offset,
                    "ci_zran_size is smaller than the table",
                )
            })?;
        let dicts = at(offset + table_len, dict_len, "zran dictionaries")?.to_vec();
        let meta = ZranMeta {
            chunks,
            contexts,
            dicts,
            in_place,
            spill: None,
        };
        meta.check()?;
        Ok(meta)
    }

    /// Every chunk names an existing context and lies inside its span; every dictionary lies
    /// inside the table and is at most one window.
    fn check(&self) -> Result<()> {
        for (i, c) in self.contexts.iter().enumerate() {
            // the reader inflates a context's whole span into memory: bound it as the compressed
            // side is, before anything is allocated
            if c.out_len.get() > MAX_SPAN {
                return Err(corrupt(
                    "zran context",
                    i as u64,
                    &format!(
                        "spans {} uncompressed bytes, more than {MAX_SPAN}",
                        c.out_len.get()
                    ),
                ));
            }
            let end = c
                .dict_offset
                .get()
                .checked_add(u64::from(c.dict_size.get()));
            if end.is_none_or(|e| e > self.dicts.len() as u64)
                || c.dict_size.get() as usize > ZRAN_WINDOW_SIZE
                || c.in_len.get() > MAX_SPAN
            {
                return Err(corrupt(
                    "zran context",
                    i as u64,
                    "dictionary or span outside the meta",
                ));
            }
        }
        for (i, ch) in self.chunks.iter().enumerate() {
            if self.in_place {
                if ch.compressed_size != ch.uncompressed_size {
                    return Err(corrupt(
                        "tar-ref chunk",
                        i as u64,
                        "stored size differs from its size in a plain tar",
                    ));
                }
                continue;
            }
            let ctx = self.contexts.get(ch.context as usize).ok_or_else(|| {
                corrupt(
                    "zran chunk",
                    i as u64,
                    "names a context the meta does not have",
                )
            })?;
            if u64::from(ch.offset) + u64::from(ch.uncompressed_size) > u64::from(ctx.out_len.get())
            {
                return Err(corrupt(
                    "zran chunk",
                    i as u64,
                    "ends after its context's span",
                ));
            }
        }
        Ok(())
    }

    /// The blob feature of this kind of reference: ZRAN, or none for a plain tar.
    pub fn kind(&self) -> BlobFeatures {
        if self.in_place {
            BlobFeatures::NONE
        } else {
            BlobFeatures::ZRAN
        }
    }

    /// The dictionary of context `ctx`.
    pub fn dict(&self, ctx: &ZranContext) -> &[u8] {
        let start = ctx.dict_offset.get() as usize;
        &self.dicts[start..start + ctx.dict_size.get() as usize]
    }
}

/// Decodes v2 record `i`, which must carry the zran flag, or of a tar-ref blob (`in_place`)
/// must not (formats/blob.md §3.3, §11).
fn decode_record(r: &[u8], i: usize, in_place: bool) -> Result<ZranChunk> {
    let word = |k: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&r[k * 8..k * 8 + 8]);
        u64::from_le_bytes(w)
    };
    let (u, c, data) = (word(0), word(1), word(2));
    let zran = (u >> 56) as u8 & CI_V2_FLAG_ZRAN != 0;
    if zran == in_place {
        let why = if in_place {
            "record of a tar-ref blob has the zran flag"
        } else {
            "record of a zran blob lacks the zran flag"
        };
        return Err(corrupt("zran chunk", i as u64, why));
    }
    if in_place {
        return Ok(ZranChunk {
            compressed_offset: c & 0xFF_FFFF_FFFF,
            compressed_size: (c >> 40) as u32,
            uncompressed_offset: (u & 0xFFFF_FFFF) << 12,
            uncompressed_size: (((u >> 32) & 0xFF_FFFF) + 1) as u32,
            context: 0,
            offset: 0,
            crc32: data as u32,
        });
    }
    Ok(ZranChunk {
        compressed_offset: c & 0xFF_FFFF_FFFF,
        compressed_size: (c >> 40) as u32,
        uncompressed_offset: (u & 0xFFFF_FFFF) << 12,
        uncompressed_size: (((u >> 32) & 0xFF_FFFF) + 1) as u32,
        context: (data >> 32) as u32,
        offset: data as u32,
        crc32: 0,
    })
}

/// Reads and decodes the zran meta of `blob` from `meta`: the stored ci area at `ci_offset`,
/// then the 4096-byte header, checked against the blob table.
pub fn read_meta(path: &Path, blob: &BlobEntry) -> Result<ZranMeta> {
    let (raw, header) = crate::blob::reader::read_plain_meta(path, blob)?;
    ZranMeta::parse(&raw, &header, blob.chunk_count)
}

/// A zran blob opened for reading: its meta decoded, its gzip layer open.
#[derive(Debug)]
pub struct ZranBlob {
    /// The decoded meta.
    pub meta: ZranMeta,
    layer: File,
    layer_path: PathBuf,
    /// The contexts inflated whole most recently, by index, newest last: a context spans many
    /// small chunks, and inflating it again for each would cost its length per chunk. Readers
    /// in tree order (unpack, export) come back to a context after a few others.
    recent: Vec<(u32, Vec<u8>)>,
}

/// Contexts kept inflated by a [`ZranBlob`] (each at most a few MiB).
const RECENT_CONTEXTS: usize = 8;

impl ZranBlob {
    /// Finds and opens `blob`'s meta and layer through `source` (formats/blob.md §11): the meta
    /// is `<dir>/<blob_meta_digest>` when the bootstrap records one, else the converter blob
    /// `source.zran_meta`; the layer is `<dir>/<blob id>` (as nydusd's localfs backend expects),
    /// else a gzip file given as the blob file.
    pub fn open(blob: &BlobEntry, source: &BlobSource) -> Result<ZranBlob> {
        let meta_path = match (blob.refs.meta_id(), &source.dir, &source.zran_meta) {
            (Some(id), Some(dir), _) => dir.join(id),
            (_, _, Some(p)) => p.clone(),
            _ => {
                return Err(Error::InvalidOption(format!(
                    "blob {} is a targz-ref blob: its meta is needed, as -D DIR holding the meta blob, or the converter blob given as the bootstrap",
                    blob.id
                )))
            }
        };
        let meta = read_meta(&meta_path, blob)?;
        let layer_path = layer_path(blob, source)?;
        let layer = File::open(&layer_path).ctx("open gzip layer", &layer_path)?;
        Ok(ZranBlob {
            meta,
            layer,
            layer_path,
            recent: Vec::new(),
        })
    }

    /// The uncompressed bytes of chunk `index`: sliced from its context, inflated whole once
    /// for the chunks after it. A context that does not inflate whole is inflated only up to
    /// the chunk, which reports the damage precisely when it lies before the chunk's end.
    pub fn read(&mut self, index: u32) -> Result<Vec<u8>> {
        let ch = *self
            .meta
            .chunks
            .get(index as usize)
            .ok_or_else(|| corrupt("zran chunk", u64::from(index), "no such chunk"))?;
        if self.meta.in_place {
            let mut out = vec![0u8; ch.compressed_size as usize];
            self.layer
                .read_exact_at(&mut out, ch.compressed_offset)
                .ctx("read tar layer", &self.layer_path)?;
            return Ok(out);
        }
        let (start, end) = (
            ch.offset as usize,
            ch.offset as usize + ch.uncompressed_size as usize,
        );
        if let Some((_, out)) = self
            .recent
            .iter()
            .rev()
            .find(|(c, out)| *c == ch.context && out.len() >= end)
        {
            return Ok(out[start..end].to_vec());
        }
        let whole = self
            .meta
            .contexts
            .get(ch.context as usize)
            .map_or(0, |c| c.out_len.get() as usize);
        if whole >= end {
            if let Ok(out) = read_chunk(&self.layer, &self.layer_path, &self.meta, index, whole) {
                let piece = out[start..end].to_vec();
                if self.recent.len() == RECENT_CONTEXTS {
                    self.recent.remove(0);
                }
                self.recent.push((ch.context, out));
                return Ok(piece);
            }
        }
        let out = read_chunk(&self.layer, &self.layer_path, &self.meta, index, end)?;
        Ok(out[start..end].to_vec())
    }
}

/// The original `.tar.gz` of a zran blob: `<dir>/<blob id>`, or the blob file when it is gzip.
fn layer_path(blob: &BlobEntry, source: &BlobSource) -> Result<PathBuf> {
    if let Some(dir) = &source.dir {
        let p = dir.join(&blob.id);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(f) = &source.file {
        let mut magic = [0u8; 2];
        let is_gzip = File::open(f)
            .and_then(|h| h.read_exact_at(&mut magic, 0))
            .is_ok()
            && magic == [0x1f, 0x8b];
        // a tar-ref blob's data is the plain tar
        if is_gzip || !blob.features.contains(BlobFeatures::ZRAN) {
            return Ok(f.clone());
        }
    }
    Err(Error::InvalidOption(format!(
        "blob {id} is a targz-ref blob: its data is the original .tar.gz, expected as <blob dir>/{id}",
        id = blob.id
    )))
}

/// Inflates the first `want` bytes of chunk `index`'s context, reading the gzip layer `layer`.
/// Only the context's span is read: reading the last chunk of a layer costs what reading the
/// first does.
pub fn read_chunk(
    layer: &File,
    path: &Path,
    meta: &ZranMeta,
    index: u32,
    want: usize,
) -> Result<Vec<u8>> {
    let ch = meta
        .chunks
        .get(index as usize)
        .ok_or_else(|| corrupt("zran chunk", u64::from(index), "no such chunk"))?;
    let ctx = meta.contexts[ch.context as usize];
    let mut input = vec![0u8; ctx.in_len.get() as usize];
    layer
        .read_exact_at(&mut input, ctx.in_offset.get())
        .ctx("read gzip layer", path)?;
    let out = inflate_span(&ctx, meta.dict(&ctx), &input, want).map_err(|e| Error::Corrupt {
        what: "gzip stream",
        offset: ctx.in_offset.get() + e.at,
        reason: format!(
            "chunk {index} (context {} at compressed offset {}): {}",
            ch.context,
            ctx.in_offset.get(),
            e.reason
        ),
    })?;
    Ok(out)
}

/// Why inflating a span failed, and where (relative to the span's start).
#[derive(Debug)]
pub struct InflateError {
    /// Offset in the span's compressed input.
    pub at: u64,
    /// What went wrong.
    pub reason: String,
}

/// Inflates the first `want` bytes of a context's span `input` (formats/blob.md §11): a raw
/// inflate primed with the context's pending bits and preset with its window.
pub fn inflate_span(
    ctx: &ZranContext,
    dict: &[u8],
    input: &[u8],
    want: usize,
) -> std::result::Result<Vec<u8>, InflateError> {
    let fail = |at: usize, reason: String| InflateError {
        at: at as u64,
        reason,
    };
    let mut z = zran::Inflater::new(false);
    let bits = ctx.ctx_bits & 7;
    if bits != 0 {
        z.prime(bits, ctx.ctx_byte >> (8 - bits))
            .map_err(|e| fail(0, format!("cannot prime the inflater: {e}")))?;
    }
    z.set_dictionary(dict)
        .map_err(|e| fail(0, format!("dictionary refused: {e}")))?;
    let mut out = vec![0u8; want];
    let (mut done, mut pos) = (0usize, 0usize);
    while done < want {
        let step = z
            .inflate(&input[pos..], &mut out[done..], false)
            .map_err(|e| fail(pos, format!("corrupt deflate data: {e}")))?;
        pos += step.consumed;
        done += step.produced;
        if step.stream_end && done < want {
            // a gzip member ended inside the span: go on after its trailer and the next
            // member's header
            pos = next_member(input, pos)
                .ok_or_else(|| fail(pos, "no gzip member follows the one that ended".into()))?;
            z.reset(false)
                .map_err(|e| fail(pos, format!("cannot restart the inflater: {e}")))?;
        } else if step.consumed == 0 && step.produced == 0 {
            return Err(fail(
                pos,
                format!("the compressed span ends after {done} of {want} bytes"),
            ));
        }
    }
    Ok(out)
}

/// Where the deflate data of the gzip member after one that ended at `near` starts in `input`:
/// after its 8-byte trailer and the next member's header.
fn next_member(input: &[u8], near: usize) -> Option<usize> {
    let h = input.get(near + 8..)?;
    gzip_header_len(h).map(|len| near + 8 + len)
}

/// Length of the gzip member header at the start of `h` (RFC 1952 §2.3), if it is one.
pub fn gzip_header_len(h: &[u8]) -> Option<usize> {
    if h.len() < 10 || h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
        return None;
    }
    let flags = h[3];
    let mut at = 10usize;
    if flags & 0x04 != 0 {
        let xlen = usize::from(u16::from_le_bytes([*h.get(at)?, *h.get(at + 1)?]));
        at += 2 + xlen;
    }
    for bit in [0x08u8, 0x10] {
        if flags & bit != 0 {
            at += h.get(at..)?.iter().position(|b| *b == 0)? + 1;
        }
    }
    if flags & 0x02 != 0 {
        at += 2;
    }
    (at <= h.len()).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_header_lengths() {
        assert_eq!(
            gzip_header_len(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]),
            Some(10)
        );
        // FNAME "a\0"
        assert_eq!(
            gzip_header_len(&[0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 3, b'a', 0]),
            Some(12)
        );
        assert_eq!(gzip_header_len(&[0x1f, 0x8c, 8, 0, 0, 0, 0, 0, 0, 3]), None);
    }
}

/// Encodes a zran blob meta as upstream's separate meta file holds it (formats/blob.md §11):
/// the ci area (v2 records, inflate contexts, dictionaries) zstd-compressed, then the
/// 4096-byte header. Returns the file's bytes and the entry fields that describe it.
pub fn encode_meta(meta: &ZranMeta, features: BlobFeatures) -> Result<EncodedMeta> {
    let mut raw = Vec::with_capacity(24 * meta.chunks.len() + 40 * meta.contexts.len());
    for c in &meta.chunks {
        // a tar-ref chunk is stored raw, with its crc32, as upstream records one
        let (flags, data) = if meta.in_place {
            (CI_V2_FLAG_HAS_CRC32, u64::from(c.crc32))
        } else {
            (
                CI_V2_FLAG_ZRAN | CI_V2_FLAG_COMPRESSED,
                (u64::from(c.context) << 32) | u64::from(c.offset),
            )
        };
        let flags = u64::from(flags) << 56;
        let u = (c.uncompressed_offset >> 12) | (u64::from(c.uncompressed_size - 1) << 32) | flags;
        let cw = c.compressed_offset | (u64::from(c.compressed_size) << 40);
        for w in [u, cw, data] {
            raw.extend_from_slice(&w.to_le_bytes());
        }
    }
    let zran_offset = raw.len() as u64;
    for c in &meta.contexts {
        raw.extend_from_slice(c.as_bytes());
    }
    let dicts_len = match &meta.spill {
        Some(s) => s.len,
        None => meta.dicts.len() as u64,
    };
    let total = raw.len() as u64 + dicts_len;
    let zran_size = total - zran_offset;
    // upstream always stores the ci area zstd-compressed (tiny areas may grow); the windows
    // stream through from where they were kept
    let (mut stored, ci_digest) = compress_ci_area(&raw, meta.dicts_reader(), total)?;
    let mut h = BlobMetaHeader::new_zeroed();
    h.magic = BLOB_META_MAGIC.into();
    h.magic2 = BLOB_META_MAGIC.into();
    h.features = features.bits().into();
    h.ci_compressor = Compressor::Zstd.code().into();
    h.ci_entries = (meta.chunks.len() as u32).into();
    h.ci_offset = 0.into();
    h.ci_compressed_size = (stored.len() as u64).into();
    h.ci_uncompressed_size = total.into();
    // a tar-ref meta has no context table: upstream leaves these 0
    let zran_offset = if meta.in_place { 0 } else { zran_offset };
    h.ci_zran_offset = zran_offset.into();
    h.ci_zran_size = zran_size.into();
    h.ci_zran_count = (meta.contexts.len() as u32).into();
    let ci_compressed_size = stored.len() as u64;
    stored.extend_from_slice(h.as_bytes());
    Ok(EncodedMeta {
        bytes: stored,
        ci_compressed_size,
        ci_uncompressed_size: total,
        ci_digest,
    })
}

/// zstd of `head` then `rest` (`total` bytes in all) as one frame recording its size, and
/// sha256 of the uncompressed bytes (the ToC digest).
fn compress_ci_area(
    head: &[u8],
    mut rest: impl std::io::Read,
    total: u64,
) -> Result<(Vec<u8>, [u8; 32])> {
    use std::io::Write as _;
    let codec = |e: std::io::Error| Error::Codec {
        algo: "zstd",
        reason: e.to_string(),
    };
    let mut z = zstd::stream::Encoder::new(Vec::new(), crate::codec::compress::ZSTD_LEVEL)
        .map_err(codec)?;
    z.include_contentsize(true).map_err(codec)?;
    z.set_pledged_src_size(Some(total)).map_err(codec)?;
    let mut hash = Sha256::new();
    hash.update(head);
    z.write_all(head).map_err(codec)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = rest.read(&mut buf).map_err(codec)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        z.write_all(&buf[..n]).map_err(codec)?;
    }
    Ok((z.finish().map_err(codec)?, hash.finalize().into()))
}

/// Reads `[at, end)` of a file with positioned reads (the spill file is shared).
struct ReadAt<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl std::io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min((self.end - self.at) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// A zran blob meta file and the blob-table fields that locate its ci area.
#[derive(Debug, Clone)]
pub struct EncodedMeta {
    /// The file: stored ci area, then the header.
    pub bytes: Vec<u8>,
    /// Stored size of the ci area.
    pub ci_compressed_size: u64,
    /// Its uncompressed size.
    pub ci_uncompressed_size: u64,
    /// sha256 of the uncompressed ci area (its ToC entry's digest).
    pub ci_digest: [u8; 32],
}

/// The nydus-snapshotter converter's `blob.rafs` of a targz-ref layer (formats/blob.md §9,
/// §10): `blob.meta` (the meta file's bytes) ← `blob.digest` (chunk digests in chunk order)
/// ← `image.boot` (zstd) ← ToC, each framed by a tar header; no chunk data.
pub fn converter_blob(
    meta: &EncodedMeta,
    digests: &[[u8; 32]],
    bootstrap: &[u8],
) -> Result<Vec<u8>> {
    use crate::blob::writer::{tar_header, toc_entry, Place};
    use crate::format::blob::{BOOT_SECTION, TOC_SECTION};
    let mut out = meta.bytes.clone();
    out.extend_from_slice(&tar_header("blob.meta", out.len() as u64));
    let ci = Place {
        offset: 0,
        stored: meta.ci_compressed_size,
        size: meta.ci_uncompressed_size,
    };
    let header = &meta.bytes[meta.ci_compressed_size as usize..];
    let hplace = Place {
        offset: meta.ci_compressed_size,
        stored: BLOB_META_HEADER_SIZE as u64,
        size: BLOB_META_HEADER_SIZE as u64,
    };
    let mut toc = vec![
        toc_entry("blob.meta", Some(Compressor::Zstd), meta.ci_digest, ci),
        toc_entry(
            "blob.meta.header",
            None,
            Sha256::digest(header).into(),
            hplace,
        ),
    ];
    let flat: Vec<u8> = digests.iter().flatten().copied().collect();
    let len = flat.len() as u64;
    let place = Place {
        offset: out.len() as u64,
        stored: len,
        size: len,
    };
    toc.push(toc_entry(
        "blob.digest",
        None,
        Sha256::digest(&flat).into(),
        place,
    ));
    out.extend_from_slice(&flat);
    out.extend_from_slice(&tar_header("blob.digest", len));
    let mut stored = Vec::new();
    let boot_algo = if Compressor::Zstd.compress_into(bootstrap, &mut stored)? {
        Compressor::Zstd
    } else {
        stored = bootstrap.to_vec();
        Compressor::None
    };
    let place = Place {
        offset: out.len() as u64,
        stored: stored.len() as u64,
        size: bootstrap.len() as u64,
    };
    toc.push(toc_entry(
        BOOT_SECTION,
        Some(boot_algo),
        Sha256::digest(bootstrap).into(),
        place,
    ));
    out.extend_from_slice(&stored);
    out.extend_from_slice(&tar_header(BOOT_SECTION, stored.len() as u64));
    let entries: Vec<u8> = toc.iter().flat_map(|e| e.as_bytes().to_vec()).collect();
    out.extend_from_slice(&entries);
    out.extend_from_slice(&tar_header(TOC_SECTION, entries.len() as u64));
    Ok(out)
}

impl ZranMeta {
    /// Adds an inflate context with its window; returns its index.
    pub fn push_context(&mut self, mut ctx: ZranContext, dict: &[u8]) -> Result<u32> {
        ctx.dict_size = (dict.len() as u32).into();
        match &mut self.spill {
            Some(s) => {
                ctx.dict_offset = s.len.into();
                s.file.write_all_at(dict, s.len).map_err(|e| Error::Io {
                    op: "write inflate windows to a temporary file",
                    path: std::env::temp_dir(),
                    source: e,
                })?;
                s.len += dict.len() as u64;
            }
            None => {
                ctx.dict_offset = (self.dicts.len() as u64).into();
                self.dicts.extend_from_slice(dict);
            }
        }
        self.contexts.push(ctx);
        Ok((self.contexts.len() - 1) as u32)
    }

    /// From now on keeps the windows in an unnamed temporary file (gone when the process
    /// ends, whatever ends it), not in memory.
    pub fn spill_windows(&mut self) -> Result<()> {
        let file = crate::io::staged::scratch_file()?;
        self.spill = Some(Spill {
            file: std::sync::Arc::new(file),
            len: 0,
        });
        Ok(())
    }

    /// The dictionaries in table order: from memory, or streamed from the spill file.
    fn dicts_reader(&self) -> Box<dyn std::io::Read + '_> {
        match &self.spill {
            Some(s) => Box::new(ReadAt {
                file: &s.file,
                at: 0,
                end: s.len,
            }),
            None => Box::new(self.dicts.as_slice()),
        }
    }
}
