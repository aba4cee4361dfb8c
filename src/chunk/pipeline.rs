//! The chunk pipeline. A producer (the directory walk, or the tar reader) groups chunks into
//! batches of about 1 MiB; worker threads read (for directories), digest and compress whole
//! batches; the calling thread commits them strictly in order to the blob writer, and a hash
//! thread computes the blob id beside it when chunks are stored uncompressed (otherwise the
//! committer hashes the few bytes it writes). With one thread, all of it runs on the caller.
//!
//! Output never depends on the thread count: batches carry a sequence number, the writer
//! commits in sequence and deduplicates against what it has already committed. Memory is
//! bounded by a fixed pool of `4 × threads + 4` batches (each at most max(1 MiB, chunk size)
//! of raw data plus its compressed form), whatever the size of the files or the image.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::{unbounded, Receiver, Sender};
use sha2::{Digest as _, Sha256};

use crate::blob::writer::is_batched;
use crate::blob::BlobWriter;
use crate::codec::{digest, Compressor, Digester};
use crate::error::{Error, IoContext, Result};
use crate::model::ChunkInfo;
use crate::model::{ChunkId, InodeId};

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
    /// `--batch-size`: chunks that [`is_batched`] are not compressed on their own; the blob
    /// writer packs them into batches.
    pub batch_size: Option<u32>,
}

/// Hashes a chunk digest by its first eight bytes: digests are already uniformly random, so
/// running them through SipHash again buys nothing.
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // the digest (or the array length before it, which this replaces)
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = self.0.rotate_left(5) ^ u64::from(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.0 = self.0.rotate_left(5) ^ v as u64;
    }
}

/// Builds [`DigestHasher`]s.
pub type DigestState = std::hash::BuildHasherDefault<DigestHasher>;

/// The chunks already known before this run and those added by it; chunk ids index `chunks`.
#[derive(Debug, Default, Clone)]
pub struct ChunkTable {
    /// Every chunk, by id.
    pub chunks: Vec<ChunkInfo>,
    by_digest: HashMap<([u8; 32], u32), ChunkId, DigestState>,
}

impl ChunkTable {
    /// Records a chunk and returns its id.
    pub fn push(&mut self, info: ChunkInfo) -> ChunkId {
        let id = ChunkId::new(self.chunks.len() as u32);
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
    pub fn find(&self, digest: &[u8; 32], size: u32) -> Option<ChunkId> {
        self.by_digest.get(&(*digest, size)).copied()
    }
}

/// File data a batch gathers before it goes to a worker. Small files travel together, so the
/// per-batch costs (a task, two channel messages, a lock) are paid per MiB, not per file.
const BATCH_BYTES: usize = 1 << 20;

/// A byte range of a local file that a worker reads into its batch.
struct Piece {
    path: Arc<Path>,
    offset: u64,
    len: usize,
    file_size: u64,
}

/// One chunk of a batch: its bytes are the next `len` bytes of the batch's `raw`.
struct Slot {
    inode: InodeId,
    len: u32,
    /// The only chunk of its file (which upstream's batching rule asks).
    only: bool,
    digest: [u8; 32],
    crc32: u32,
    /// This worker compresses it (no other chunk with its digest came first).
    claimed: bool,
    /// Where its compressed bytes are in `packed`, if compression made it smaller.
    packed: Option<std::ops::Range<usize>>,
}

/// A run of consecutive chunks, processed by one worker and committed in order. Batches are
/// recycled through a fixed pool, which bounds memory.
#[derive(Default)]
struct Batch {
    seq: u64,
    slots: Vec<Slot>,
    /// Sum of the slots' lengths.
    bytes: usize,
    /// Local file ranges still to read into `raw` (directory sources); empty when the
    /// producer filled `raw` itself (streams).
    pieces: Vec<Piece>,
    /// The chunks' bytes, in order, in the first `bytes` bytes (what lies beyond is stale).
    raw: Vec<u8>,
    /// Compressed chunks, in the first `packed_end` bytes (the rest is stale, like `raw`'s).
    packed: Vec<u8>,
    packed_end: usize,
    /// What the committer stored in the blob, in order, for the hash thread (when there is
    /// one): a range of `packed` (true) or of `raw` (false).
    stored: Vec<(bool, std::ops::Range<usize>)>,
}

impl Batch {
    /// A batch whose buffers never grow for chunks up to `limit` bytes in all: allocated once,
    /// on one thread, they do not scatter over the allocator's per-thread arenas.
    fn with_limit(limit: usize) -> Batch {
        Batch {
            raw: Vec::with_capacity(limit),
            // the compressed chunks kept are smaller than the raw ones; the last one may
            // briefly need its compression bound beyond that
            packed: Vec::with_capacity(limit + limit / 128 + 4096),
            ..Batch::default()
        }
    }

