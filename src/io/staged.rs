//! Temporary outputs: every output is written under a temporary name in (or beside) its
//! destination and renamed into place only when the whole command has succeeded.
//!
//! An output that already exists and is not a regular file (a FIFO a client reads, a character
//! device such as `/dev/null` or `/dev/stdout`) is a stream: it is never renamed over or
//! unlinked, but opened and written in place, in order ([`Staged::Stream`]). Outputs that must
//! be written out of order (seeks, a hash tree read back) are staged in a temporary file as
//! usual and copied into the stream in one sequential pass by [`persist`].
//!
//! Temporary paths are registered here so that the binary can remove them when it is
//! interrupted ([`remove_all`], called from its SIGINT/SIGTERM handler thread), and an
//! [`Outputs`] set is renamed into place as one step: while it commits, [`remove_all`] waits,
//! and if one rename fails the outputs already renamed are removed again.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use tempfile::NamedTempFile;

use std::io::{Seek, Write};

use crate::error::{write_error, Error, IoContext, Result};
use crate::io::failpoint;

static REGISTRY: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
/// Set once [`remove_all`] has run: paths registered later are removed at once.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// Held while outputs are renamed into place, and (for good) by [`remove_all`].
static COMMIT: Mutex<()> = Mutex::new(());

fn registry() -> MutexGuard<'static, Option<HashSet<PathBuf>>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The flag a signal handler sets, at the moment the signal arrives, to say the process is
/// going away: no output is renamed into place after it is set, even if the thread that
/// cleans up has not run yet.
pub fn interrupted() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// Takes the commit lock, unless the process is being interrupted or a consumer of its
/// output has gone away (the run is failing: nothing may appear under a final name).
fn commit_lock() -> Result<MutexGuard<'static, ()>> {
    let guard = COMMIT.lock().unwrap_or_else(|e| e.into_inner());
    if interrupted().load(Ordering::SeqCst) {
        return Err(Error::Interrupted);
    }
    if let Some(path) = gone_stream() {
        return Err(Error::BrokenPipe { path });
    }
    Ok(guard)
}

/// Records a temporary file or directory to remove if the process is interrupted.
pub fn register(path: &Path) {
    {
        let mut reg = registry();
        if CLOSED.load(Ordering::SeqCst) {
            // the cleanup already ran and the process is about to exit: nothing may outlive it
            drop(reg);
            remove_path(path);
            return;
        }
        reg.get_or_insert_with(HashSet::new)
            .insert(path.to_path_buf());
    }
    failpoint::reached("temp");
}

/// Forgets a temporary path (it was renamed into place or removed).
pub fn unregister(path: &Path) {
    if let Some(set) = registry().as_mut() {
        set.remove(path);
    }
}

/// Removes a file, or a directory and everything in it. Another thread may still be adding
/// files to a directory being removed (the process is exiting under it), so the removal is
/// retried a few times.
fn remove_path(p: &Path) -> bool {
    for _ in 0..8 {
        let done = match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).is_ok(),
            Ok(_) => std::fs::remove_file(p).is_ok(),
            Err(_) => return false,
        };
        if done {
            return true;
        }
    }
    false
}

/// Removes every registered temporary file and directory, waiting for a commit in progress to
/// finish first, and returns how many were removed. Meant to be called once, right before the
/// process exits: no later commit can start, since the commit lock stays held, and a path
/// registered later is removed as it is registered.
pub fn remove_all() -> usize {
    interrupted().store(true, Ordering::SeqCst);
    let guard = COMMIT.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::forget(guard);
    let paths = {
        let mut reg = registry();
        CLOSED.store(true, Ordering::SeqCst);
        reg.take().unwrap_or_default()
    };
    paths.iter().filter(|p| remove_path(p)).count()
}

/// Whether `path` names an existing stream output: a FIFO or a device (possibly through a
/// symlink such as `/dev/stdout`), or anything under `/dev` or `/proc` (where `/dev/stdout` may
/// lead to a regular file that must not be replaced either).
pub fn is_stream(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let t = meta.file_type();
    if t.is_dir() {
        return false;
    }
    t.is_fifo()
        || t.is_char_device()
        || t.is_block_device()
        || path.starts_with("/dev")
        || path.starts_with("/proc")
}

