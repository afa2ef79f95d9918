"""Which image files catdog reads, and the largest it decodes. Plain values (and the one way
folders given on a command line become files) that import only the standard library, so building
a `Config` (and every command's --help) loads no TensorFlow."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's Image.MAX_IMAGE_PIXELS


def skipped_message(skipped: Sequence[str]) -> str:
    """The one line a command prints for the files `image_paths` skipped in folders."""
    return (f"skipped {len(skipped)} file(s) in the folders given that are not images "
            f"({', '.join(IMAGE_EXTENSIONS)}) or not regular files, e.g. {skipped[0]}")


def image_paths(arguments: Sequence[str], skipped: list[str] | None = None) -> Iterator[str]:
    """Files as given; folders expanded to their image files, sorted, recursively. Other files
    found in folders (not images, or not regular files) are added to `skipped`."""
    for argument in arguments:
        path = Path(argument)
        if not path.is_dir():
            yield argument
            continue
        for entry in sorted(p for p in path.rglob("*") if not p.is_dir()):
            if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS:
                yield str(entry)
            elif skipped is not None and not entry.name.startswith("."):
                skipped.append(str(entry))