    fn push(&mut self, inode: InodeId, len: usize, only: bool) {
        self.slots.push(Slot::new(inode, len, only));
        self.bytes += len;
    }

    fn clear(&mut self) {
        self.bytes = 0;
        self.slots.clear();
        self.pieces.clear();
        // `raw` keeps its length: its bytes are overwritten before they are read again, and
        // zeroing a MiB per batch would cost as much as the read
        self.packed_end = 0;
        self.stored.clear();
    }

    /// Compresses `raw[range]` after the chunks `packed` already holds. Returns where it went,
    /// or `None` when it does not shrink.
    fn pack(
        &mut self,
        compressor: Compressor,
        range: std::ops::Range<usize>,
    ) -> Result<Option<std::ops::Range<usize>>> {
        let start = self.packed_end;
        let need = start + compressor.bound(range.len())?;
        if self.packed.len() < need {
            // only while the buffer is new: later uses overwrite what is there
            self.packed.resize(need, 0);
        }
        let n = compressor.compress_to_slice(&self.raw[range], &mut self.packed[start..])?;
        Ok(n.map(|n| {
            self.packed_end += n;
            start..start + n
        }))
    }

    /// The bytes the committer stored, in order.
    fn stored_bytes(&self) -> impl Iterator<Item = &[u8]> {
        self.stored.iter().map(|(packed, r)| {
            if *packed {
                &self.packed[r.clone()]
            } else {
                &self.raw[r.clone()]
            }
        })
    }
}

/// The free batches, most recently returned first: those have their pages mapped and are
/// likely still in cache. Closed once the writer stops, which wakes a waiting producer.
struct BatchPool {
    state: Mutex<(Vec<Batch>, bool)>,
    returned: Condvar,
}

impl BatchPool {
    fn new(batches: Vec<Batch>) -> BatchPool {
        BatchPool {
            state: Mutex::new((batches, false)),
            returned: Condvar::new(),
        }
    }

    /// The next free batch, waiting for one; `None` once the pool is closed.
    fn take(&self) -> Option<Batch> {
        let mut state = self.state.lock().ok()?;
        loop {
            if state.1 {
                return None;
            }
            if let Some(batch) = state.0.pop() {
                return Some(batch);
            }
            state = self.returned.wait(state).ok()?;
        }
    }

    fn give(&self, mut batch: Batch) {
        batch.clear();
        if let Ok(mut state) = self.state.lock() {
            state.0.push(batch);
        }
        self.returned.notify_one();
    }

    fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
        }
        self.returned.notify_all();
    }
}

/// What a worker hands back: the batch, or the error that stopped it.
type Processed = (u64, Result<Batch>);

/// Digests claimed by some worker (or already in the table): their duplicates are not
/// compressed again.
type Claims = Arc<Mutex<HashSet<[u8; 32], DigestState>>>;

/// How full batches reach the committer.
enum Dispatch<'a> {
    /// One thread does everything: each batch is processed and committed at once.
    Inline {
        committer: &'a mut (dyn AcceptBatch + Send + 'a),
        spare: Option<Batch>,
    },
    /// Batches go to worker threads; the committer runs on another thread.
    Pool {
        work_tx: Sender<Batch>,
        pool: &'a BatchPool,
    },
}

