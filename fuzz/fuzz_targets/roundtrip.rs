//! Round trip: an arbitrary small tree, written as a tar, is built with the library's `create`
//! (v5 or v6, each compressor, small chunk sizes) into a temporary directory; the bootstrap is
//! decoded and its tree and file data (read back from the blob and verified) must equal what
//! the tar reader made of the archive.
#![no_main]
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use erofs_forge::fuzzing::read_tar;
use erofs_forge::ops::create::{create, CreateOptions, NoProgress, SourceType};
use erofs_forge::read::{BlobSource, ChunkReader};
use erofs_forge::Compressor;
use erofs_forge::{EntryId, FileType, InodeId, Tree};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] = [
    "a",
    "b",
    "dir",
    "x y",
    "\u{e9}t\u{e9}",
    ".wh.w",
    "c\nd",
    "L",
];
const TARGETS: [&str; 5] = ["a", "../../etc/passwd", "/abs/olute", "dir/x y", "T"];

#[derive(Arbitrary, Debug)]
struct Desc {
    v5: bool,
    compressor: u8,
    chunk_shift: u8,
    entries: Vec<Ent>,
}

#[derive(Arbitrary, Debug)]
struct Ent {
    path: Vec<u8>,
    kind: u8,
    mode: u16,
    uid: u32,
    gid: u32,
    mtime: u32,
    nsec: Option<u32>,
    data: Vec<u8>,
    repeat: u16,
    target: u8,
    xattrs: Vec<(u8, Vec<u8>)>,
    major: u8,
    minor: u8,
}

fn name(i: u8) -> String {
    match NAMES[i as usize % NAMES.len()] {
        "L" => "L".repeat(200 + i as usize % 56),
        n => n.to_string(),
    }
}

fn path_of(p: &[u8]) -> Option<String> {
    if p.is_empty() {
        return None;
    }
    Some(
        p.iter()
            .take(4)
            .map(|c| name(*c))
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// Writes the description as a tar (GNU long names, PAX xattrs and nanosecond mtimes).
fn write_tar(d: &Desc) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut files: Vec<String> = Vec::new();
    for e in d.entries.iter().take(24) {
        let Some(path) = path_of(&e.path) else {
            continue;
        };
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        for (k, v) in e.xattrs.iter().take(4) {
            let v: Vec<u8> = v.iter().take(64).copied().collect();
            pax.push((format!("SCHILY.xattr.user.k{}", k % 8), v));
        }
        if let Some(n) = e.nsec {
            pax.push((
                "mtime".into(),
                format!("{}.{:09}", e.mtime, n % 1_000_000_000).into_bytes(),
            ));
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .expect("pax");
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(u32::from(e.mode) & 0o7777);
        h.set_uid(u64::from(e.uid));
        h.set_gid(u64::from(e.gid));
        h.set_mtime(u64::from(e.mtime));
        match e.kind % 6 {
            0 => {
                let mut data: Vec<u8> = e.data.iter().take(3000).copied().collect();
                let n = data.len();
                if n > 0 {
                    // repeated content gives multi-chunk files with duplicate chunks
                    for _ in 0..e.repeat % 8 {
                        data.extend_from_within(..n);
                    }
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &path, data.as_slice()).expect("file");
                files.push(path);
            }
            1 => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &path, std::io::empty()).expect("dir");
            }
            2 => {
                let t = match TARGETS[e.target as usize % TARGETS.len()] {
                    "T" => "t/".repeat(150),
                    t => t.to_string(),
                };
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &path, &t).expect("symlink");
            }
            3 if !files.is_empty() => {
                let t = files[e.target as usize % files.len()].clone();
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, &path, &t).expect("hardlink");
            }
            4 => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(u32::from(e.major)).expect("major");
                h.set_device_minor(u32::from(e.minor)).expect("minor");
                h.set_size(0);
                b.append_data(&mut h, &path, std::io::empty()).expect("dev");
            }
            _ => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_size(0);
                b.append_data(&mut h, &path, std::io::empty())
                    .expect("fifo");
            }
        }
    }
    b.into_inner().expect("finish tar")
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    file_type: FileType,
    permissions: u16,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    size: u64,
    rdev: u32,
    target: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first path (in path order) of the entry's inode, for hardlinks.
    group: PathBuf,
}

