//! The chunk pipeline: a reader thread cuts files into chunks, a rayon pool digests and
//! compresses them, and the calling thread commits them in order to the blob writer.
//!
//! Output never depends on the thread count: chunks carry a sequence number and the writer
//! commits strictly in sequence, deduplicating against what it has already committed. Memory
//! is bounded by a fixed pool of chunk buffers (about `2 × threads + 2` chunks, raw plus
//! compressed), whatever the size of the files or the image.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::{digest, Compressor, Digester};
use crate::blob::{BlobWriter, ChunkInfo};
use crate::error::{Error, IoContext, Result};
use crate::tree::InodeId;

/// Settings of a pipeline run.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Chunk size.
    pub chunk_size: u32,
    /// Digest algorithm.
    pub digester: Digester,
    /// Compression algorithm.
    pub compressor: Compressor,
    /// Worker threads for digest and compression (at least 1).
    pub threads: usize,
}

/// One local file to cut into chunks (the directory source's input).
#[derive(Debug, Clone)]
pub struct FileJob {
    /// The inode the chunks belong to.
    pub inode: InodeId,
    /// Where to read it.
    pub path: PathBuf,
    /// How many bytes to read.
    pub size: u64,
}

/// The chunks already known before this run and those added by it; chunk ids index `chunks`.
#[derive(Debug, Default, Clone)]
pub struct ChunkTable {
    /// Every chunk, by id.
    pub chunks: Vec<ChunkInfo>,
    by_digest: HashMap<([u8; 32], u32), u32>,
}

impl ChunkTable {
    /// Records a chunk and returns its id.
    pub fn push(&mut self, info: ChunkInfo) -> u32 {
        let id = self.chunks.len() as u32;
        self.by_digest
            .entry((info.digest, info.uncompressed_size))
            .or_insert(id);
        self.chunks.push(info);
        id
    }

    /// Digests of all known chunks.
    pub fn digests(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.by_digest.keys().map(|k| k.0)
    }

    /// The id of a known chunk with this digest and size.
    pub fn find(&self, digest: &[u8; 32], size: u32) -> Option<u32> {
        self.by_digest.get(&(*digest, size)).copied()
    }
}

struct Buffers {
    raw: Vec<u8>,
    packed: Vec<u8>,
}

struct Job {
    seq: u64,
    inode: InodeId,
    bufs: Buffers,
}

struct Done {
    seq: u64,
    inode: InodeId,
    digest: [u8; 32],
    crc32: u32,
    /// The compressed bytes are in `bufs.packed` (false: not compressed, or skipped because
    /// an earlier chunk with the same digest is being compressed).
    compressed: bool,
    claimed: bool,
    bufs: Buffers,
}

/// Cuts `files` into chunks, in the given order, writes new chunks to `blob` and returns the
/// chunk ids of each file. `progress` is called with the byte count of each chunk committed.
pub fn run(
    files: &[FileJob],
    opts: &PipelineOptions,
    table: &mut ChunkTable,
    blob: &mut BlobWriter,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<HashMap<InodeId, Vec<u32>>> {
    let (per_inode, ()) = run_with(opts, table, blob, progress, |sink| {
        for file in files {
            let mut f = File::open(&file.path).ctx("open", &file.path)?;
            sink.add_file(file.inode, &mut f, file.size, &file.path)?;
        }
        Ok(())
    })?;
    Ok(per_inode)
}

/// Where a producer hands file data to the pipeline (on the reader thread).
pub struct ChunkSink<'a> {
    opts: &'a PipelineOptions,
    free_rx: Receiver<Buffers>,
    done_tx: Sender<Result<Done>>,
    claims: Arc<Mutex<HashSet<[u8; 32]>>>,
    pool: &'a rayon::ThreadPool,
    seq: u64,
    /// Set when the writer has stopped (on an error it reports itself).
    stopped: bool,
}

impl ChunkSink<'_> {
    /// Reads exactly `size` bytes of `inode`'s data from `reader` and queues them as chunks.
    /// `name` is used in errors (a path, or a tar entry name).
    pub fn add_file(
        &mut self,
        inode: InodeId,
        reader: &mut dyn Read,
        size: u64,
        name: &Path,
    ) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let Ok(mut bufs) = self.free_rx.recv() else {
                // the writer stopped on an error of its own; it reports that one
                self.stopped = true;
                return Err(Error::InvalidOption("chunk writer stopped".into()));
            };
            let len = left.min(u64::from(self.opts.chunk_size)) as usize;
            bufs.raw.resize(len, 0);
            read_full(reader, &mut bufs.raw, name, size, size - left)?;
            left -= len as u64;
            let job = Job {
                seq: self.seq,
                inode,
                bufs,
            };
            self.seq += 1;
            let done_tx = self.done_tx.clone();
            let claims = self.claims.clone();
            let (digester, compressor) = (self.opts.digester, self.opts.compressor);
            self.pool.spawn(move || {
                let _ = done_tx.send(process(job, digester, compressor, &claims));
            });
        }
        Ok(())
    }
}