/// Where a producer hands file data to the pipeline.
pub struct ChunkSink<'a> {
    opts: &'a PipelineOptions,
    dispatch: Dispatch<'a>,
    claims: Claims,
    current: Option<Batch>,
    seq: u64,
    /// Set when the writer has stopped (on an error it reports itself).
    stopped: bool,
}

impl ChunkSink<'_> {
    fn batch_limit(&self) -> usize {
        BATCH_BYTES.max(self.opts.chunk_size as usize)
    }

    /// The batch the next chunk of `len` bytes goes into, dispatching the current one first
    /// when the chunk would not fit, or when it holds the other kind of data (`stream`: bytes
    /// already read, or else file ranges for the worker to read).
    fn batch_for(&mut self, len: usize, stream: bool) -> Result<&mut Batch> {
        let limit = self.batch_limit();
        let full = self.current.as_ref().is_some_and(|b| {
            let other_kind = if stream {
                !b.pieces.is_empty()
            } else {
                b.pieces.is_empty()
            };
            !b.slots.is_empty() && (b.bytes + len > limit || other_kind)
        });
        if full {
            self.dispatch_current()?;
        }
        if self.current.is_none() {
            let batch = match &mut self.dispatch {
                Dispatch::Inline { spare, .. } => {
                    spare.take().unwrap_or_else(|| Batch::with_limit(limit))
                }
                Dispatch::Pool { pool, .. } => match pool.take() {
                    Some(batch) => batch,
                    None => {
                        // the writer stopped on an error of its own; it reports that one
                        self.stopped = true;
                        return Err(Error::InvalidOption("chunk writer stopped".into()));
                    }
                },
            };
            self.current = Some(batch);
        }
        Ok(self.current.get_or_insert_with(|| Batch::with_limit(limit)))
    }

    fn dispatch_current(&mut self) -> Result<()> {
        let Some(mut batch) = self.current.take() else {
            return Ok(());
        };
        if batch.slots.is_empty() {
            self.current = Some(batch);
            return Ok(());
        }
        batch.seq = self.seq;
        self.seq += 1;
        match &mut self.dispatch {
            Dispatch::Inline { committer, spare } => {
                let batch = process(batch, self.opts, &self.claims)?;
                let mut recycled = None;
                committer.accept(batch.seq, Ok(batch), &mut |mut b| {
                    b.clear();
                    recycled = Some(b)
                })?;
                *spare = recycled;
            }
            Dispatch::Pool { work_tx, .. } => {
                if work_tx.send(batch).is_err() {
                    // the workers stopped because the writer did; it reports why
                    self.stopped = true;
                    return Err(Error::InvalidOption("chunk writer stopped".into()));
                }
            }
        }
        Ok(())
    }

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
            let len = left.min(u64::from(self.opts.chunk_size)) as usize;
            let batch = self.batch_for(len, true)?;
            let start = batch.bytes;
            if batch.raw.len() < start + len {
                batch.raw.resize(start + len, 0);
            }
            let buf = &mut batch.raw[start..start + len];
            read_full(reader, buf, name, size, size - left)?;
            batch.push(inode, len, len as u64 == size);
            left -= len as u64;
        }
        Ok(())
    }

    /// Queues the `size` bytes of the local file `path` as `inode`'s chunks; a worker reads
    /// them, so reading is spread over the pool too.
    pub fn add_path(&mut self, inode: InodeId, path: &Path, size: u64) -> Result<()> {
        let path: Arc<Path> = Arc::from(path);
        let mut offset = 0;
        while offset < size {
            let len = (size - offset).min(u64::from(self.opts.chunk_size)) as usize;
            let batch = self.batch_for(len, false)?;
            match batch.pieces.last_mut() {
                Some(p) if Arc::ptr_eq(&p.path, &path) && p.offset + p.len as u64 == offset => {
                    p.len += len
                }
                _ => batch.pieces.push(Piece {
                    path: path.clone(),
                    offset,
                    len,
                    file_size: size,
                }),
            }
            batch.push(inode, len, len as u64 == size);
            offset += len as u64;
        }
        Ok(())
    }

    /// Dispatches what the last batch holds.
    fn finish(&mut self) -> Result<()> {
        self.dispatch_current()
    }
}

