//! `chunkdict generate`: records the chunks of several images in a SQLite database (the
//! tables nydus-image uses: `chunk`, `blob`), picks the chunks worth sharing, and writes a
//! chunk-dictionary bootstrap that `create --chunk-dict` and `merge --chunk-dict` take.
//!
//! The rule: a chunk goes into the dictionary when at least two of the recorded image versions
//! hold it (with one version recorded, all its chunks). Upstream clusters images (DBSCAN over
//! shared chunks, then exponential smoothing over versions); a chunk that survived from one
//! version to another is the one likely to survive into the next, which is what the
//! dictionary is for, and on the test images the simple rule keeps every such chunk.
//!
//! The dictionary is a bootstrap like any other, so every reader takes it: a directory
//! `/chunkdict` holding one file per chunk (file `N` = chunk `N`, its size the chunk's), whose
//! chunks point into the source images' blobs, with those blobs' table entries.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::io::staged::{temp_beside, write_temp, Outputs};
use crate::model::stack::{empty_tree, StackKey};
use crate::model::{
    BlobEntry, ChunkId, ChunkInfo, DataSource, EntryId, FileType, Image, Inode, InodeKind,
    RegularFile, Tree,
};
use crate::ops::report::Report;
use crate::rafs;

/// Options of `chunkdict generate`, as nydus-image spells them.
#[derive(Debug, Clone)]
pub struct ChunkdictOptions {
    /// Source bootstraps, each saved as `<dir named image ref>/<file>` (nydusify:
    /// `WORK/<registry:port:name:tag>/nydus_bootstrap`).
    pub sources: Vec<PathBuf>,
    /// The database, `sqlite://` + an absolute path.
    pub database: String,
    /// The dictionary bootstrap to write.
    pub bootstrap: PathBuf,
    /// Write the result as JSON.
    pub output_json: Option<PathBuf>,
}

/// What `chunkdict generate` did.
#[derive(Debug, Clone)]
pub struct ChunkdictOutput {
    /// The dictionary bootstrap.
    pub bootstrap: PathBuf,
    /// Ids of the blobs the dictionary references.
    pub blobs: Vec<String>,
    /// Chunks recorded in the database by this run (one per distinct chunk per image version).
    pub recorded: u64,
    /// Distinct chunks seen.
    pub distinct: u64,
    /// Chunks in the dictionary.
    pub chosen: u64,
}

/// One source image: its name and version (from its directory's name) and its decoded image.
struct Source {
    image_ref: String,
    version: String,
    image: Image,
}

/// Runs `chunkdict generate`.
pub fn generate(opts: &ChunkdictOptions) -> Result<ChunkdictOutput> {
    let db_path = database_path(&opts.database)?;
    let sources = load_sources(&opts.sources)?;
    let db = StagedDb::open(&db_path)?;
    let mut conn = open_db(db.work_path(), &db_path)?;
    let mut recorded = 0;
    for s in &sources {
        recorded += record(&mut conn, &db_path, s)?;
    }
    let chosen = choose(&conn, &db_path)?;
    let (tree, chunks, blobs, distinct) = dictionary(&sources, &chosen)?;
    if chunks.is_empty() {
        return Err(Error::InvalidOption(
            "no chunk is shared by two of the image versions: the dictionary would be empty".into(),
        ));
    }
    drop(conn);
    let first = &sources[0].image;
    let boot = rafs::encode_like(first, &tree, &chunks, &blobs, false, Vec::new())?;
    let mut outputs = Outputs::new();
    db.add_to(&mut outputs, &db_path);
    outputs.add(
        write_temp(&opts.bootstrap, &boot, None)?,
        opts.bootstrap.clone(),
    );
    let ids: Vec<String> = blobs.iter().map(|b| b.id.clone()).collect();
    if let Some(j) = &opts.output_json {
        let doc = Report::new(
            opts.bootstrap.display().to_string(),
            ids.clone(),
            first.version,
            first.compressor,
        );
        outputs.add(write_temp(j, doc.pretty().as_bytes(), None)?, j.clone());
    }
    outputs.commit()?;
    Ok(ChunkdictOutput {
        bootstrap: opts.bootstrap.clone(),
        blobs: ids,
        recorded,
        distinct,
        chosen: chunks.len() as u64,
    })
}

/// The database as this run changes it: a copy beside it (or a new file), renamed over it with
/// the other outputs, so that an interrupted or failed run leaves the database as it was and no
/// journal behind. An in-memory database (`:memory:`) is used as is.
enum StagedDb {
    InMemory(PathBuf),
    Copy(tempfile::NamedTempFile),
}

