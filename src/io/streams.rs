//! Where records come from and where lines go: a named file, or a standard stream when the path
//! is `-` or absent. Errors name the file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// A path that names a file, not a standard stream.
fn named(path: Option<&Path>) -> Option<&Path> {
    path.filter(|p| p.as_os_str() != "-")
}

/// The file at `path`, or stdin.
pub fn open_input(path: Option<&Path>) -> io::Result<Box<dyn Read + Send>> {
    match named(path) {
        Some(p) => File::open(p)
            .map(|f| Box::new(f) as Box<dyn Read + Send>)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", p.display()))),
        None => Ok(Box::new(io::stdin())),
    }
}

/// The file at `path`, created or truncated, or the stream `standard` gives (`io::stdout`,
/// `io::stderr`).
pub fn create_output<W: Write + Send + 'static>(
    path: Option<&Path>,
    standard: fn() -> W,
) -> io::Result<Box<dyn Write + Send>> {
    match named(path) {
        Some(p) => File::create(p)
            .map(|f| Box::new(f) as Box<dyn Write + Send>)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", p.display()))),
        None => Ok(Box::new(standard())),
    }
}