impl Slot {
    fn new(inode: InodeId, len: usize, only: bool) -> Slot {
        Slot {
            inode,
            len: len as u32,
            only,
            digest: [0; 32],
            crc32: 0,
            claimed: false,
            packed: None,
        }
    }
}

/// `--threads 1`: the producer, the chunk work and the commits all on the calling thread.
fn run_inline<R>(
    opts: &PipelineOptions,
    mut committer: Committer<'_>,
    claims: Claims,
    producer: impl FnOnce(&mut ChunkSink<'_>) -> Result<R>,
) -> Result<(Vec<Vec<ChunkId>>, R)> {
    let mut sink = ChunkSink {
        opts,
        dispatch: Dispatch::Inline {
            committer: &mut committer,
            spare: None,
        },
        claims,
        current: None,
        seq: 0,
        stopped: false,
    };
    let produced = producer(&mut sink)?;
    sink.finish()?;
    drop(sink);
    Ok((committer.per_inode, produced))
}

/// Starts the workers: each takes batches from the work channel, digests and compresses
/// them, and sends them to the committer.
fn spawn_workers<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    opts: &PipelineOptions,
    threads: usize,
    channels: (Receiver<Batch>, Sender<Processed>),
    claims: &Claims,
) -> Result<()> {
    let (work_rx, done_tx) = channels;
    // plain threads blocking on a channel: an idle worker sleeps at once instead of
    // spinning for work, which would take the core from the walk or the writer
    for i in 0..threads {
        let (work_rx, done_tx, claims) = (work_rx.clone(), done_tx.clone(), claims.clone());
        let opts = opts.clone();
        std::thread::Builder::new()
            .name(format!("chunk-{i}"))
            .spawn_scoped(s, move || {
                for batch in work_rx {
                    let seq = batch.seq;
                    let processed = process(batch, &opts, &claims);
                    if done_tx.send((seq, processed)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::InvalidOption(format!("cannot start {threads} threads: {e}")))?;
    }
    Ok(())
}

/// Hashes the blob's stored bytes beside the committer, in order, and hands each batch back
/// to the pool.
fn spawn_hasher<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    hash_rx: Receiver<Batch>,
    mut hasher: Sha256,
    pool: &'scope BatchPool,
) -> Result<std::thread::ScopedJoinHandle<'scope, Sha256>> {
    std::thread::Builder::new()
        .name("blob-hash".into())
        .spawn_scoped(s, move || {
            for batch in hash_rx {
                for bytes in batch.stored_bytes() {
                    hasher.update(bytes);
                }
                pool.give(batch);
            }
            hasher
        })
        .map_err(|e| Error::InvalidOption(format!("cannot start the hash thread: {e}")))
}

/// Runs `producer`; every file it gives the [`ChunkSink`] is chunked, digested and compressed
/// in parallel and committed to `blob` in order. Returns the chunk ids of each inode (indexed by
/// inode id; inodes without data may be missing at the end) and what the producer returned.
///
/// With one thread everything runs on the calling thread. With more, the producer runs on a
/// thread of its own, `threads` workers process batches and the calling thread commits them.
pub fn run_with<R: Send>(
    opts: &PipelineOptions,
    table: &mut ChunkTable,
    blob: &mut BlobWriter,
    progress: &(dyn Fn(u64) + Sync),
    producer: impl FnOnce(&mut ChunkSink<'_>) -> Result<R> + Send,
) -> Result<(Vec<Vec<ChunkId>>, R)> {
    let threads = opts.threads.max(1);
    // chunks the table already holds are never compressed again
    let known: HashSet<[u8; 32], DigestState> = table.digests().collect();
    // digests some worker is compressing or has compressed: duplicates skip it
    let claims = Arc::new(Mutex::new(known));
    let hashes_itself = blob.hashes_itself();
    let mut committer = Committer {
        opts,
        table,
        blob,
        progress,
        per_inode: Vec::new(),
        pending: BTreeMap::new(),
        next: 0,
        // SHA-256 over the blob is the one strictly serial step: with uncompressed chunks it
        // costs as much as the writes and gets a thread of its own; compressed chunks are few
        // bytes, hashed best while the committer still has them in cache
        hash_inline: threads == 1 || opts.compressor != Compressor::None || hashes_itself,
    };
    if threads == 1 {
        return run_inline(opts, committer, claims, producer);
    }

    // deep enough that batches finishing out of order do not stall the workers (with
    // 2 × threads + 2, trees of small files measured about 5% slower)
    let slots = 4 * threads + 4;
    let limit = BATCH_BYTES.max(opts.chunk_size as usize);
    let pool = &BatchPool::new((0..slots).map(|_| Batch::with_limit(limit)).collect());
    let (done_tx, done_rx) = unbounded::<Processed>();
    let (work_tx, work_rx) = unbounded::<Batch>();
    let (hash_tx, hash_rx) = unbounded::<Batch>();
    let hash_thread = !committer.hash_inline;
    let hasher = if hash_thread {
        committer.blob.take_hasher()
    } else {
        Sha256::default()
    };

    std::thread::scope(|s| {
        spawn_workers(s, opts, threads, (work_rx, done_tx), &claims)?;
        // hashes the blob beside the committer and hands batches back to the producer
        let hashing = if hash_thread {
            Some(spawn_hasher(s, hash_rx, hasher, pool)?)
        } else {
            drop(hash_rx);
            None
        };
        let reader = std::thread::Builder::new()
            .name("chunk-source".into())
            .spawn_scoped(s, {
                let mut sink = ChunkSink {
                    opts,
                    dispatch: Dispatch::Pool { work_tx, pool },
                    claims,
                    current: None,
                    seq: 0,
                    stopped: false,
                };
                move || {
                    let r = producer(&mut sink).and_then(|r| sink.finish().map(|()| r));
                    (r, sink.stopped)
                }
            })
            .map_err(|e| Error::InvalidOption(format!("cannot start the reader thread: {e}")))?;
        let committed = (|| {
            for (seq, batch) in done_rx {
                // the committer hands batches to the hash thread, or straight back
                committer.accept(seq, batch, &mut |b| {
                    if hash_thread {
                        let _ = hash_tx.send(b);
                    } else {
                        pool.give(b);
                    }
                })?;
            }
            Ok(())
        })();
        drop(hash_tx);
        let hashed = hashing.map(|t| t.join());
        // after an error, wakes a producer waiting for a free batch
        pool.close();
        let (produced, stopped) = reader.join().unwrap_or_else(|_| {
            (
                Err(Error::Internal("chunk reader thread panicked".into())),
                false,
            )
        });
        committed?;
        match hashed {
            Some(Ok(hasher)) => committer.blob.restore_hasher(hasher),
            None => {}
            Some(Err(_)) => return Err(Error::Internal("blob hash thread panicked".into())),
        }
        if stopped {
            // the writer finished without error, so it did not stop early
            return Err(Error::Internal("chunk writer stopped unexpectedly".into()));
        }
        let produced = produced?;
        if !committer.pending.is_empty() {
            return Err(Error::Internal("chunk batches went missing".into()));
        }
        Ok((std::mem::take(&mut committer.per_inode), produced))
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

/// Opens a file found by the walk for reading, refusing it if it is no longer a regular file:
/// replaced by a directory, a FIFO (whose open would block), a device or a symlink (which
/// could lead outside the source tree) since it was seen.
fn open_walked_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let changed = |now: &str| Error::Unsupported {
        path: path.to_path_buf(),
        reason: format!("changed type while the tree was read: now {now}"),
    };
    let f = match f {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(changed("a symlink")),
        other => other.ctx("open", path)?,
    };
    let t = f.metadata().ctx("stat", path)?.file_type();
    if !t.is_file() {
        return Err(changed(if t.is_dir() {
            "a directory"
        } else {
            "a special file"
        }));
    }
    Ok(f)
}

/// Reads a batch's file ranges into `raw`, in order.
fn read_pieces(batch: &mut Batch) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let total: usize = batch.pieces.iter().map(|p| p.len).sum();
    if batch.raw.len() < total {
        batch.raw.resize(total, 0);
    }
    let mut at = 0;
    let mut open: Option<(Arc<Path>, File)> = None;
    for piece in &batch.pieces {
        let file = match &open {
            Some((p, f)) if Arc::ptr_eq(p, &piece.path) => f,
            _ => {
                let f = open_walked_file(&piece.path)?;
                &open.insert((piece.path.clone(), f)).1
            }
        };
        let buf = &mut batch.raw[at..at + piece.len];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], piece.offset + got as u64) {
                Ok(0) => {
                    return Err(Error::FileChanged {
                        path: piece.path.to_path_buf(),
                        expected: piece.file_size,
                        got: piece.offset + got as u64,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).ctx("read", &*piece.path),
            }
        }
        at += piece.len;
    }
    Ok(())
}

fn process(
    mut batch: Batch,
    opts: &PipelineOptions,
    claims: &Mutex<HashSet<[u8; 32], DigestState>>,
) -> Result<Batch> {
    let (digester, compressor) = (opts.digester, opts.compressor);
    if !batch.pieces.is_empty() {
        read_pieces(&mut batch)?;
    }
    batch.packed_end = 0;
    let mut at = 0;
    // one chunk at a time, all three passes while it is in cache
    for i in 0..batch.slots.len() {
        let range = at..at + batch.slots[i].len as usize;
        at = range.end;
        let data = &batch.raw[range.clone()];
        let chunk_digest = digester.digest(data);
        let slot = &mut batch.slots[i];
        slot.digest = chunk_digest;
        slot.crc32 = digest::crc32(data);
        // a poisoned lock means a worker panicked; compressing is still correct
        slot.claimed = claims
            .lock()
            .map_or(true, |mut set| set.insert(chunk_digest));
        // a batch member is compressed with its batch, by the blob writer
        if slot.claimed && !is_batched(opts.batch_size, slot.len, slot.only) {
            batch.slots[i].packed = batch.pack(compressor, range)?;
        }
    }
    Ok(batch)
}

/// Commits processed batches to the blob strictly in sequence order.
struct Committer<'a> {
    opts: &'a PipelineOptions,
    table: &'a mut ChunkTable,
    blob: &'a mut BlobWriter,
    progress: &'a (dyn Fn(u64) + Sync),
    /// Chunk ids by inode id.
    per_inode: Vec<Vec<ChunkId>>,
    /// Batches that arrived before their turn (at most the size of the batch pool). An error
    /// waits for its turn too, so the one reported never depends on scheduling.
    pending: BTreeMap<u64, Result<Batch>>,
    next: u64,
    /// Hash stored bytes here (one thread); otherwise a hash thread does it.
    hash_inline: bool,
}

/// The committer as the inline dispatcher sees it (a trait object, so that the sink's
/// lifetime can be shorter than the committer's borrows).
trait AcceptBatch {
    fn accept(
        &mut self,
        seq: u64,
        batch: Result<Batch>,
        recycle: &mut dyn FnMut(Batch),
    ) -> Result<()>;
}

impl AcceptBatch for Committer<'_> {
    fn accept(
        &mut self,
        seq: u64,
        batch: Result<Batch>,
        recycle: &mut dyn FnMut(Batch),
    ) -> Result<()> {
        self.pending.insert(seq, batch);
        while let Some(batch) = self.pending.remove(&self.next) {
            self.next += 1;
            let mut batch = batch?;
            self.commit(&mut batch)?;
            recycle(batch);
        }
        Ok(())
    }
}

