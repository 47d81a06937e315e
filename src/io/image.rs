//! Image records: a JPEG or PNG file (or its bytes in base64) becomes the model input
//! `[3, crop, crop]`, as torchvision's
//! `Compose([Resize(resize), CenterCrop(crop), ToTensor(), Normalize(mean, std)])` makes it from
//! `PIL.Image.open(path).convert("RGB")`.
//!
//! - Decoding: JPEG with zune-jpeg in strict mode (a truncated or corrupt stream is an error, as
//!   in PIL, instead of a picture filled with grey); PNG with the `png` crate, palettes and low
//!   bit depths expanded to 8 bits and 16-bit samples cut to their high byte (as PIL does for
//!   RGB). Grey images stay one channel until the end, where each grey value is used for all
//!   three channels (PIL's `convert("RGB")`); alpha is dropped, not blended. EXIF orientation
//!   is ignored, as PIL's `open` ignores it.
//! - Size limits (`input.image.max_side`, 8000 pixels a side, and `max_bytes`, 100 MB of file,
//!   by default) are checked from the file's size and the image's header, before any pixel is
//!   decoded, so the memory a parser needs has a bound ([`ImagePreprocess::working_bytes`]) the
//!   plan can print.
//! - Resizing: PIL's bilinear filter with antialiasing (the filter widens with the scale), in
//!   PIL's order, rows then columns, each pass rounded to 8 bits, through fast_image_resize's
//!   SIMD convolutions. Only the pixels of the centre crop are computed: the crop box is handed
//!   to the resizer, whose filter windows still reach the pixels around it, so the result equals
//!   resizing the whole image and cropping it.
//! - `ToTensor` and `Normalize` are one lookup per value: `(v / 255 - mean) / std` in f32,
//!   computed as torchvision computes it, for each of the 256 levels of each channel.

use std::io::Read;
use std::path::Path;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::config::ImageInput;

/// Bytes per pixel a JPEG decode may hold at once: zune-jpeg keeps the 16-bit coefficients of
/// every component of a progressive (or non-interleaved) image, up to 4 components (CMYK), plus
/// the 3-byte RGB output.
const JPEG_BYTES_PER_PIXEL: u64 = 4 * 2 + 3;
/// A JPEG's planes are padded to whole 16-pixel MCUs.
const MCU_PAD: u64 = 16;
/// What the `png` crate may allocate besides the image: metadata chunks (text and ICC profiles
/// are skipped) up to 1 MiB, and its row buffers, a few rows of up to 8 bytes a pixel.
const PNG_METADATA_BYTES: u64 = 1 << 20;
const PNG_ROW_BYTES_PER_PIXEL: u64 = 64;
/// Bytes per pixel of a decoded PNG: at most 4 channels of 8 bits (16-bit samples are cut).
const PNG_BYTES_PER_PIXEL: u64 = 4;

/// Turns image bytes into a normalized `[3, crop, crop]` tensor.
#[derive(Debug, Clone)]
pub struct ImagePreprocess {
    resize: u32,
    crop: u32,
    /// Largest width and height decoded.
    max_side: u32,
    /// Largest file (or base64-decoded record) read.
    max_bytes: u64,
    /// `(level / 255 - mean[c]) / std[c]` for each channel `c` and 8-bit level.
    levels: Box<[[f32; 256]; 3]>,
}

/// A decoded image: 8-bit samples, row by row, grey (1 channel) or RGB (3).
struct Pixels {
    width: u32,
    height: u32,
    channels: usize,
    data: Vec<u8>,
}

