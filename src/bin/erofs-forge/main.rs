//! The erofs-forge command line (nydus-image compatible): parse (`args`), resolve into library
//! options (`resolve`), run the library operation (`run`), print (`report`).

#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]

mod analyse;
mod args;
mod convert;
mod mkfs;
mod out;
mod report;
mod resolve;
mod run;

use crate::out::out;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::Parser;

use args::Cli;

fn init_logging(cli: &Cli) -> Result<()> {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&cli.log_level);
    // the TLS verifier logs each refused certificate itself; convert's one error line says it
    builder.filter_module("rustls_platform_verifier", log::LevelFilter::Off);
    if let Some(path) = &cli.log_file {
        let f =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        builder.target(env_logger::Target::Pipe(Box::new(f)));
    }
    builder.try_init().ok();
    Ok(())
}

/// On SIGINT, SIGTERM or SIGHUP: remove the temporary outputs (waiting for a rename into place
/// that is under way), then exit with 128 + the signal number.
fn handle_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // set inside the handler itself, so that a rename about to happen is refused even before
    // the cleanup thread below runs
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        let _ = signal_hook::flag::register(sig, erofs_forge::staged::interrupted());
    }
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: cannot handle signals ({e}); an interrupted run may leave temporary files");
            return;
        }
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            out::end_run(128 + sig, |n| {
                let s = if n == 1 { "" } else { "s" };
                format!("interrupted by signal {sig}: removed {n} temporary file{s}")
            });
        }
    });
}

/// Watches the stream outputs (FIFOs and pipes written in place, stdout when it is a pipe):
/// when a consumer goes away, the run stops within a tenth of a second with one line naming
/// the output, even if it would write nothing more to that stream for a long time.
fn watch_consumers() {
    std::thread::spawn(|| loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if let Some(path) = erofs_forge::staged::gone_stream() {
            out::end_run(1, |_| {
                format!("error: broken pipe writing {}", path.display())
            });
        }
    });
}

/// The mkfs.erofs arguments when the binary runs as `mkfs.erofs` (a link named so) or as
/// `erofs-forge mkfs ...`.
fn mkfs_args() -> Option<Vec<std::ffi::OsString>> {
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    let name = std::path::Path::new(&argv0).file_name()?.to_owned();
    let rest: Vec<_> = args.collect();
    if name == "mkfs.erofs" {
        return Some(rest);
    }
    (rest.first().is_some_and(|a| a == "mkfs")).then(|| rest[1..].to_vec())
}

fn main() -> ExitCode {
    if let Some(args) = mkfs_args() {
        handle_signals();
        return mkfs::main(args);
    }
    // `--version` in nydus-image's shape, not clap's one-line "name version"
    if resolve::asks_version(std::env::args_os().skip(1)) {
        out!("{}", report::version());
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    handle_signals();
    watch_consumers();
    if let Err(e) = init_logging(&cli) {
        eprintln!("error: {}", report::error_line(&e));
        return ExitCode::FAILURE;
    }
    if let args::Command::Verify(a) = cli.command {
        return analyse::verify(a);
    }
    match run::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if erofs_forge::staged::interrupted().load(Ordering::SeqCst)
                || !erofs_forge::staged::claim_exit() =>
        {
            // a signal or a consumer gone away stopped the run: the thread that saw it cleans
            // up and exits with its status; this error is only a consequence of it
            drop(e);
            std::thread::sleep(std::time::Duration::from_secs(10));
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {}", report::error_line(&e));
            // as nydus-image: 2 when images cannot be stacked (acceleration-service then
            // retries without its chunk-dictionary cache)
            let incompatible = matches!(
                e.downcast_ref::<erofs_forge::Error>(),
                Some(erofs_forge::Error::Incompatible { .. })
            );
            if incompatible {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
