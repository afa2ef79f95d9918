"""One image: decode, resize, load and check it, with TensorFlow ops only.

Shared by the input pipeline, the serving signatures, `evaluate` and `predict`, so an image is
read the same way everywhere. Every decode first reads the width and height the file declares
in its header (JPEG, PNG, GIF, BMP, WebP) and refuses an image of more than `max_pixels` before a
single pixel is decoded: a 60 KB PNG can declare 23000×23000 pixels and would take 1.6 GB as
RGB. The default is Pillow's own limit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf
from tensorflow.core.example import example_pb2, feature_pb2

from catdog.contract import IMAGE_FEATURE
from catdog.image_formats import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS
from catdog.terminal import stderr_set_aside

_HEADER_BYTES = 32


def _bytes_as_int(head: tf.Tensor, start: int, count: int, big_endian: bool) -> tf.Tensor:
    order = range(count) if big_endian else reversed(range(count))
    value = tf.constant(0, tf.int64)
    for k in order:
        value = value * 256 + head[start + k]
    return value


def _starts_with(head: tf.Tensor, magic: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(head[:len(magic)], tf.constant(list(magic), tf.int64)))


def _header(encoded: tf.Tensor) -> tf.Tensor:
    """The file's first bytes as int64, zero-padded."""
    padded = tf.strings.join([encoded, tf.constant(b"\0" * _HEADER_BYTES)])
    return tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8),
                   tf.int64)


def _webp_chunk(head: tf.Tensor, chunk: bytes) -> tf.Tensor:
    """Whether the file is a WebP whose first chunk is `chunk` (b"VP8 ", b"VP8L" or b"VP8X")."""
    return _starts_with(head, b"RIFF") & tf.reduce_all(tf.equal(
        head[8:16], tf.constant(list(b"WEBP" + chunk), tf.int64)))