/// Opens a stream output for writing in place: no creation, no truncation (a FIFO's reader,
/// or whatever the device is, sees the bytes in the order they are written). The stream is
/// watched while it is open (see [`gone_stream`]).
pub fn open_stream(path: &Path) -> Result<Arc<File>> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .ctx("open", path)?;
    widen_pipe(&f);
    let f = Arc::new(f);
    watched().push((Arc::downgrade(&f), path.to_path_buf()));
    Ok(f)
}

/// Stream outputs open now, for [`gone_stream`]: weak, so that a stream is closed (and its
/// reader sees the end) as soon as its writer is done with it.
fn watched() -> MutexGuard<'static, Vec<(Weak<File>, PathBuf)>> {
    static WATCHED: Mutex<Vec<(Weak<File>, PathBuf)>> = Mutex::new(Vec::new());
    WATCHED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first stream output (a FIFO or pipe written in place, or stdout when it is a pipe)
/// whose reader has gone away, if any. Polling tells it at once, even while the run is busy
/// elsewhere and writes nothing to that stream for minutes.
pub fn gone_stream() -> Option<PathBuf> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let readerless = |fd: std::os::fd::BorrowedFd| {
        let mut fds = [PollFd::new(fd, PollFlags::empty())];
        poll(&mut fds, PollTimeout::ZERO).is_ok()
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLERR))
    };
    let mut list = watched();
    list.retain(|(f, _)| f.strong_count() > 0);
    for (f, path) in list.iter() {
        // held while polled, so the descriptor cannot be closed and reused meanwhile
        if let Some(f) = f.upgrade() {
            if readerless(f.as_fd()) {
                return Some(path.clone());
            }
        }
    }
    drop(list);
    let out = std::io::stdout();
    let is_pipe = File::from(out.as_fd().try_clone_to_owned().ok()?)
        .metadata()
        .is_ok_and(|m| m.file_type().is_fifo());
    (is_pipe && readerless(out.as_fd())).then(|| PathBuf::from("stdout"))
}

/// Claims the right to end the process with an error message: true for the first caller
/// only, so that a consumer noticed gone by two threads at once gives one line, not two.
pub fn claim_exit() -> bool {
    static CLAIMED: AtomicBool = AtomicBool::new(false);
    !CLAIMED.swap(true, Ordering::SeqCst)
}

/// Gives a pipe or FIFO a 1 MiB buffer (Linux's default is 64 KiB), so that a layer streamed
/// through it costs fewer context switches between the tool and its client; best effort
/// (other files, or a lower `/proc/sys/fs/pipe-max-size` for non-root, keep theirs).
pub fn widen_pipe(f: &File) {
    use std::os::fd::AsRawFd;
    if f.metadata().is_ok_and(|m| m.file_type().is_fifo()) {
        let _ = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    }
}

/// An output being written.
#[derive(Debug)]
pub enum Staged {
    /// A temporary file, renamed to the output's name on commit.
    Temp(NamedTempFile),
    /// The output itself, a stream written in place and in order (see [`is_stream`]).
    Stream {
        /// The open stream (shared with the watch of [`gone_stream`]).
        file: Arc<File>,
        /// Its name, for errors.
        path: PathBuf,
    },
}

impl Staged {
    /// Starts the output `path`: in place if it is a stream, else a temporary file in
    /// `tmp_dir` (or beside `path`).
    pub fn create(path: &Path, tmp_dir: Option<&Path>) -> Result<Staged> {
        if is_stream(path) {
            return Ok(Staged::Stream {
                file: open_stream(path)?,
                path: path.to_path_buf(),
            });
        }
        let tmp = match tmp_dir {
            Some(d) => temp_in(d)?,
            None => temp_beside(path)?,
        };
        Ok(Staged::Temp(tmp))
    }

