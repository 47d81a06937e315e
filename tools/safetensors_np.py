"""Minimal safetensors writer and reader in pure numpy + json.

File layout (https://github.com/huggingface/safetensors):
  * 8 bytes: little-endian u64 N, the length of the JSON header;
  * N bytes: UTF-8 JSON, {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...} plus an
    optional "__metadata__" {str: str}; padded here with spaces so N is a multiple of 8;
  * the data buffer: raw little-endian tensor bytes, offsets relative to the buffer start.

Supported dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL.
BF16 is written from float32 with round-to-nearest-even on the top 16 bits and read back as
float32 (numpy has no bfloat16).
"""

import json
import struct

import numpy as np

# safetensors dtype name -> little-endian numpy dtype (BF16 handled separately).
_NP_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_DTYPE_NAMES = {v: k for k, v in _NP_DTYPES.items()}


def f32_to_bf16_bits(a):
    """float32 array -> uint16 bfloat16 bit patterns, round to nearest, ties to even."""
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    bits = a.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    # Keep NaNs NaN (rounding could carry a NaN payload into infinity).
    nan = np.isnan(a)
    out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return out


def bf16_bits_to_f32(bits):
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    bits = np.asarray(bits, dtype=np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _encode(array, dtype):
    """Return the raw little-endian bytes of `array` stored as safetensors `dtype`."""
    if dtype == "BF16":
        return f32_to_bf16_bits(array).astype("<u2").tobytes()
    if dtype not in _NP_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}")
    return np.ascontiguousarray(np.asarray(array).astype(_NP_DTYPES[dtype])).tobytes()


def save_file(tensors, path, metadata=None):
    """Write `tensors` to `path`.

    `tensors` maps name -> numpy array, or name -> (array, dtype) to choose the stored dtype
    ("F32", "F16", "BF16", "F64", "I64", ...). A bare float32/float64/... array keeps its own
    dtype. Tensors are written in the mapping's order.
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    offset = 0
    for name, value in tensors.items():
        if isinstance(value, tuple):
            array, dtype = value
            array = np.asarray(array)
        else:
            array = np.asarray(value)
            dtype = _DTYPE_NAMES.get(array.dtype.newbyteorder("<"))
            if dtype is None:
                raise ValueError(f"{name}: cannot infer safetensors dtype of {array.dtype}")
        data = _encode(array, dtype)
        header[name] = {
            "dtype": dtype,
            "shape": [int(d) for d in array.shape],
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for data in chunks:
            f.write(data)


def load_file(path, with_info=False):
    """Read `path`; returns {name: array} (BF16 decoded to float32, others in their own dtype).

    With with_info=True returns (tensors, dtypes {name: dtype str}, metadata dict or None).
    """
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("file too short")
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    buf = raw[8 + n :]
    metadata = header.pop("__metadata__", None)
    tensors, dtypes = {}, {}
    for name, info in header.items():
        dtype = info["dtype"]
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= len(buf):
            raise ValueError(f"{name}: data_offsets out of range")
        data = buf[begin:end]
        if dtype == "BF16":
            array = bf16_bits_to_f32(np.frombuffer(data, dtype="<u2"))
        elif dtype in _NP_DTYPES:
            array = np.frombuffer(data, dtype=_NP_DTYPES[dtype]).copy()
        else:
            raise ValueError(f"{name}: unsupported dtype {dtype}")
        count = int(np.prod(shape, dtype=np.int64))
        if array.size != count:
            raise ValueError(f"{name}: {array.size} elements for shape {shape}")
        tensors[name] = array.reshape(shape)
        dtypes[name] = dtype
    if with_info:
        return tensors, dtypes, metadata
    return tensors
