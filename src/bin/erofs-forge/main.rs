//! The erofs-forge command line (nydus-image compatible): parse (`args`), resolve into library
//! options (`resolve`), run the library operation (`run`), print (`report`).

#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]

mod analyse;
mod args;
mod report;
mod resolve;
mod run;

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::Parser;

use args::Cli;

fn init_logging(cli: &Cli) -> Result<()> {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&cli.log_level);
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
            let n = erofs_forge::staged::remove_all();
            eprintln!(
                "interrupted by signal {sig}: removed {n} temporary file{}",
                if n == 1 { "" } else { "s" }
            );
            std::process::exit(128 + sig);
        }
    });
}

fn main() -> ExitCode {
    // `--version` in nydus-image's shape, not clap's one-line "name version"
    if resolve::asks_version(std::env::args_os().skip(1)) {
        print!("{}", report::version());
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    handle_signals();
    if let Err(e) = init_logging(&cli) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    if let args::Command::Verify(a) = cli.command {
        return analyse::verify(a);
    }
    match run::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if erofs_forge::staged::interrupted().load(Ordering::SeqCst) => {
            // a signal stopped the run: its handler thread cleans up and exits with the
            // signal's status; this error is only a consequence of it
            drop(e);
            std::thread::sleep(std::time::Duration::from_secs(10));
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
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