impl ImagePreprocess {
    pub fn new(config: &ImageInput) -> ImagePreprocess {
        let mut levels = Box::new([[0f32; 256]; 3]);
        for (c, row) in levels.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                // torchvision: `img.float().div(255)`, then `tensor.sub_(mean).div_(std)`, in f32.
                *out = (v as f32 / 255.0 - config.mean[c]) / config.std[c];
            }
        }
        ImagePreprocess {
            resize: config.resize as u32,
            crop: config.crop as u32,
            max_side: config.max_side as u32,
            max_bytes: config.max_bytes,
            levels,
        }
    }

    /// Values per record: `3 × crop × crop`.
    pub fn len(&self) -> usize {
        3 * (self.crop as usize).pow(2)
    }

    /// Always false: a crop is at least one pixel.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The most bytes one parser holds while it turns one image into values, besides the
    /// chunk it fills: the file's bytes (for base64, the decoded bytes and the text unescaped,
    /// when it has JSON escapes), the decoder's buffers for the largest image allowed, and the
    /// resizer's intermediate rows and crop.
    pub fn working_bytes(&self) -> u64 {
        let side = self.max_side as u64;
        let encoded = self.max_bytes + self.max_bytes.div_ceil(3) * 4;
        let jpeg = (side + MCU_PAD).pow(2) * JPEG_BYTES_PER_PIXEL;
        let png =
            side.pow(2) * PNG_BYTES_PER_PIXEL + png_limit(side) + side * PNG_ROW_BYTES_PER_PIXEL;
        let crop = self.crop as u64;
        // The row pass covers the crop's columns on every source row it needs; then the crop.
        let resize = crop * side * 3 + crop * crop * 3;
        encoded + jpeg.max(png) + resize
    }

    /// Read the image file at `path` and append its values to `out`.
    pub fn from_file(&self, path: &Path, out: &mut Vec<f32>) -> Result<(), String> {
        let bytes = read_capped(path, self.max_bytes)?;
        self.from_bytes(&bytes, out)
    }

    /// Decode base64 text (standard alphabet, padding optional; a `data:image/...;base64,`
    /// prefix is skipped) and append the image's values to `out`.
    pub fn from_base64(&self, text: &str, out: &mut Vec<f32>) -> Result<(), String> {
        let bytes = decode_base64(text, self.max_bytes)?;
        self.from_bytes(&bytes, out)
    }

    /// Decode a JPEG or PNG file's bytes and append its values to `out`.
    pub fn from_bytes(&self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), String> {
        // The decoders are fuzzed, but a file that still finds a panic in one must cost its
        // record, not the parser thread.
        let result = std::panic::catch_unwind(|| {
            let pixels = decode(bytes, self.max_side)?;
            let cropped = self.resize_and_crop(&pixels)?;
            Ok::<_, String>((cropped, pixels.channels))
        });
        let (cropped, channels) = result
            .unwrap_or_else(|_| Err("the image decoder failed on this file (a panic)".into()))?;
        self.normalize(&cropped, channels, out);
        Ok(())
    }

    /// torchvision's output size for `Resize(resize)`: the shorter side becomes `resize`, the
    /// longer `int(resize * long / short)` (truncated, in f64 as Python computes it).
    fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        let (short, long) = if width <= height {
            (width, height)
        } else {
            (height, width)
        };
        let new_long = (self.resize as f64 * long as f64 / short as f64) as u32;
        if width <= height {
            (self.resize, new_long)
        } else {
            (new_long, self.resize)
        }
    }

    /// Resize as PIL's bilinear filter does and cut the centre `crop × crop`; returns the crop's
    /// pixels (with the image's channels).
    fn resize_and_crop(&self, pixels: &Pixels) -> Result<Vec<u8>, String> {
        let (w, h) = (pixels.width, pixels.height);
        let (new_w, new_h) = self.resized_size(w, h);
        let crop = self.crop;
        // torchvision's CenterCrop: `int(round((size - crop) / 2.0))`, Python rounding half to
        // even.
        let margin = |size: u32| {
            size.checked_sub(crop)
                .map(|m| (m as f64 / 2.0).round_ties_even())
                .ok_or_else(|| format!("a {w}x{h} image resized to {new_w}x{new_h} is smaller than the {crop}-pixel crop"))
        };
        let (left, top) = (margin(new_w)?, margin(new_h)?);
        let pixel_type = match pixels.channels {
            1 => PixelType::U8,
            _ => PixelType::U8x3,
        };
        let src = ImageRef::new(w, h, &pixels.data, pixel_type).map_err(|e| e.to_string())?;
        let (scale_x, scale_y) = (w as f64 / new_w as f64, h as f64 / new_h as f64);
        let alg = ResizeAlg::Convolution(FilterType::Bilinear);
        let mut resizer = Resizer::new();
        // PIL resizes rows first, rounding to 8 bits, then columns: two passes, so the rounding
        // happens where PIL's does (fast_image_resize alone would run the columns first). The
        // row pass only computes the crop's columns, on the source rows the column pass reads.
        let (first_row, rows) = filter_rows(top as u32, crop, h, scale_y);
        let mut across = Image::new(crop, rows, pixel_type);
        resizer
            .resize(
                &src,
                &mut across,
                &ResizeOptions::new().resize_alg(alg).use_alpha(false).crop(
                    left * scale_x,
                    first_row as f64,
                    crop as f64 * scale_x,
                    rows as f64,
                ),
            )
            .map_err(|e| format!("cannot resize: {e}"))?;
        let mut cropped = Image::new(crop, crop, pixel_type);
        resizer
            .resize(
                &across,
                &mut cropped,
                &ResizeOptions::new().resize_alg(alg).use_alpha(false).crop(
                    0.0,
                    top * scale_y - first_row as f64,
                    crop as f64,
                    crop as f64 * scale_y,
                ),
            )
            .map_err(|e| format!("cannot resize: {e}"))?;
        Ok(cropped.into_vec())
    }

    /// `ToTensor` + `Normalize`, channels first; a grey image gives its value to all three.
    fn normalize(&self, pixels: &[u8], channels: usize, out: &mut Vec<f32>) {
        let plane = (self.crop as usize).pow(2);
        out.reserve(3 * plane);
        for (c, levels) in self.levels.iter().enumerate() {
            let offset = if channels == 1 { 0 } else { c };
            out.extend(
                pixels[offset..]
                    .iter()
                    .step_by(channels)
                    .take(plane)
                    .map(|&v| levels[v as usize]),
            );
        }
    }
}

