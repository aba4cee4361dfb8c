//! Standard output that a consumer may stop reading: `println!` panics when stdout is a
//! closed pipe (Rust ignores SIGPIPE), so every line goes through [`line`], which turns a
//! failed write into one `error:` line naming stdout, removes the temporary outputs and exits
//! non-zero.

use std::io::Write;

/// Prints like `println!`, through [`line`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Prints like `print!` (no newline added), through [`text`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::text(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// Writes one line to stdout, or stops the process if stdout is gone.
pub fn line(args: std::fmt::Arguments) {
    text(format_args!("{args}\n"));
}

/// Writes `args` to stdout and flushes, or stops the process if stdout is gone.
pub fn text(args: std::fmt::Arguments) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|()| o.flush()) {
        gone(&e);
    }
}

fn gone(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        end_run(1, |_| "error: broken pipe writing stdout".into())
    } else {
        end_run(1, |_| format!("error: write stdout: {e}"))
    }
}

/// Ends the process from any thread: removes the temporary outputs, prints `line` (given how
/// many were removed) and exits with `code`; if another thread is already ending it (a signal
/// and a vanished consumer at once), waits for that one instead, so that the run ends with one
/// line.
pub fn end_run(code: i32, line: impl FnOnce(usize) -> String) -> ! {
    let removed = erofs_forge::staged::remove_all();
    if erofs_forge::staged::claim_exit() {
        eprintln!("{}", line(removed));
        std::process::exit(code);
    }
    loop {
        std::thread::park();
    }
}
