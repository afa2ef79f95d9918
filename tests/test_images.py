"""catdog.images: headers read before decoding, and the pixel limit everywhere images are read."""

import io

import pytest
import tensorflow as tf
from PIL import Image

from catdog import images

from conftest import png_bomb


@pytest.mark.parametrize("kind, mode, options", [
    ("JPEG", "RGB", {}), ("PNG", "RGB", {}), ("GIF", "RGB", {}), ("BMP", "RGB", {}),
    ("WEBP", "RGB", {}), ("WEBP", "RGB", {"lossless": True}), ("WEBP", "RGBA", {}),
    ("WEBP", "RGBA", {"lossless": True}),
])
def test_declared_pixels_come_from_the_header(kind, mode, options):
    buffer = io.BytesIO()
    Image.new(mode, (1031, 517), "red").save(buffer, kind, **options)  # fields past 8 bits
    assert images.declared_pixels(tf.constant(buffer.getvalue())).numpy() == 1031 * 517


def webp_header(chunk: bytes, body: bytes) -> bytes:
    """A WebP file's header with one chunk, and 64 bytes of nothing: what a bomb needs."""
    payload = b"WEBP" + chunk + len(body + bytes(64)).to_bytes(4, "little") + body + bytes(64)
    return b"RIFF" + len(payload).to_bytes(4, "little") + payload


@pytest.mark.parametrize("name, encoded, pixels", [
    ("lossy", webp_header(b"VP8 ", b"\0\0\0\x9d\x01\x2a\xff\x3f\xff\x3f"), 16383 * 16383),
    ("extended", webp_header(b"VP8X", bytes(4) + b"\xff\xff\xff" * 2), 2**24 * 2**24),
])
def test_a_webp_bomb_is_refused_before_decoding(tmp_path, name, encoded, pixels):
    path = tmp_path / f"{name}.webp"
    path.write_bytes(encoded)
    image, problem = images.read_checked_image(str(path))
    assert image is None
    assert problem == (f"image declares {pixels} pixels, more than the limit of 89478485 "
                       "(--max_image_pixels)")


def test_a_webp_with_alpha_decodes_to_its_rgb_and_an_animation_is_one_error(tmp_path):
    rgba = Image.new("RGBA", (40, 30), (200, 100, 50, 128))
    rgba.save(tmp_path / "alpha.webp", lossless=True)
    image, problem = images.read_checked_image(str(tmp_path / "alpha.webp"))
    assert problem is None and image.shape == (30, 40, 3)
    assert image.numpy()[0, 0].tolist() == [200, 100, 50]
    frames = [Image.new("RGB", (40, 30), (k * 80, 0, 0)) for k in range(3)]
    frames[0].save(tmp_path / "animated.webp", save_all=True, append_images=frames[1:])
    image, problem = images.read_checked_image(str(tmp_path / "animated.webp"))
    assert image is None and problem == "an animated WebP; a still image is needed"


def test_a_decompression_bomb_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(23000, 23000))
    image, problem = images.read_checked_image(str(path))
    assert image is None
    assert problem == ("image declares 529000000 pixels, more than the limit of 89478485 "
                       "(--max_image_pixels)")


def test_the_limit_is_a_parameter(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(path)
    assert images.image_problem(str(path)) is None
    assert "more than the limit of 1000" in images.image_problem(str(path), max_pixels=1000)


def test_inside_a_graph_the_limit_is_an_invalid_argument():
    decode = tf.function(lambda encoded: images.decode_image(encoded, 100))
    with pytest.raises(tf.errors.InvalidArgumentError, match="--max_image_pixels"):
        decode(tf.constant(png_bomb(11, 10)))