/// The source rows PIL's column pass reads for output rows `top..top + crop` of an image
/// `height` rows tall resized by `scale` (source rows per output row): the first, and how many.
fn filter_rows(top: u32, crop: u32, height: u32, scale: f64) -> (u32, u32) {
    // PIL's `precompute_coeffs`: the bilinear support (1) widens with the scale when shrinking.
    let support = scale.max(1.0);
    let bounds = |y: u32| {
        let center = (y as f64 + 0.5) * scale;
        let min = ((center - support + 0.5) as i64).max(0) as u32;
        let max = ((center + support + 0.5) as i64).min(height as i64) as u32;
        (min, max)
    };
    let (first, _) = bounds(top);
    let (_, last) = bounds(top + crop - 1);
    (first, last.max(first + 1) - first)
}

/// Read a whole file, refusing one over `max_bytes` before reading it.
fn read_capped(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if len > max_bytes {
        return Err(too_many_bytes(len, max_bytes));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow while it is read: never past the cap.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_many_bytes(bytes.len() as u64, max_bytes));
    }
    Ok(bytes)
}

fn too_many_bytes(len: u64, max_bytes: u64) -> String {
    format!("too large: {len} bytes, more than input.image.max_bytes ({max_bytes})")
}

/// Standard base64, padding optional, after an optional `data:...;base64,` prefix.
fn decode_base64(text: &str, max_bytes: u64) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let text = match text.strip_prefix("data:") {
        Some(rest) => match rest.split_once(";base64,") {
            Some((_, data)) => data,
            None => {
                return Err("a `data:` URL must hold base64 (`data:image/jpeg;base64,...`)".into())
            }
        },
        None => text,
    };
    let estimate = base64::decoded_len_estimate(text.len()) as u64;
    // The estimate may exceed the true length by the 2 bytes padding stands for.
    if estimate > max_bytes + 2 {
        return Err(too_many_bytes(estimate, max_bytes));
    }
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = ENGINE
        .decode(text)
        .map_err(|e| format!("not valid base64: {e}"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_many_bytes(bytes.len() as u64, max_bytes));
    }
    Ok(bytes)
}

/// Refuse an image larger than the limits, from its header's size.
fn check_size(format: &str, width: u32, height: u32, max_side: u32) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!(
            "corrupt {format}: the header says {width}x{height} pixels"
        ));
    }
    if width > max_side || height > max_side {
        return Err(format!(
            "too large: {width}x{height} pixels, more than input.image.max_side ({max_side}) a side"
        ));
    }
    Ok(())
}

/// The format named by a file's first bytes: what subpass decodes, or what it names in an error.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    const SIGNATURES: &[(&[u8], &str)] = &[
        (b"\xFF\xD8\xFF", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"GIF87a", "GIF"),
        (b"GIF89a", "GIF"),
        (b"BM", "BMP"),
        (b"II*\0", "TIFF"),
        (b"MM\0*", "TIFF"),
        (b"qoif", "QOI"),
        (b"\0\0\x01\0", "ICO"),
        (b"8BPS", "PSD"),
        (b"\xFF\x0A", "JPEG XL"),
        (b"\0\0\0\x0CJXL ", "JPEG XL"),
        (b"%PDF", "PDF"),
    ];
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Some("WebP");
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Some(match &bytes[8..12] {
            b"avif" | b"avis" => "AVIF",
            _ => "HEIF",
        });
    }
    SIGNATURES
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
        .map(|(_, name)| *name)
}

fn decode(bytes: &[u8], max_side: u32) -> Result<Pixels, String> {
    match sniff(bytes) {
        Some("JPEG") => decode_jpeg(bytes, max_side),
        Some("PNG") => decode_png(bytes, max_side),
        Some(other) => Err(format!(
            "unsupported image format {other}: subpass reads JPEG and PNG"
        )),
        None if bytes.is_empty() => Err("not an image: the file is empty".into()),
        None => Err("not a JPEG or PNG image (its first bytes match no image format)".into()),
    }
}