    /// The file the bytes go to (`&File` writes).
    pub fn file(&self) -> &File {
        match self {
            Staged::Temp(t) => t.as_file(),
            Staged::Stream { file, .. } => file,
        }
    }

    /// A second handle on the file the bytes go to (for a buffered writer).
    pub fn writer(&self) -> Result<File> {
        match self {
            Staged::Temp(t) => t.reopen().ctx("open", t.path()),
            Staged::Stream { file, path } => file.try_clone().ctx("open", path),
        }
    }

    /// Puts the output in place: renames a temporary file to `path`; a stream is already
    /// written.
    pub fn commit(self, path: &Path) -> Result<()> {
        match self {
            Staged::Temp(t) => persist(t, path),
            Staged::Stream { .. } => Ok(()),
        }
    }
}

impl From<NamedTempFile> for Staged {
    fn from(t: NamedTempFile) -> Staged {
        Staged::Temp(t)
    }
}

/// Outputs complete under temporary names (or streamed already), to be put in place together.
#[derive(Debug, Default)]
pub struct Outputs {
    items: Vec<(Staged, PathBuf)>,
    /// Temporary directories (from [`temp_dir_beside`]) and their final names, renamed after
    /// the files (which may lie inside them).
    dirs: Vec<(PathBuf, PathBuf)>,
}

impl Outputs {
    /// An empty set.
    pub fn new() -> Outputs {
        Outputs::default()
    }

    /// Adds a finished output and its final name.
    pub fn add(&mut self, tmp: impl Into<Staged>, path: PathBuf) {
        self.items.push((tmp.into(), path));
    }

    /// Adds a finished temporary directory and its final name (which must not exist).
    pub fn add_dir(&mut self, tmp: PathBuf, path: PathBuf) {
        self.dirs.push((tmp, path));
    }

