//! Records in and predictions out: files or standard streams ([`open_input`]), reading lines with
//! a length cap ([`read_lines`]), numbers ([`parse_json_number`]), records of JSON lines and CSV
//! into tensors ([`RecordParser`]), image files into model inputs ([`ImagePreprocess`]), and
//! output and error lines ([`OutputFormatter`]).
//!
//! Nothing here knows about stages; the runtime moves what this module produces.

mod flat_avx512;
mod format;
mod image;
mod number;
mod reader;
mod record;
mod streams;
mod text;

pub use format::{argmax, output_names, write_rejection, OutputFormatter, RecordKey};
pub use image::ImagePreprocess;
pub use number::{parse_csv_number, parse_json_number};
pub use reader::{read_lines, LineText, RawLine, MIN_READ_BUFFER};
pub use record::{ChunkMeta, InputFormat, ParsedChunk, RecordMeta, RecordParser, Rejection};
pub use streams::{create_output, open_input};
pub use text::{token_estimate, TextTokenizer};

/// Capacity of the reader → chunker hand-off, in batches of lines.
pub const READER_QUEUE: usize = 2;

/// Default cap on one input line (`--max-line-bytes`).
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;
