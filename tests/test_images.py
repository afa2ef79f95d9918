"""catdog.images: headers read before decoding, and the pixel limit everywhere images are read."""

import io

import pytest
import tensorflow as tf
from PIL import Image

from catdog import images

from conftest import png_bomb


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "GIF", "BMP"])
def test_declared_pixels_come_from_the_header(kind):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, kind)
    assert images.declared_pixels(tf.constant(buffer.getvalue())).numpy() == 40 * 30


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