    /// Renames every output into place. If one fails, those already renamed are removed and
    /// the remaining temporary files are deleted: no final name is left behind.
    pub fn commit(mut self) -> Result<()> {
        failpoint::reached("commit");
        let _commit = commit_lock()?;
        let mut done: Vec<PathBuf> = Vec::new();
        for (tmp, path) in std::mem::take(&mut self.items) {
            let streamed = matches!(tmp, Staged::Stream { .. });
            let result = match tmp {
                Staged::Temp(t) => persist_unlocked(t, &path),
                Staged::Stream { .. } => Ok(()),
            };
            // (a failed persist drops, and so removes, its temporary file)
            if let Err(e) = result {
                for p in &done {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
            if !streamed {
                done.push(path);
            }
        }
        // (on an early return, the directories not yet renamed are removed by Drop)
        while let Some((tmp, path)) = self.dirs.pop() {
            if let Err(e) = rename_dir_unlocked(&tmp, &path) {
                for p in &done {
                    remove_path(p);
                }
                remove_path(&tmp);
                unregister(&tmp);
                return Err(e);
            }
            done.push(path);
        }
        Ok(())
    }
}

impl Drop for Outputs {
    /// Removes the temporary directories of a set that was not committed.
    fn drop(&mut self) {
        for (tmp, _) in self.dirs.drain(..) {
            remove_path(&tmp);
            unregister(&tmp);
        }
    }
}

/// A temporary directory beside `final_dir`, registered; renamed into place by
/// [`persist_dir`] or [`Outputs::commit`].
pub fn temp_dir_beside(final_dir: &Path) -> Result<PathBuf> {
    let parent = match final_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let d = temp_dir_in(parent)?.keep();
    register(&d);
    Ok(d)
}

/// A new temporary directory in `parent`, named like every temporary output.
#[allow(clippy::disallowed_methods)] // the one place temporary directories are made
fn temp_dir_in(parent: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(".erofs-forge.")
        .suffix(".tmp")
        .tempdir_in(parent)
        .map_err(|source| Error::Io {
            op: "create temporary directory in",
            path: parent.to_path_buf(),
            source,
        })
}

/// Renames a finished temporary directory to `final_dir` (which must not exist, or be an
/// empty directory).
pub fn persist_dir(tmp: &Path, final_dir: &Path) -> Result<()> {
    failpoint::reached("commit");
    let _commit = commit_lock()?;
    rename_dir_unlocked(tmp, final_dir)
}

/// Renames the temporary directory `tmp` to `final_dir` and forgets it, for a caller that holds
/// the commit lock.
fn rename_dir_unlocked(tmp: &Path, final_dir: &Path) -> Result<()> {
    std::fs::rename(tmp, final_dir).map_err(|source| Error::Io {
        op: "rename into",
        path: final_dir.to_path_buf(),
        source,
    })?;
    unregister(tmp);
    Ok(())
}

/// Removes a temporary directory after a failure.
pub fn discard_dir(tmp: &Path) {
    let _ = std::fs::remove_dir_all(tmp);
    unregister(tmp);
}

/// Renames a finished temporary file to its final name. A temporary file on another
/// filesystem (`create --tmp-dir`) is first copied beside the final name. A stream (see
/// [`is_stream`]) is not replaced: the file is copied into it in order, then removed.
pub fn persist(tmp: NamedTempFile, path: &Path) -> Result<()> {
    failpoint::reached("commit");
    let _commit = commit_lock()?;
    persist_unlocked(tmp, path)
}

/// [`persist`], for a caller that holds the commit lock.
fn persist_unlocked(tmp: NamedTempFile, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if is_stream(path) {
        return copy_into_stream(tmp, path);
    }
    // temporary files are created 0600; outputs are ordinary readable files
    let perms = std::fs::Permissions::from_mode(0o644);
    let tmp_path = tmp.path().to_path_buf();
    tmp.as_file()
        .set_permissions(perms)
        .ctx("chmod", &tmp_path)?;
    // no fsync: like mkfs.erofs and nydus-image, durability across power loss is left to the
    // caller (`sync`); the rename makes outputs appear whole or not at all to other processes
    match tmp.persist(path) {
        Ok(_) => {
            unregister(&tmp_path);
            Ok(())
        }
        Err(e) if e.error.raw_os_error() == Some(libc::EXDEV) => {
            let mut from = e.file;
            let mut copy = temp_beside(path)?;
            from.seek(std::io::SeekFrom::Start(0))
                .ctx("seek", &tmp_path)?;
            let copied = std::io::copy(&mut from, copy.as_file_mut());
            copied.map_err(|err| {
                let left = from
                    .as_file()
                    .metadata()
                    .ok()
                    .zip(copy.as_file().metadata().ok())
                    .map(|(a, b)| a.len().saturating_sub(b.len()));
                write_error(err, path, left)
            })?;
            drop(from);
            unregister(&tmp_path);
            persist_unlocked(copy, path)
        }
        Err(e) => {
            unregister(&tmp_path);
            Err(Error::Io {
                op: "rename into",
                path: path.to_path_buf(),
                source: e.error,
            })
        }
    }
}

/// Copies a finished temporary file into the stream `path` from its start, then removes it.
fn copy_into_stream(tmp: NamedTempFile, path: &Path) -> Result<()> {
    let tmp_path = tmp.path().to_path_buf();
    let mut from = tmp.reopen().ctx("open", &tmp_path)?;
    let to = open_stream(path)?;
    let result = std::io::copy(&mut from, &mut &*to);
    drop(tmp);
    unregister(&tmp_path);
    result.map_err(|e| write_error(e, path, None))?;
    Ok(())
}

/// Creates a temporary file in the directory that will hold `final_path`.
pub fn temp_beside(final_path: &Path) -> Result<NamedTempFile> {
    let dir = match final_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    temp_in(dir)
}

/// An unnamed temporary file in the system's temporary directory, for scratch data: it has no
/// name from the start, so nothing is left behind however the process ends (no signal cleanup
/// needed).
#[allow(clippy::disallowed_methods)] // this is the staged-output module's scratch file
pub fn scratch_file() -> Result<File> {
    tempfile::tempfile().map_err(|e| Error::Io {
        op: "create a scratch file in",
        path: std::env::temp_dir(),
        source: e,
    })
}

/// Creates a temporary file in `dir`, registered for removal on interruption.
#[allow(clippy::disallowed_methods)] // the one place temporary files are made
pub fn temp_in(dir: &Path) -> Result<NamedTempFile> {
    let tmp = tempfile::Builder::new()
        .prefix(".erofs-forge.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .ctx("create temporary file in", dir)?;
    register(tmp.path());
    Ok(tmp)
}

/// Writes `bytes` to `path` through a temporary file in the same directory (or in place, if
/// `path` is a stream).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_temp(path, bytes, None)?.commit(path)
}

/// Writes several files, each `(path, bytes)`, and puts them in place together: all of them or
/// none.
pub fn write_together(files: &[(&Path, &[u8])]) -> Result<()> {
    let mut outputs = Outputs::new();
    for (path, bytes) in files {
        outputs.add(write_temp(path, bytes, None)?, path.to_path_buf());
    }
    outputs.commit()
}

/// Writes `bytes` into a new temporary file (in `tmp_dir`, or beside `path`) that is to
/// become `path`, or straight into `path` if it is a stream. On a full disk the error names
/// `path` and the bytes not written.
pub fn write_temp(path: &Path, bytes: &[u8], tmp_dir: Option<&Path>) -> Result<Staged> {
    let out = Staged::create(path, tmp_dir)?;
    let mut f = out.file();
    if let Err(e) = f.write_all(bytes) {
        let written = f.metadata().map(|m| m.len()).unwrap_or(0);
        return Err(write_error(
            e,
            path,
            Some((bytes.len() as u64).saturating_sub(written)),
        ));
    }
    Ok(out)
}

/// A scratch directory for intermediate files: registered for removal on interruption, and
/// removed with its contents when dropped.
#[derive(Debug)]
pub struct ScratchDir(tempfile::TempDir);

impl ScratchDir {
    /// Creates a scratch directory inside `dir`.
    pub fn new_in(dir: &Path) -> Result<ScratchDir> {
        let d = temp_dir_in(dir)?;
        register(d.path());
        Ok(ScratchDir(d))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // the TempDir itself removes the directory right after
        unregister(self.0.path());
    }
}

/// Paths a run adds to a place that already exists and is shared (content-addressed blobs in
/// an OCI layout, the directories holding them), where a temporary name for the whole place is
/// not possible. Each path is registered before it is created, so an interruption removes it;
/// a failed run removes them when this is dropped; [`NewPaths::keep`] keeps them once the
/// run's final outputs are in place. Paths that existed before are never recorded.
#[derive(Debug, Default)]
pub struct NewPaths(Vec<PathBuf>);

impl NewPaths {
    /// Creates `dir` and its missing parents, recording the ones it creates.
    pub fn create_dir_all(&mut self, dir: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut p = dir;
        while !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err() {
            missing.push(p.to_path_buf());
            p = p.parent().unwrap_or(Path::new(""));
        }
        for d in missing.iter().rev() {
            self.record(d);
            match std::fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).ctx("create directory", d),
            }
        }
        Ok(())
    }

    /// Writes `bytes` as `path` (through a temporary file), recording `path` if it is new.
    pub fn write(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        if std::fs::symlink_metadata(path).is_err() {
            self.record(path);
        }
        write_atomic(path, bytes)
    }

    /// Renames the finished file `from` to `to`, recording `to`; `to` must not exist.
    pub fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        self.record(to);
        let _commit = commit_lock()?;
        std::fs::rename(from, to).ctx("move into place", from)
    }

    fn record(&mut self, path: &Path) {
        register(path);
        self.0.push(path.to_path_buf());
    }

    /// Keeps every recorded path (the run succeeded).
    pub fn keep(mut self) {
        for p in std::mem::take(&mut self.0) {
            unregister(&p);
        }
    }
}

impl Drop for NewPaths {
    fn drop(&mut self) {
        for p in self.0.drain(..).rev() {
            remove_path(&p);
            unregister(&p);
        }
    }
}