impl StagedDb {
    fn open(path: &Path) -> Result<StagedDb> {
        if path.starts_with(":") {
            return Ok(StagedDb::InMemory(path.to_path_buf()));
        }
        let mut tmp = temp_beside(path)?;
        match std::fs::File::open(path) {
            Ok(mut f) => {
                std::io::copy(&mut f, tmp.as_file_mut()).ctx("copy", path)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("open", path),
        }
        Ok(StagedDb::Copy(tmp))
    }

    /// Where SQLite works.
    fn work_path(&self) -> &Path {
        match self {
            StagedDb::InMemory(p) => p,
            StagedDb::Copy(t) => t.path(),
        }
    }

    fn add_to(self, outputs: &mut Outputs, path: &Path) {
        if let StagedDb::Copy(t) = self {
            outputs.add(t, path.to_path_buf());
        }
    }
}

/// The file of a `sqlite://PATH` URL; PATH must be absolute (or `:memory:`), as upstream asks.
fn database_path(url: &str) -> Result<PathBuf> {
    let bad = |why: &str| {
        Error::InvalidOption(format!(
            "--database {url:?}: {why}; use sqlite:///absolute/path/database.db"
        ))
    };
    let (scheme, path) = url
        .split_once("://")
        .ok_or_else(|| bad("not a database URL"))?;
    if scheme != "sqlite" {
        return Err(bad(&format!("unsupported database type {scheme:?}")));
    }
    if !path.starts_with('/') && !path.starts_with(':') {
        return Err(bad("the path is not absolute"));
    }
    Ok(PathBuf::from(path))
}

/// Loads the sources; their image name and version come from the directory each is saved in
/// (`...:name:tag`, as nydusify names it), else the directory's name and the source's
/// position. Every source must stack with the first (version, chunk size, digester).
fn load_sources(paths: &[PathBuf]) -> Result<Vec<Source>> {
    if paths.is_empty() {
        return Err(Error::InvalidOption(
            "chunkdict generate needs at least one bootstrap".into(),
        ));
    }
    let mut out: Vec<Source> = Vec::with_capacity(paths.len());
    for (i, p) in paths.iter().enumerate() {
        let image = rafs::load(p)?.image;
        if let Some(first) = out.first() {
            StackKey::of(&first.image)
                .check(&StackKey::of(&image), &format!("bootstrap {}", p.display()))?;
        }
        let dir = p
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fields: Vec<&str> = dir.split(':').collect();
        let (image_ref, version) = match fields.as_slice() {
            [.., name, tag] => (name.to_string(), tag.to_string()),
            _ => (dir.clone(), format!("#{i}")),
        };
        out.push(Source {
            image_ref,
            version,
            image,
        });
    }
    Ok(out)
}

fn db_error(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::Database {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Opens (creating) the database with nydus-image's two tables: SQLite works on `work`, errors
/// name the database `path`.
fn open_db(work: &Path, path: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(work).map_err(db_error(path))?;
    // a private copy, put in place whole (StagedDb): a journal file would only be one more
    // file to leave behind
    conn.execute_batch(
        "PRAGMA journal_mode = OFF;
         CREATE TABLE IF NOT EXISTS chunk (
            id INTEGER PRIMARY KEY,
            image_reference TEXT,
            version TEXT,
            chunk_blob_id TEXT NOT NULL,
            chunk_digest TEXT,
            chunk_crc32 INT,
            chunk_compressed_size INT,
            chunk_uncompressed_size INT,
            chunk_compressed_offset INT,
            chunk_uncompressed_offset INT);
         CREATE TABLE IF NOT EXISTS blob (
            id INTEGER PRIMARY KEY,
            blob_id TEXT NOT NULL,
            blob_compressed_size INT,
            blob_uncompressed_size INT,
            blob_compressor TEXT,
            blob_meta_ci_compressed_size INT,
            blob_meta_ci_uncompressed_size INT,
            blob_meta_ci_offset INT);",
    )
    .map_err(db_error(path))?;
    Ok(conn)
}

/// Records one image version's distinct chunks (replacing an earlier record of the same
/// version) and its blobs not yet recorded; returns how many chunk rows it wrote.
fn record(conn: &mut rusqlite::Connection, path: &Path, s: &Source) -> Result<u64> {
    let tx = conn.transaction().map_err(db_error(path))?;
    tx.execute(
        "DELETE FROM chunk WHERE image_reference = ?1 AND version = ?2",
        (&s.image_ref, &s.version),
    )
    .map_err(db_error(path))?;
    let mut rows = 0;
    let mut seen = HashSet::new();
    for (c, known) in s.image.chunks.iter().zip(&s.image.digest_known) {
        let Some(blob) = s.image.blobs.get(c.blob_index as usize) else {
            continue;
        };
        if !*known || !seen.insert((c.blob_index, c.index)) {
            continue;
        }
        tx.execute(
            "INSERT INTO chunk (image_reference, version, chunk_blob_id, chunk_digest,
                chunk_crc32, chunk_compressed_size, chunk_uncompressed_size,
                chunk_compressed_offset, chunk_uncompressed_offset)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            rusqlite::params![
                s.image_ref,
                s.version,
                blob.id,
                hex::encode(c.digest),
                c.crc32,
                c.compressed_size,
                c.uncompressed_size,
                c.compressed_offset as i64,
                c.uncompressed_offset as i64,
            ],
        )
        .map_err(db_error(path))?;
        rows += 1;
    }
    for b in &s.image.blobs {
        tx.execute(
            "INSERT INTO blob (blob_id, blob_compressed_size, blob_uncompressed_size,
                blob_compressor, blob_meta_ci_compressed_size, blob_meta_ci_uncompressed_size,
                blob_meta_ci_offset)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7
             WHERE NOT EXISTS (SELECT 1 FROM blob WHERE blob_id = ?1)",
            rusqlite::params![
                b.id,
                b.compressed_size as i64,
                b.uncompressed_size as i64,
                b.compressor.name(),
                b.ci_compressed_size as i64,
                b.ci_uncompressed_size as i64,
                b.ci_offset as i64,
            ],
        )
        .map_err(db_error(path))?;
    }
    tx.commit().map_err(db_error(path))?;
    Ok(rows)
}

/// The chunks (digest, size) held by at least two recorded image versions; all of them when
/// only one version is recorded.
fn choose(conn: &rusqlite::Connection, path: &Path) -> Result<HashSet<(String, u32)>> {
    let versions: i64 = conn
        .query_row(
            "SELECT COUNT(DISTINCT image_reference || ':' || version) FROM chunk",
            [],
            |r| r.get(0),
        )
        .map_err(db_error(path))?;
    let min = if versions < 2 { 1 } else { 2 };
    let mut stmt = conn
        .prepare(
            "SELECT chunk_digest, chunk_uncompressed_size FROM chunk
             GROUP BY chunk_digest, chunk_uncompressed_size
             HAVING COUNT(DISTINCT image_reference || ':' || version) >= ?1",
        )
        .map_err(db_error(path))?;
    let rows = stmt
        .query_map([min], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
        .map_err(db_error(path))?;
    rows.collect::<rusqlite::Result<HashSet<_>>>()
        .map_err(db_error(path))
}

/// The dictionary: the chosen chunks, each as found in the first source holding it, with the
/// table entries of their blobs; the tree holding one file per chunk. Also returns how many
/// distinct chunks the sources hold.
fn dictionary(
    sources: &[Source],
    chosen: &HashSet<(String, u32)>,
) -> Result<(Tree, Vec<ChunkInfo>, Vec<BlobEntry>, u64)> {
    let mut chunks = Vec::new();
    let mut blobs: Vec<BlobEntry> = Vec::new();
    let mut blob_index: HashMap<String, u32> = HashMap::new();
    let mut seen: HashSet<([u8; 32], u32)> = HashSet::new();
    for s in sources {
        for (c, known) in s.image.chunks.iter().zip(&s.image.digest_known) {
            if !*known || !seen.insert((c.digest, c.uncompressed_size)) {
                continue;
            }
            if !chosen.contains(&(hex::encode(c.digest), c.uncompressed_size)) {
                continue;
            }
            let Some(blob) = s.image.blobs.get(c.blob_index as usize) else {
                continue;
            };
            let index = *blob_index.entry(blob.id.clone()).or_insert_with(|| {
                blobs.push(blob.referenced_from_outside());
                blobs.len() as u32 - 1
            });
            chunks.push(ChunkInfo {
                blob_index: index,
                ..*c
            });
        }
    }
    let tree = chunk_tree(&chunks)?;
    Ok((tree, chunks, blobs, seen.len() as u64))
}

/// `/chunkdict/N`: one read-only file per chunk, each exactly its chunk's size, so the
/// dictionary is a valid image (every file's chunks cover it).
fn chunk_tree(chunks: &[ChunkInfo]) -> Result<Tree> {
    let mut tree = empty_tree();
    let dir = tree.add_inode(Inode::new(FileType::Directory, 0o755));
    let dir = tree.add_entry(EntryId::ROOT, b"chunkdict", dir)?;
    let width = chunks.len().to_string().len();
    for (i, c) in chunks.iter().enumerate() {
        let file = Inode::with_kind(
            InodeKind::Regular(RegularFile {
                size: u64::from(c.uncompressed_size),
                data: DataSource::None,
                chunks: vec![ChunkId::new(i as u32)],
            }),
            0o444,
        );
        let ino = tree.add_inode(file);
        tree.add_entry(dir, format!("{i:0width$}").as_bytes(), ino)?;
    }
    tree.sort();
    Ok(tree)
}