fn flatten(tree: &Tree, link_all: bool) -> BTreeMap<PathBuf, (Seen, InodeId)> {
    let mut first: HashMap<InodeId, PathBuf> = HashMap::new();
    let mut paths: Vec<(PathBuf, EntryId)> = tree.entry_ids().map(|e| (tree.path(e), e)).collect();
    paths.sort();
    let mut out = BTreeMap::new();
    for (p, e) in paths {
        let ino = tree[e].inode;
        let i = &tree[ino];
        let linked = link_all || i.file_type() == FileType::Regular;
        let group = if linked {
            first.entry(ino).or_insert_with(|| p.clone()).clone()
        } else {
            p.clone()
        };
        let seen = Seen {
            file_type: i.file_type(),
            permissions: i.permissions,
            uid: i.uid,
            gid: i.gid,
            mtime: i.mtime,
            mtime_nsec: i.mtime_nsec,
            size: i.size(),
            rdev: i.rdev(),
            target: i.target().to_vec(),
            xattrs: i.xattrs.clone(),
            group,
        };
        out.insert(p, (seen, ino));
    }
    out
}

fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temporary directory")
}

fuzz_target!(|d: Desc| {
    let tar_bytes = write_tar(&d);
    let mut capture = erofs_forge_fuzz::Capture::default();
    let Ok(expected) = read_tar(&mut tar_bytes.as_slice(), Path::new("t"), &mut capture) else {
        // entries that contradict each other (a file used as a directory): not a tree
        return;
    };
    let dir = scratch();
    let src = dir.path().join("in.tar");
    std::fs::write(&src, &tar_bytes).expect("write tar");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let boot = dir.path().join("bootstrap");
    let opts = CreateOptions {
        source: src,
        source_type: SourceType::Tar,
        fs_version: if d.v5 { 5 } else { 6 },
        bootstrap: Some(boot.clone()),
        blob_dir: Some(out.clone()),
        compressor: Some(match d.compressor % 3 {
            0 => Compressor::None,
            1 => Compressor::Lz4Block,
            _ => Compressor::Zstd,
        }),
        chunk_size: 0x1000 << (d.chunk_shift % 3),
        threads: 1,
        ..CreateOptions::default()
    };
    if let Err(e) = create(&opts, &NoProgress) {
        panic!("create failed on a tree the tar reader accepts: {e}");
    }
    let bytes = std::fs::read(&boot).expect("read bootstrap");
    let image = match erofs_forge::read::decode(&bytes) {
        Ok(i) => i,
        Err(e) => panic!("our own bootstrap does not decode: {e}"),
    };
    if let Err(e) = image.validate() {
        panic!("our own bootstrap does not validate: {e}");
    }
    // v5 keeps only regular files hardlinked
    let want = flatten(&expected, !d.v5);
    let got = flatten(&image.tree, !d.v5);
    let strip = |m: &BTreeMap<PathBuf, (Seen, InodeId)>| -> Vec<(PathBuf, String)> {
        m.iter()
            .map(|(p, (s, _))| (p.clone(), format!("{s:?}")))
            .collect()
    };
    assert_eq!(strip(&want), strip(&got), "trees differ");
    let mut reader = ChunkReader::new(
        &image,
        BlobSource {
            dir: Some(out.clone()),
            ..BlobSource::default()
        },
    );
    for (p, (s, ino)) in &got {
        if s.file_type != FileType::Regular {
            continue;
        }
        let mut data = Vec::new();
        for id in image.tree[*ino].chunks() {
            match reader.read(*id) {
                Ok(c) => data.extend_from_slice(&c),
                Err(e) => panic!("{}: chunk {id}: {e}", p.display()),
            }
        }
        let want_ino = want[p].1;
        let want_data = capture.files.get(&want_ino).cloned().unwrap_or_default();
        assert_eq!(data.len(), want_data.len(), "{}: size", p.display());
        assert!(data == want_data, "{}: data differs", p.display());
    }
});