fn decode_jpeg(bytes: &[u8], max_side: u32) -> Result<Pixels, String> {
    use zune_jpeg::zune_core::bytestream::ZCursor;
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    use zune_jpeg::JpegDecoder;
    // Strict: a corrupt or truncated stream is an error, not a picture with a grey bottom. The
    // decoder's own size caps are lifted: ours, checked below, name the limit in the error.
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX));
    let corrupt = |e: zune_jpeg::errors::DecodeErrors| format!("corrupt or truncated JPEG: {e}");
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(corrupt)?;
    let (width, height) = decoder
        .dimensions()
        .ok_or("corrupt JPEG: no frame header")?;
    check_size("JPEG", width as u32, height as u32, max_side)?;
    let grey = decoder.input_colorspace() == Some(ColorSpace::Luma);
    let (colorspace, channels) = if grey {
        (ColorSpace::Luma, 1)
    } else {
        (ColorSpace::RGB, 3)
    };
    decoder.set_options(options.jpeg_set_out_colorspace(colorspace));
    let size = width * height * channels;
    let mut data = vec![0u8; size];
    decoder.decode_into(&mut data).map_err(corrupt)?;
    Ok(Pixels {
        width: width as u32,
        height: height as u32,
        channels,
        data,
    })
}

/// The `png` crate's cap on what it allocates besides the image (its metadata and row buffers).
fn png_limit(max_side: u64) -> u64 {
    PNG_METADATA_BYTES + max_side * PNG_ROW_BYTES_PER_PIXEL
}

fn decode_png(bytes: &[u8], max_side: u32) -> Result<Pixels, String> {
    let corrupt = |e: png::DecodingError| match e {
        png::DecodingError::LimitsExceeded => {
            "too large: the PNG's metadata chunks exceed 1 MiB".to_string()
        }
        e => format!("corrupt or truncated PNG: {e}"),
    };
    let limits = png::Limits {
        bytes: png_limit(max_side as u64) as usize,
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    // 8 bits per sample, palettes expanded: what PIL's `convert("RGB")` starts from.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let (width, height) = reader.info().size();
    check_size("PNG", width, height, max_side)?;
    let (color, _) = reader.output_color_type();
    let size = reader
        .output_buffer_size()
        .ok_or("corrupt PNG: its size overflows")?;
    let mut data = vec![0u8; size];
    let frame = reader.next_frame(&mut data).map_err(corrupt)?;
    data.truncate(frame.buffer_size());
    let samples = color.samples();
    // Drop alpha (PIL's `convert("RGB")` drops it without blending), in place.
    let channels = match color {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => 1,
        _ => 3,
    };
    if samples != channels {
        let pixels = data.len() / samples;
        for p in 0..pixels {
            for c in 0..channels {
                data[p * channels + c] = data[p * samples + c];
            }
        }
        data.truncate(pixels * channels);
    }
    Ok(Pixels {
        width,
        height,
        channels,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preprocess(resize: usize, crop: usize) -> ImagePreprocess {
        ImagePreprocess::new(&ImageInput {
            resize,
            crop,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            max_side: 8000,
            max_bytes: 100_000_000,
        })
    }

    #[test]
    fn resized_size_follows_torchvision() {
        let p = preprocess(256, 224);
        assert_eq!(p.resized_size(640, 427), (383, 256));
        assert_eq!(p.resized_size(427, 640), (256, 383));
        assert_eq!(p.resized_size(300, 300), (256, 256));
        // int(256 * 1000 / 3) = 85333
        assert_eq!(p.resized_size(3, 1000), (256, 85333));
    }

    #[test]
    fn filter_rows_cover_the_windows_of_the_crop() {
        // Shrinking 427 rows to 256: scale 1.668, support 1.668.
        let (first, rows) = filter_rows(16, 224, 427, 427.0 / 256.0);
        assert!(first <= 26 && first + rows >= 401, "{first} {rows}");
        assert!(first + rows <= 427);
        // Enlarging: support 1, a window of 2 or 3 rows.
        assert_eq!(filter_rows(0, 1, 10, 0.5), (0, 1));
    }

    #[test]
    fn sniffing_names_formats() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0rest"), Some("JPEG"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some("PNG"));
        assert_eq!(sniff(b"GIF89a..."), Some("GIF"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("WebP"));
        assert_eq!(sniff(b"hello"), None);
    }

    #[test]
    fn base64_accepts_data_urls_and_missing_padding() {
        assert_eq!(decode_base64("aGk=", 10).unwrap(), b"hi");
        assert_eq!(decode_base64("aGk", 10).unwrap(), b"hi");
        assert_eq!(
            decode_base64("data:image/png;base64,aGk=", 10).unwrap(),
            b"hi"
        );
        assert!(decode_base64("a*Gk", 10).unwrap_err().contains("base64"));
        assert!(decode_base64("data:image/png,aGk=", 10).is_err());
        // Refused from the text's length, before decoding: 8 characters hold 6 bytes.
        assert!(decode_base64("aGlhaGlh", 5)
            .unwrap_err()
            .contains("too large"));
        assert_eq!(decode_base64("aGlhaGlh", 6).unwrap(), b"hiahia");
    }
}
