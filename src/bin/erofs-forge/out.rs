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
    erofs_forge::staged::remove_all();
    if !erofs_forge::staged::claim_exit() {
        // another thread is ending the process with its own message
        std::thread::sleep(std::time::Duration::from_secs(10));
    }
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        eprintln!("error: broken pipe writing stdout");
    } else {
        eprintln!("error: write stdout: {e}");
    }
    std::process::exit(1);
}