impl Committer<'_> {
    fn commit(&mut self, batch: &mut Batch) -> Result<()> {
        let mut at = 0;
        for i in 0..batch.slots.len() {
            let slot = &batch.slots[i];
            let raw_range = at..at + slot.len as usize;
            at += slot.len as usize;
            let (inode, len) = (slot.inode, slot.len);
            let id = match self.table.find(&slot.digest, slot.len) {
                Some(id) => id,
                None if is_batched(self.opts.batch_size, slot.len, slot.only) => {
                    let raw = &batch.raw[raw_range.clone()];
                    let info = self.blob.add_batched_chunk(slot.digest, slot.crc32, raw)?;
                    self.table.push(info)
                }
                None => {
                    let (digest, crc32) = (slot.digest, slot.crc32);
                    let stored = if slot.claimed {
                        slot.packed.clone()
                    } else {
                        // a later duplicate won the claim: compress here so the first copy in
                        // sequence order is the one stored, whatever the scheduling
                        batch.pack(self.opts.compressor, raw_range.clone())?
                    };
                    let raw = &batch.raw[raw_range.clone()];
                    let packed = stored.clone().map(|r| &batch.packed[r]);
                    let info = if self.hash_inline {
                        self.blob.add_chunk(digest, crc32, raw, packed)?
                    } else {
                        self.blob.add_chunk_unhashed(digest, crc32, raw, packed)?
                    };
                    if !self.hash_inline {
                        // for the hash thread
                        batch.stored.push(match stored {
                            Some(r) => (true, r),
                            None => (false, raw_range),
                        });
                    }
                    self.table.push(info)
                }
            };
            if inode.index() >= self.per_inode.len() {
                self.per_inode.resize_with(inode.index() + 1, Vec::new);
            }
            self.per_inode[inode.index()].push(id);
            (self.progress)(u64::from(len));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test scratch directories need no signal cleanup
mod tests {
    use super::*;
    use crate::blob::BlobWriterOptions;

    /// Pipeline options and a v6 blob writer in `dir`, with 4 KiB chunks.
    fn setup(dir: &Path, threads: usize, compressor: Compressor) -> (PipelineOptions, BlobWriter) {
        let opts = PipelineOptions {
            chunk_size: 0x1000,
            digester: Digester::Blake3,
            compressor,
            threads,
            batch_size: None,
        };
        let blob = BlobWriter::new(
            BlobWriterOptions {
                compressor,
                digester: Digester::Blake3,
                inline_meta: false,
                toc: false,
                blob_index: 0,
                write_blob: true,
                cache_dir: None,
                v6: true,
                aligned: false,
                tmp_dir: None,
                blob_path: None,
                blob_offset: 0,
                batch_size: None,
                cipher: None,
            },
            dir,
        )
        .unwrap();
        (opts, blob)
    }

    /// Runs the pipeline over `files` (name, bytes) written to a temp dir, half of them given
    /// as paths and half as streams; returns the blob id, the chunk ids per file and the chunks.
    fn build(
        files: &[(&str, Vec<u8>)],
        threads: usize,
        compressor: Compressor,
    ) -> Result<(String, Vec<Vec<ChunkId>>, Vec<ChunkInfo>)> {
        let dir = tempfile::tempdir().unwrap();
        for (name, data) in files {
            std::fs::write(dir.path().join(name), data).unwrap();
        }
        let (opts, mut blob) = setup(dir.path(), threads, compressor);
        let mut table = ChunkTable::default();
        let (per_inode, ()) = run_with(&opts, &mut table, &mut blob, &|_| {}, |sink| {
            for (i, (name, data)) in files.iter().enumerate() {
                let path = dir.path().join(name);
                if i % 2 == 0 {
                    sink.add_path(InodeId::new(i), &path, data.len() as u64)?;
                } else {
                    sink.add_file(InodeId::new(i), &mut &data[..], data.len() as u64, &path)?;
                }
            }
            Ok(())
        })?;
        blob.finish_data()?;
        let chunks = blob.chunks().to_vec();
        let (_, id, _) = blob.finish()?;
        let ids = (0..files.len())
            .map(|i| per_inode.get(i).cloned().unwrap_or_default())
            .collect();
        Ok((id, ids, chunks))
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(seed) ^ (i / 7) as u8)
            .collect()
    }

    #[test]
    fn same_blob_at_any_thread_count_with_dedup_across_batches() {
        // many small files (batched together), a large one (one batch per chunk) and
        // duplicates of both, inside one batch and across batches
        let mut files: Vec<(String, Vec<u8>)> = (0..600)
            .map(|i| {
                (
                    format!("small{i}"),
                    pattern((i % 50) as u8 + 1, 100 + i % 3000),
                )
            })
            .collect();
        files.push(("big".into(), pattern(7, 0x1000 * 300 + 17)));
        files.push(("big-copy".into(), pattern(7, 0x1000 * 300 + 17)));
        files.push(("empty".into(), Vec::new()));
        let files: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        for compressor in [Compressor::Zstd, Compressor::None] {
            let one = build(&files, 1, compressor).unwrap();
            for threads in [2, 3, 8] {
                let other = build(&files, threads, compressor).unwrap();
                assert_eq!(one.0, other.0, "blob id at {threads} threads");
                assert_eq!(one.1, other.1, "chunk ids at {threads} threads");
            }
            let (_, ids, chunks) = one;
            // 50 distinct small patterns of 3 lengths at most... each small file is one chunk
            for (i, (_, data)) in files.iter().enumerate() {
                let want = data.len().div_ceil(0x1000);
                assert_eq!(ids[i].len(), want, "chunk count of file {i}");
            }
            let big = files.len() - 3;
            assert_eq!(ids[big], ids[big + 1], "the copy shares every chunk");
            // every stored chunk is unique, and the first copy in file order is the one stored
            let mut seen = HashSet::new();
            for c in &chunks {
                assert!(seen.insert((c.digest, c.uncompressed_size)));
            }
            let first_ids: Vec<u32> = ids.iter().flatten().map(|id| id.get()).collect();
            let mut max = 0;
            for id in first_ids {
                assert!(
                    id <= max + 1 || id < max,
                    "chunk ids appear in first-use order"
                );
                max = max.max(id);
            }
        }
    }

    #[test]
    fn a_file_that_shrank_is_named_whatever_the_threads() {
        let data = pattern(3, 9000);
        for threads in [1, 2] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a");
            std::fs::write(&path, &data[..5000]).unwrap();
            let (opts, mut blob) = setup(dir.path(), threads, Compressor::Zstd);
            let mut table = ChunkTable::default();
            let err = run_with(&opts, &mut table, &mut blob, &|_| {}, |sink| {
                sink.add_path(InodeId::new(0), &path, 9000)?;
                sink.add_path(InodeId::new(1), Path::new("/nonexistent/b"), 100)
            })
            .unwrap_err();
            match err {
                Error::FileChanged {
                    path: p,
                    expected,
                    got,
                } => {
                    assert_eq!(p, path);
                    assert_eq!(expected, 9000);
                    assert_eq!(got, 5000);
                }
                other => panic!("unexpected error at {threads} threads: {other}"),
            }
        }
    }

    #[test]
    fn an_error_late_in_a_long_run_stops_the_producer() {
        // more batches than the pool holds, then a missing file: the run must end with
        // that error instead of waiting for a free batch forever
        let dir = tempfile::tempdir().unwrap();
        let (opts, mut blob) = setup(dir.path(), 2, Compressor::Zstd);
        let mut table = ChunkTable::default();
        let missing = dir.path().join("missing");
        let err = run_with(&opts, &mut table, &mut blob, &|_| {}, |sink| {
            sink.add_path(InodeId::new(0), &missing, 0x1000 * 4)?;
            for i in 0..200 {
                let data = pattern(i as u8, 0x1000 * 2);
                sink.add_file(
                    InodeId::new(i + 1),
                    &mut &data[..],
                    data.len() as u64,
                    Path::new("s"),
                )?;
            }
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(&err, Error::Io { path, .. } if *path == missing),
            "{err}"
        );
    }
}