def _webp_pixels(head: tf.Tensor) -> tf.Tensor:
    """Width × height of a WebP: 14-bit fields in a lossy (VP8) frame header, 14-bit fields minus
    one packed in a lossless (VP8L) one, 24-bit fields minus one in an extended (VP8X) canvas."""
    lossy = (_bytes_as_int(head, 26, 2, False) % 16384) * (
        _bytes_as_int(head, 28, 2, False) % 16384)
    lossless = (head[21] + head[22] % 64 * 256 + 1) * (
        head[22] // 64 + head[23] * 4 + head[24] % 16 * 1024 + 1)
    extended = (_bytes_as_int(head, 24, 3, False) + 1) * (_bytes_as_int(head, 27, 3, False) + 1)
    return tf.case([(_webp_chunk(head, b"VP8 "), lambda: lossy),
                    (_webp_chunk(head, b"VP8L"), lambda: lossless),
                    (_webp_chunk(head, b"VP8X"), lambda: extended)],
                   default=lambda: tf.constant(0, tf.int64))


def _still_webp_with_alpha(head: tf.Tensor) -> tf.Tensor:
    """A WebP still image with an alpha channel, which TensorFlow decodes only as 4 channels (a
    request for 3 fails). An animated one is left to the 3-channel decode, which refuses it in
    one error: decoding an animation as 4 channels corrupts TensorFlow 2.21's heap."""
    flags = head[20]
    extended = _webp_chunk(head, b"VP8X") & tf.equal(flags // 16 % 2, 1) & tf.equal(
        flags // 2 % 2, 0)
    return extended | (_webp_chunk(head, b"VP8L") & tf.equal(head[24] // 16 % 2, 1))


def declared_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """Width × height from the header of a JPEG, PNG, GIF, BMP or WebP file (0 for anything
    else, which the decoder then refuses)."""
    return _declared_pixels(encoded, _header(encoded))


def _declared_pixels(encoded: tf.Tensor, head: tf.Tensor) -> tf.Tensor:
    """declared_pixels, given the file's header bytes (`_header`)."""

    def signed_abs(value):
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    png = _bytes_as_int(head, 16, 4, True) * _bytes_as_int(head, 20, 4, True)
    gif = _bytes_as_int(head, 6, 2, False) * _bytes_as_int(head, 8, 2, False)
    bmp = signed_abs(_bytes_as_int(head, 18, 4, False)) * signed_abs(
        _bytes_as_int(head, 22, 4, False))
    return tf.case([
        (_starts_with(head, b"\x89PNG"), lambda: png),
        (_starts_with(head, b"GIF8"), lambda: gif),
        (_starts_with(head, b"BM"), lambda: bmp),
        (_starts_with(head, b"RIFF"), lambda: _webp_pixels(head)),
        (_starts_with(head, b"\xff\xd8"), lambda: tf.reduce_prod(
            tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64))),
    ], default=lambda: tf.constant(0, tf.int64))


TOO_MANY_PIXELS = "image declares {} pixels, more than the limit of {} (--max_image_pixels)"


def pixel_limit_problem(encoded: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """decode_image's refusal of an image whose header declares more than `max_pixels`, from
    the header alone (no decoding), or None; a header too broken to read is the decoder's to
    refuse."""
    try:
        with stderr_set_aside():  # libjpeg's complaint about a broken header: the decoder's
            pixels = int(declared_pixels(tf.constant(encoded)))
    except tf.errors.OpError:
        return None
    return TOO_MANY_PIXELS.format(pixels, max_pixels) if pixels > max_pixels else None


def decode_image(encoded: tf.Tensor, max_pixels: int = MAX_IMAGE_PIXELS) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF/WebP bytes → uint8 RGB [H, W, 3] (grayscale expanded, alpha dropped);
    an image declaring more than `max_pixels` is an InvalidArgumentError naming the limit."""
    head = _header(encoded)
    pixels = _declared_pixels(encoded, head)
    within = tf.debugging.Assert(pixels <= max_pixels, [tf.strings.format(
        TOO_MANY_PIXELS, (pixels, max_pixels))])
    with tf.control_dependencies([within]):
        image = tf.cond(
            _still_webp_with_alpha(head),
            lambda: tf.io.decode_image(encoded, channels=4, expand_animations=False)[..., :3],
            lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Squashes an image to `image_size`², antialiased, keeping uint8 RGB in 0–255."""
    resized = tf.image.resize(image, [image_size, image_size], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def load_image(path: tf.Tensor, image_size: int, max_pixels: int = MAX_IMAGE_PIXELS
               ) -> tf.Tensor:
    """Reads, decodes and resizes one image file; graph-compatible for tf.data."""
    return resize_image(decode_image(tf.io.read_file(path), max_pixels), image_size)


def short_tf_error(error: tf.errors.OpError) -> str:
    """'Input is empty.' instead of TensorFlow's '{{function_node …}} Input is empty. [Op:…]'."""
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message)
    message = re.sub(r"\s*\[Op:\w+\]", "", message)
    message = re.sub(r"assertion failed: \[(.*?)\]", r"\1", message, flags=re.DOTALL)
    message = re.sub(r"Expected .* to be true\. Summarized data: b?'(.*)'", r"\1", message)
    message = message.replace("WebP Animation must be 4 channel RGBA",
                              "an animated WebP; a still image is needed")
    return re.sub(r"\s*name:\s*\S*$", "", message.strip()).splitlines()[0]


def read_checked_image(path: str, image_size: int | None = None,
                       max_pixels: int = MAX_IMAGE_PIXELS, native_reasons: bool = True
                       ) -> tuple[tf.Tensor | None, str | None]:
    """Eagerly reads and decodes one file (and resizes it when `image_size` is given):
    (image, None), or (None, why it cannot be used as an image). TensorFlow writes libjpeg's
    reason for a broken JPEG ('Premature end of JPEG data. Stopped at line 14/40') to stderr as
    a log line of its own; with `native_reasons` it is read from there and put in front of the
    problem instead. Callers decoding in parallel threads pass False (a process has one
    stderr) and set stderr aside around all of them."""
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        return None, (f"unsupported extension '{Path(path).suffix}' "
                      f"(expected one of {', '.join(IMAGE_EXTENSIONS)})")
    image, problem = _decoded(lambda: tf.io.read_file(path), max_pixels, native_reasons)
    if problem or image_size is None:
        return image, problem
    return resize_image(image, image_size), None


def decode_checked(encoded: bytes, image_size: int, max_pixels: int = MAX_IMAGE_PIXELS,
                   native_reasons: bool = True) -> tuple[tf.Tensor | None, str | None]:
    """read_checked_image for bytes read elsewhere than from a local file (catdog.batch): the
    image resized to `image_size`², or why these bytes are not an image catdog reads."""
    image, problem = _decoded(lambda: tf.constant(encoded), max_pixels, native_reasons)
    return (None, problem) if problem else (resize_image(image, image_size), None)


def _decoded(encoded: Callable[[], tf.Tensor], max_pixels: int, native_reasons: bool
             ) -> tuple[tf.Tensor | None, str | None]:
    set_aside = stderr_set_aside() if native_reasons else contextlib.nullcontext([])
    try:
        with set_aside as native_lines:
            return decode_image(encoded(), max_pixels), None
    except tf.errors.OpError as error:
        reasons = [m.group(1) for m in map(_LIBJPEG_LINE.search, native_lines) if m]
        problem = short_tf_error(error)
        return None, f"{reasons[-1]} ({problem})" if reasons else problem


_LIBJPEG_LINE = re.compile(r"jpeg_mem\.cc:\d+\] (.*)")


def is_libjpeg_line(line: str) -> bool:
    """Whether a line of TensorFlow's native log is libjpeg's reason for a broken JPEG."""
    return bool(_LIBJPEG_LINE.search(line))


def image_problem(path: str, max_pixels: int = MAX_IMAGE_PIXELS,
                  native_reasons: bool = True) -> str | None:
    """Why `path` cannot be used as an image, or None if it decodes (`native_reasons`: see
    read_checked_image)."""
    return read_checked_image(path, max_pixels=max_pixels, native_reasons=native_reasons)[1]


def image_example(encoded: bytes) -> example_pb2.Example:
    """The tf.Example that a catdog classify signature expects for one encoded image."""
    return example_pb2.Example(features=feature_pb2.Features(feature={
        IMAGE_FEATURE: feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[encoded]))}))
