"""Which image files catdog reads, and the largest it decodes. Plain values that import nothing,
so building a `Config` (and every command's --help) loads no TensorFlow."""

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's Image.MAX_IMAGE_PIXELS
