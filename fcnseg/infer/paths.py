"""Which files to read and where their results go.

``input`` is a folder (searched recursively for image extensions), one file, or a glob
pattern (``**`` allowed). Results mirror the input tree under the output folder:
``<rel>/<stem>.png`` (labels), ``<stem>.overlay.png``, ``<stem>.scores.npy``, where
``rel`` is the file's folder relative to the input root (the folder, the file's own
folder, or the fixed part of the pattern).
"""
from __future__ import annotations

import glob
import heapq
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from fcnseg.data.regions import READABLE_EXTENSIONS as IMAGE_EXTENSIONS

OUTPUT_KINDS = {"labels": ".png", "overlay": ".overlay.png", "scores": ".scores.npy"}


class InputError(ValueError):
    """The input/output arguments cannot be used as given; the message says what to change."""


@dataclass(frozen=True)
class InputFile:
    path: Path               # as found (absolute)
    rel: PurePosixPath       # relative to the input root, "/"-separated (summary and mirroring)

    def output(self, out_dir: Path, kind: str) -> Path:
        return out_dir.joinpath(*self.rel.parent.parts, self.rel.stem + OUTPUT_KINDS[kind])

    def output_rel(self, kind: str) -> str:
        return str(self.rel.parent / (self.rel.stem + OUTPUT_KINDS[kind]))


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _walk(root: Path) -> list[Path]:
    """Image files under root, hidden files/folders skipped (temporaries, .git, ...).
    Symlinked folders are not followed (they can loop); symlinked files are read."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".") and _is_image_name(f)]
    return found


def _glob_root(pattern: str) -> Path:
    """The longest leading folder of a pattern without wildcards."""
    parts = Path(pattern).parts
    fixed = []
    for p in parts[:-1]:
        if glob.has_magic(p):
            break
        fixed.append(p)
    return Path(*fixed) if fixed else Path(".")


def find_inputs(spec: str, out_dir: str | os.PathLike) -> tuple[Path, list[InputFile]]:
    """Resolve ``input`` to (root, files sorted by relative path), refusing an output
    folder whose results would be read back as inputs."""
    if not spec:
        raise InputError("input= is empty; give a folder, an image file or a glob pattern")
    out_real = Path(os.path.realpath(out_dir))
    p = Path(spec)
    if p.is_dir():
        root = Path(os.path.abspath(p))
        if _inside(out_real, Path(os.path.realpath(root))):
            raise InputError(
                f"output folder {out_dir} is inside the input folder {spec}, which is searched "
                f"recursively: its label maps would be read as input images by the next run. "
                f"Choose an output folder outside {spec}")
        files = _walk(root)
    elif p.is_file():
        root = Path(os.path.abspath(p.parent))
        files = [Path(os.path.abspath(p))]
    elif glob.has_magic(spec):
        root = Path(os.path.abspath(_glob_root(spec)))
        files = [Path(os.path.abspath(f)) for f in glob.glob(spec, recursive=True)
                 if os.path.isfile(f)]
        inside = [f for f in files if _inside(Path(os.path.realpath(f)), out_real)]
        if inside:
            raise InputError(
                f"input pattern {spec!r} matches {len(inside)} file(s) inside the output folder "
                f"{out_dir} (e.g. {inside[0]}): results would be read back as inputs. Narrow the "
                f"pattern or choose another output folder")
    else:
        raise InputError(f"input={spec!r} is not a folder, a file or a glob pattern that exists")
    items = []
    for f in files:
        rel = PurePosixPath(Path(os.path.relpath(f, root)).as_posix())
        items.append(InputFile(f, rel))
    items.sort(key=lambda it: str(it.rel))
    if not items:
        raise InputError(f"no images found for input={spec!r} (extensions: "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    return root, items


def check_output_path(path: Path, out_dir: Path) -> None:
    """Refuse a result path that would land outside the output folder (``..`` in a
    name, an absolute name, or a symlinked folder inside the output folder)."""
    out_real = Path(os.path.realpath(out_dir))
    target = Path(os.path.realpath(path))
    if not _inside(target, out_real) or target == out_real:
        raise InputError(f"result path {path} would be written outside the output folder "
                         f"{out_dir}; rename the input or remove the symlink")


def find_collisions(items: list[InputFile]) -> dict[str, str]:
    """rel of every input whose outputs coincide with an earlier input's (a.jpg and a.png
    in one folder) -> rel of that earlier input."""
    seen: dict[str, str] = {}
    clash = {}
    for it in items:
        key = it.output_rel("labels")
        if key in seen:
            clash[str(it.rel)] = seen[key]
        else:
            seen[key] = str(it.rel)
    return clash


# -- sharing the files between torchrun ranks ---------------------------------------------

def image_pixels(path: str | os.PathLike) -> int:
    """Height x width from the file's header, without decoding the pixels (tifffile for
    TIFF, BigTIFF included; Pillow's lazy open for the rest); 0 when the header is unreadable
    (the file fails quickly when it is read)."""
    try:
        if str(path).lower().endswith((".tif", ".tiff")):
            import tifffile
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength) * int(page.imagewidth)
        from PIL import Image
        with Image.open(path) as im:
            return int(im.size[0]) * int(im.size[1])
    except Exception:
        return 0


def balance_by_pixels(pixels: Sequence[int], world_size: int) -> list[list[int]]:
    """Each rank's item indices (in input order), balanced by pixel count: the largest item
    goes to the least-loaded rank first (greedy LPT: the busiest rank ends within 4/3 of the
    best split, much closer for many items). Every item counts as at least one pixel so
    finished or unreadable files spread too. Deterministic: every rank computes the same split."""
    loads = [(0, r) for r in range(world_size)]
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(pixels)), key=lambda i: (-pixels[i], i)):
        load, r = heapq.heappop(loads)
        shares[r].append(i)
        heapq.heappush(loads, (load + max(1, int(pixels[i])), r))
    return [sorted(s) for s in shares]