/// Runs `producer` on a reader thread; every file it gives the [`ChunkSink`] is chunked,
/// digested and compressed in parallel and committed to `blob` in order. Returns the chunk ids
/// of each inode and what the producer returned.
pub fn run_with<R: Send>(
    opts: &PipelineOptions,
    table: &mut ChunkTable,
    blob: &mut BlobWriter,
    progress: &(dyn Fn(u64) + Sync),
    producer: impl FnOnce(&mut ChunkSink<'_>) -> Result<R> + Send,
) -> Result<(HashMap<InodeId, Vec<u32>>, R)> {
    let threads = opts.threads.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("chunk-{i}"))
        .build()
        .map_err(|e| Error::InvalidOption(format!("cannot start {threads} threads: {e}")))?;
    let slots = 2 * threads + 2;
    let (free_tx, free_rx) = bounded::<Buffers>(slots);
    for _ in 0..slots {
        let raw = Vec::with_capacity(opts.chunk_size as usize);
        let _ = free_tx.send(Buffers {
            raw,
            packed: Vec::new(),
        });
    }
    let (done_tx, done_rx) = unbounded::<Result<Done>>();
    // chunks the table already holds are never compressed again
    let known: HashSet<[u8; 32]> = table.digests().collect();

    std::thread::scope(|s| {
        let reader = s.spawn({
            let mut sink = ChunkSink {
                opts,
                free_rx,
                done_tx: done_tx.clone(),
                // digests some worker is compressing or has compressed: duplicates skip it
                claims: Arc::new(Mutex::new(known)),
                pool: &pool,
                seq: 0,
                stopped: false,
            };
            move || {
                let r = producer(&mut sink);
                (r, sink.stopped)
            }
        });
        drop(done_tx);
        let committed = commit(done_rx, free_tx, opts, table, blob, progress);
        let (produced, stopped) = reader.join().unwrap_or_else(|_| {
            (
                Err(Error::InvalidOption("chunk reader thread panicked".into())),
                false,
            )
        });
        let per_inode = committed?;
        if stopped {
            // the writer finished without error, so it did not stop early
            return Err(Error::InvalidOption(
                "chunk writer stopped unexpectedly".into(),
            ));
        }
        Ok((per_inode, produced?))
    })
}

fn read_full(f: &mut dyn Read, buf: &mut [u8], name: &Path, size: u64, done: u64) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(Error::FileChanged {
                    path: name.to_path_buf(),
                    expected: size,
                    got: done + got as u64,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).ctx("read", name),
        }
    }
    Ok(())
}

fn process(
    mut job: Job,
    digester: Digester,
    compressor: Compressor,
    claims: &Mutex<HashSet<[u8; 32]>>,
) -> Result<Done> {
    let data = &job.bufs.raw;
    let digest = digester.digest(data);
    let crc32 = digest::crc32(data);
    let claimed = claims
        .lock()
        .map(|mut set| set.insert(digest))
        .unwrap_or(true);
    let compressed = if claimed {
        compressor.compress_into(data, &mut job.bufs.packed)?
    } else {
        false
    };
    Ok(Done {
        seq: job.seq,
        inode: job.inode,
        digest,
        crc32,
        compressed,
        claimed,
        bufs: job.bufs,
    })
}

fn commit(
    done_rx: Receiver<Result<Done>>,
    free_tx: Sender<Buffers>,
    opts: &PipelineOptions,
    table: &mut ChunkTable,
    blob: &mut BlobWriter,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<HashMap<InodeId, Vec<u32>>> {
    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
    let mut next = 0u64;
    let mut per_inode: HashMap<InodeId, Vec<u32>> = HashMap::new();
    for msg in done_rx {
        let done = msg?;
        pending.insert(done.seq, done);
        while let Some(mut d) = pending.remove(&next) {
            next += 1;
            let size = d.bufs.raw.len() as u32;
            let id = match table.find(&d.digest, size) {
                Some(id) => id,
                None => {
                    // a later duplicate won the claim: compress here so the first copy in
                    // sequence order is the one stored, whatever the scheduling
                    if !d.claimed {
                        d.compressed = opts
                            .compressor
                            .compress_into(&d.bufs.raw, &mut d.bufs.packed)?;
                    }
                    let stored = d.compressed.then_some(d.bufs.packed.as_slice());
                    let info = blob.add_chunk(d.digest, d.crc32, &d.bufs.raw, stored)?;
                    table.push(info)
                }
            };
            per_inode.entry(d.inode).or_default().push(id);
            progress(u64::from(size));
            // the reader may have finished already; then nobody needs the buffer
            let _ = free_tx.send(d.bufs);
        }
    }
    Ok(per_inode)
}
