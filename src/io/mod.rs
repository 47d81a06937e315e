//! Records in and predictions out: reading lines with a length cap, parsing JSON lines and CSV
//! into tensors, and formatting output and error lines.
//!
//! Nothing here knows about stages; the runtime moves what this module produces.

mod format;
mod parse;
mod reader;

pub use format::{argmax, write_rejection, OutputFormatter, RecordKey};
pub use parse::{ChunkMeta, InputFormat, ParsedChunk, RecordMeta, RecordParser, Rejection};
pub use reader::{read_lines, LineText, RawLine};

/// Capacity of the reader → chunker hand-off, in batches of lines.
pub const READER_QUEUE: usize = 2;

/// Default cap on one input line (`--max-line-bytes`).
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;
