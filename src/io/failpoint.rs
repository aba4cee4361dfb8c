//! Named points of a run where a test can freeze the process, to act on it at an exact moment
//! (send a signal while a temporary output exists, swap a source file for a directory after the
//! walk, kill a consumer mid-stream) instead of guessing with sleeps.
//!
//! `EROFS_FORGE_STOP_AT=NAME:N` makes the process stop itself (`SIGSTOP`) the `N`th time it
//! reaches the point `NAME` (`N` defaults to 1), after printing `stopped at NAME N` on stderr;
//! the test then does what it needs and sends `SIGCONT` (or any signal, which is handled once
//! the process continues). Without the variable a point costs one relaxed atomic load.
//!
//! Points: `temp` (a temporary output path was just registered), `commit` (outputs are about to
//! be renamed into place), `file` (the walk of a directory source just found a regular file,
//! whose data is read later), `chunk` (a chunk was written to a blob), `read` (a chunk is
//! about to be read from a blob).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The variable that names the point to stop at.
pub const VAR: &str = "EROFS_FORGE_STOP_AT";

fn target() -> Option<&'static (String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let v = std::env::var(VAR).ok()?;
            let (name, n) = match v.split_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().ok()?),
                None => (v, 1),
            };
            Some((name, n))
        })
        .as_ref()
}

/// Marks that the run reached the point `name`; stops the process if it is the one asked for.
pub fn reached(name: &str) {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Some((want, n)) = target() else {
        return;
    };
    if want != name {
        return;
    }
    if COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        eprintln!("stopped at {name} {n}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
        // a signal sent while stopped is delivered to whichever thread runs first after
        // SIGCONT: give its handler the time to run, so that it acts at this point and not a
        // little later
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
