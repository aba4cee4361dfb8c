//! Copying chunks of an existing image into a new blob: `optimize` (the prefetched files'
//! chunks first) and `compact` (the chunks still used) rewrite data this one way.

use std::collections::HashMap;
use std::path::Path;

use crate::blob::reader::{BlobSource, ChunkReader};
use crate::blob::writer::{BlobFiles, BlobWriter, BlobWriterOptions};
use crate::codec::{digest::crc32, Compressor};
use crate::error::{Error, Result};
use crate::format::blob::BlobFeatures;
use crate::model::{BlobEntry, ChunkId, ChunkInfo, Image};

/// A new blob being filled with chunks read from an image's blobs.
pub struct ChunkCopier<'a> {
    image: &'a Image,
    reader: ChunkReader<'a>,
    writer: BlobWriter,
    compressor: Compressor,
    /// Chunks already copied, by digest and size: a chunk shared by several files (or several
    /// old blobs) is stored once in the new blob.
    copied: HashMap<([u8; 32], u32), ChunkInfo>,
    scratch: Vec<u8>,
}

/// The finished new blob: its table entry (with its id) and its file, still to be renamed
/// into place as `<dir>/<id>`.
pub struct CopiedBlob {
    /// Blob-table entry, id included.
    pub entry: BlobEntry,
    /// The temporary blob file.
    pub files: BlobFiles,
}

impl<'a> ChunkCopier<'a> {
    /// A new blob that will sit at `blob_index` of the image's blob table, its temporary file
    /// in `dir`. Chunks are stored with the image's compressor (v5 names one for every blob,
    /// formats/rafs-v5.md §2) and laid out as the image's version requires.
    pub fn new(
        image: &'a Image,
        source: BlobSource,
        blob_index: u32,
        dir: &Path,
    ) -> Result<ChunkCopier<'a>> {
        // the new blob would be written in the clear under a superblock that says encrypted
        if let Some(b) = image
            .blobs
            .iter()
            .find(|b| b.features.contains(BlobFeatures::ENCRYPTED))
        {
            return Err(Error::InvalidOption(format!(
                "blob {} is encrypted: rewriting the data of encrypted images is not supported",
                b.id
            )));
        }
        let writer = BlobWriter::new(
            BlobWriterOptions {
                compressor: image.compressor,
                digester: image.digester,
                inline_meta: false,
                toc: false,
                blob_index,
                write_blob: true,
                cache_dir: None,
                v6: image.version == 6,
                aligned: false,
                tmp_dir: None,
                blob_path: None,
                blob_offset: 0,
                // small chunks are stored on their own, whatever the source did
                batch_size: None,
                cipher: None,
            },
            dir,
        )?;
        Ok(ChunkCopier {
            image,
            reader: ChunkReader::new(image, source),
            writer,
            compressor: image.compressor,
            copied: HashMap::new(),
            scratch: Vec::new(),
        })
    }

    /// Copies chunk `id` of the image (once: a second call for the same data returns the
    /// first copy) and returns where it now lives.
    pub fn copy(&mut self, id: ChunkId) -> Result<ChunkInfo> {
        let old = self.image.chunks.get(id.index()).copied();
        let known = self.image.digest_known.get(id.index()).copied();
        if let (Some(c), Some(true)) = (old, known) {
            if let Some(done) = self.copied.get(&(c.digest, c.uncompressed_size)) {
                return Ok(*done);
            }
        }
        let data = self.reader.read(id)?;
        let digest = match (old, known) {
            (Some(c), Some(true)) => c.digest,
            // a v6 chunk found only by its index: its digest is computed from its data
            _ => self.image.digester.digest(&data),
        };
        let key = (digest, data.len() as u32);
        if let Some(done) = self.copied.get(&key) {
            return Ok(*done);
        }
        let compressed = self.compressor.compress_into(&data, &mut self.scratch)?;
        let stored = compressed.then_some(self.scratch.as_slice());
        let info = self.writer.add_chunk(digest, crc32(&data), &data, stored)?;
        self.copied.insert(key, info);
        Ok(info)
    }

    /// How many distinct chunks the new blob holds so far.
    pub fn copied(&self) -> usize {
        self.copied.len()
    }

    /// Writes the blob meta and names the blob by its sha256. `None` when no chunk was copied.
    pub fn finish(mut self) -> Result<Option<CopiedBlob>> {
        let data = self.writer.finish_data()?;
        let (written, _, files) = self.writer.finish()?;
        Ok(match (data, written) {
            (Some(_), Some(w)) => Some(CopiedBlob {
                entry: w.entry,
                files,
            }),
            _ => None,
        })
    }
}
