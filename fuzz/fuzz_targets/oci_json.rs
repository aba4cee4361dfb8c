//! OCI input (`create -t oci`): an OCI archive or `docker save` tar whose files come from the
//! input, indexed and walked by `open_image` (index.json, nested indexes, image manifests,
//! configs, docker's manifest.json; formats/oci.md), for one of a few platforms, with or
//! without a `:REF`. The store reads a path, so the archive is written to tmpfs once per input.
//!
//! Input: a control byte (bits 0-1: platform; bit 2: ask for `:latest`; bit 3: the rest is the
//! tar itself), then files, each a name length (u8), the name, a size (u16) and the bytes.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use erofs_forge::fuzzing::{open_image, Platform};
use erofs_forge_fuzz::Input;
use libfuzzer_sys::fuzz_target;

const PLATFORMS: [&str; 4] = [
    "linux/amd64",
    "linux/arm64/v8",
    "linux/arm/v7",
    "windows/amd64",
];

/// This process's archive: in /dev/shm when there is one.
fn archive() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::path::Path::new("/dev/shm");
        let dir = if dir.is_dir() {
            dir.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("erofs-forge-fuzz-oci-{}.tar", std::process::id()))
    })
}

/// The files of the input as a tar.
fn write_tar(input: &mut Input<'_>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    while !input.0.is_empty() {
        let n = usize::from(input.u8());
        let name = String::from_utf8_lossy(input.bytes(n)).into_owned();
        let size = usize::from(input.u16());
        let body = input.bytes(size);
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        // names the tar crate refuses (empty, `..`) are left out
        let _ = b.append_data(&mut h, &name, body);
    }
    b.into_inner().unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let ctl = input.u8();
    let bytes = if ctl & 8 != 0 {
        input.rest().to_vec()
    } else {
        write_tar(&mut input)
    };
    let path = archive();
    std::fs::write(path, &bytes).expect("write the archive to tmpfs");
    let want = Platform::parse(PLATFORMS[usize::from(ctl & 3)]).expect("a valid platform");
    let source = if ctl & 4 != 0 {
        PathBuf::from(format!("{}:latest", path.display()))
    } else {
        path.clone()
    };
    if let Ok(image) = open_image(&source, &want) {
        for l in &image.layers {
            let _ = image.store.exists(&l.name);
            let _ = image.store.reader(&l.name);
        }
        if let Some(p) = &image.platform {
            let _ = Platform::parse(&p.to_string());
        }
    }
});
