"""PNG encoding and decoding for the image features of TFDS datasets (MOVi).

Pillow handles 8-bit images and 16-bit greyscale, but reads 16-bit colour PNGs (MOVi's
``normal`` and ``object_coordinates``) as 8-bit; those go through :func:`_decode_png16`, a
small decoder of non-interlaced 16-bit PNGs, and :func:`_encode_png16`.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (palette not needed)
_COLOUR_TYPE = {channels: colour_type for colour_type, channels in _CHANNELS.items()}


def _header(data: bytes) -> tuple[int, int, int, int, int]:
    """(width, height, bit depth, colour type, interlace) from the IHDR chunk."""
    if data[:8] != _SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return width, height, bit_depth, colour_type, interlace


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes to (H, W, C) uint8 or uint16 (C = 1 for greyscale). ValueError if malformed."""
    width, height, bit_depth, colour_type, interlace = _header(data)
    if bit_depth == 16 and colour_type != 0:
        if interlace:
            raise ValueError("interlaced 16-bit colour PNGs are not supported")
        return _decode_png16(data, width, height, _CHANNELS[colour_type])
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            array = np.asarray(image)
    except (OSError, SyntaxError) as error:  # Pillow's errors for truncated or garbled data
        raise ValueError(f"unreadable PNG ({error})") from None
    if bit_depth == 16:
        array = array.astype(np.uint16)
    elif array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[:2] != (height, width):
        raise ValueError(f"PNG decoded to {array.shape}, header says {height}x{width}")
    return array


def encode_png(array: np.ndarray) -> bytes:
    """(H, W, C) or (H, W) uint8 / uint16 array to PNG bytes (C in 1..4)."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint16 and array.ndim == 3:
        return _encode_png16(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG holds uint8 or uint16, got {array.dtype}")
    image = Image.fromarray(array.astype("<u2") if array.dtype == np.uint16 else array)  # 2-D uint16: mode I;16
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _encode_png16(array: np.ndarray, filter_type: int = 0) -> bytes:
    """(H, W, C) uint16 to a 16-bit PNG; every row uses ``filter_type`` (0 None, 1 Sub, 2 Up)."""
    height, width, channels = array.shape
    raw = (
        np.ascontiguousarray(array.astype(">u2")).view(np.uint8).reshape(height, width * channels * 2).astype(np.int16)
    )
    bytes_per_pixel = channels * 2
    if filter_type == 1:
        raw[:, bytes_per_pixel:] -= raw[:, :-bytes_per_pixel].copy()
    elif filter_type == 2:
        raw[1:] -= raw[:-1].copy()
    elif filter_type != 0:
        raise ValueError(f"filter type {filter_type} is not written here")
    rows = np.concatenate([np.full((height, 1), filter_type, dtype=np.uint8), (raw % 256).astype(np.uint8)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 16, _COLOUR_TYPE[channels], 0, 0, 0)
    return (
        _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _chunk(b"IEND", b"")
    )


def _decode_png16(data: bytes, width: int, height: int, channels: int) -> np.ndarray:
    """Non-interlaced 16-bit PNG to (H, W, C) uint16, undoing all five row filters."""
    position, compressed = 8, []
    while position < len(data):
        if position + 8 > len(data):
            raise ValueError("truncated PNG chunk")
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IDAT":
            compressed.append(data[position + 8 : position + 8 + length])
        elif kind == b"IEND":
            break
        position += 12 + length
    bytes_per_pixel = channels * 2
    stride = width * bytes_per_pixel
    try:  # bounded by the image's size: corrupt data must not expand without limit
        raw = zlib.decompressobj().decompress(b"".join(compressed), height * (stride + 1) + 1)
    except zlib.error as error:
        raise ValueError(f"corrupt PNG data ({error})") from None
    if len(raw) != height * (stride + 1):
        raise ValueError(f"PNG data has {len(raw)} bytes, expected {height * (stride + 1)}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    image = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            current = line
        elif kind == 1:  # Sub: a running sum per byte of the pixel, so a cumsum along the row
            current = np.cumsum(line.reshape(width, bytes_per_pixel), axis=0).reshape(stride) % 256
        elif kind == 2:
            current = (line + previous) % 256
        elif kind in (3, 4):  # Average and Paeth depend on the byte just decoded: a byte loop
            current = _undo_sequential_filter(int(kind), line.tolist(), previous.tolist(), bytes_per_pixel)
        else:
            raise ValueError(f"unknown PNG filter type {kind}")
        image[y] = current
        previous = np.asarray(current, dtype=np.int32)
    return image.view(">u2").reshape(height, width, channels).astype(np.uint16)


def _undo_sequential_filter(kind: int, line: list[int], previous: list[int], bytes_per_pixel: int) -> np.ndarray:
    current = [0] * len(line)
    for i, value in enumerate(line):
        left = current[i - bytes_per_pixel] if i >= bytes_per_pixel else 0
        up = previous[i]
        if kind == 3:
            current[i] = (value + (left + up) // 2) & 0xFF
            continue
        up_left = previous[i - bytes_per_pixel] if i >= bytes_per_pixel else 0
        estimate = left + up - up_left
        distance_left, distance_up, distance_up_left = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
        if distance_left <= distance_up and distance_left <= distance_up_left:
            predictor = left
        elif distance_up <= distance_up_left:
            predictor = up
        else:
            predictor = up_left
        current[i] = (value + predictor) & 0xFF
    return np.array(current, dtype=np.int32)
