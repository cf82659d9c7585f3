"""Image pairs with a known homography: HPatches-format sequences and generated warps.

Every source is an iterable of `Pair` with a `len()` and a `description` dict (what was read,
seed, homography ranges, resolution) that goes into the evaluation's config record.

HPatches layout (also the older Oxford/Mikolajczyk layout, both plain-text 3x3 H files):

    <root>/<sequence>/1.ppm 2.ppm .. 6.ppm  H_1_2 .. H_1_6       (HPatches)
    <root>/<sequence>/img1.ppm .. img6.ppm  H1to2p .. H1to6p     (Oxford)

`<root>` may also be a single sequence folder. Each H file maps pixels of image 1 to image k.
Sequence names starting with i_ / v_ (illumination / viewpoint) set the pair's `group`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..cli.extract import IMAGE_SUFFIXES, read_rgb
from ..config import ConfigError
from ..homography import homography_config as make_homography_config
from ..homography import sample_homography, scaling_matrix, warp_image


class DatasetError(ValueError):
    """Input data that cannot be used; the message names the file or folder and what is wrong."""


@dataclass
class Pair:
    image_a: np.ndarray   # (H, W, 3) RGB uint8
    image_b: np.ndarray   # (H', W', 3) RGB uint8
    H: np.ndarray         # (3, 3) float64, maps pixels of A to B (pixel-centre convention)
    name: str
    group: str = ""       # HPatches "i" (illumination) / "v" (viewpoint); "" otherwise


def resize_to_max_side(image: np.ndarray, max_side: int | None):
    """(image, S): downscale so the longer side is `max_side` (never upscale); S maps old pixels
    to new ones in the pixel-centre convention (see homography.scaling_matrix)."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image, np.eye(3)
    s = max_side / max(h, w)
    return resize_to_size(image, (max(1, round(h * s)), max(1, round(w * s))))


def resize_to_size(image: np.ndarray, size_hw):
    """(image, S): resized to exactly `size_hw` = (H, W), aspect not kept (SuperPoint's HPatches
    protocol at 480x640); S maps old pixels to new ones (pixel-centre convention)."""
    h, w = image.shape[:2]
    new_h, new_w = (int(v) for v in size_hw)
    if (new_h, new_w) == (h, w):
        return image, np.eye(3)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA
                         if new_h * new_w < h * w else cv2.INTER_LINEAR)
    return resized, scaling_matrix(new_w / w, new_h / h)  # exact per-axis factors after rounding


def read_homography_file(path: Path) -> np.ndarray:
    """A plain-text 3x3 matrix (any whitespace) -> float64 with H[2, 2] = 1, or a DatasetError."""
    try:
        tokens = path.read_text().split()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read homography file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a text file (expected a 3x3 matrix as text)") from exc
    try:
        values = np.array([float(t) for t in tokens], np.float64)
    except ValueError as exc:
        raise DatasetError(f"{path}: malformed homography: {exc}") from exc
    if values.size != 9:
        raise DatasetError(f"{path}: malformed homography: expected 9 numbers (a 3x3 matrix), "
                           f"found {values.size}")
    h = values.reshape(3, 3)
    if not np.isfinite(h).all() or abs(np.linalg.det(h)) < 1e-12 or abs(h[2, 2]) < 1e-12:
        raise DatasetError(f"{path}: malformed homography: not finite or singular")
    return h / h[2, 2]


# --- HPatches ------------------------------------------------------------------------------------

# naming -> (reference stem, target stem pattern, H file name for target k)
NAMINGS = {
    "hpatches": ("1", re.compile(r"^(\d+)$"), "H_1_{k}"),
    "oxford": ("img1", re.compile(r"^img(\d+)$"), "H1to{k}p"),
}


def _images_by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _naming(images: dict[str, Path]) -> str | None:
    return next((name for name, (ref, _, _) in NAMINGS.items() if ref in images), None)


def _sequence_pairs(folder: Path) -> list[tuple[Path, Path, Path]]:
    """[(image 1, image k, H file)] for one sequence folder; DatasetError on a missing H/image."""
    images = _images_by_stem(folder)
    naming = _naming(images)
    ref_stem, pattern, h_name = NAMINGS[naming]
    targets = sorted((int(m.group(1)), path) for stem, path in images.items()
                     if (m := pattern.match(stem)) and int(m.group(1)) >= 2)
    pairs = []
    for k, path in targets:
        h_path = folder / h_name.format(k=k)
        if not h_path.is_file():
            raise DatasetError(f"{h_path}: missing homography file for {path.name} "
                               f"({naming} layout: {h_name.format(k='k')} maps image 1 to k)")
        pairs.append((images[ref_stem], path, h_path))
    # an H file without its image is a broken copy, not something to skip silently
    h_pattern = re.compile("^" + h_name.replace("{k}", r"(\d+)") + "$")
    for f in folder.iterdir():
        m = h_pattern.match(f.name)
        if m and int(m.group(1)) not in {k for k, _ in targets}:
            raise DatasetError(f"{f}: homography file without its image (no image "
                               f"{m.group(1)} in {folder})")
    if not pairs:
        raise DatasetError(f"{folder}: sequence has a reference image but no other images")
    return pairs


class HPatchesPairs:
    """Pairs (1, k) of every sequence under `root`, H files checked up front, images read lazily."""

    def __init__(self, root: str | Path, max_side: int | None = None,
                 size: tuple[int, int] | None = None):
        """`max_side`: downscale each image so its longer side is at most this; `size` (H, W):
        resize every image to exactly this (one or neither)."""
        if max_side and size:
            raise DatasetError("give a maximum side or an exact size, not both")
        self.root, self.max_side = Path(root), max_side
        self.size = None if size is None else tuple(int(v) for v in size)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such folder (expected HPatches sequences)")
        if _naming(_images_by_stem(self.root)):
            folders = [self.root]  # root is one sequence
        else:
            folders = [d for d in sorted(self.root.iterdir())
                       if d.is_dir() and _naming(_images_by_stem(d))]
        if not folders:
            raise DatasetError(
                f"{self.root}: no HPatches sequences found (expected <sequence>/1.ppm + H_1_2 .. "
                "H_1_6, or the Oxford naming img1.ppm + H1to2p ..)")
        self.items = []
        for folder in folders:
            group = folder.name[:1] if re.match(r"^[iv]_", folder.name) else ""
            for image_a, image_b, h_path in _sequence_pairs(folder):
                self.items.append((image_a, image_b, read_homography_file(h_path),
                                   f"{folder.name}/{image_a.stem}-{image_b.stem}", group))
        self.description = {
            "kind": "hpatches", "root": str(self.root), "sequences": len(folders),
            "pairs": len(self.items), "max_side": max_side,
            "size_hw": None if size is None else list(self.size),
            "groups": {g: sum(1 for it in self.items if it[4] == g)
                       for g in sorted({it[4] for it in self.items})},
        }

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> Pair:
        """Pair `index`, images read now (a ValueError names an unreadable file)."""
        path_a, path_b, h, name, group = self.items[index]
        image_a, s_a = self.resize(read_rgb(path_a))
        image_b, s_b = self.resize(read_rgb(path_b))
        return Pair(image_a, image_b, s_b @ h @ np.linalg.inv(s_a), name, group)


    def resize(self, image: np.ndarray):
        if self.size is not None:
            return resize_to_size(image, self.size)
        return resize_to_max_side(image, self.max_side)


def hpatches_pairs(root: str | Path, max_side: int | None = None,
                   size: tuple[int, int] | None = None) -> HPatchesPairs:
    return HPatchesPairs(root, max_side, size)


# --- generated pairs -----------------------------------------------------------------------------


class GeneratedPairs:
    """SuperPoint's synthetic protocol: image A from a folder, B = A warped by a seeded random H.

    Pair i uses image (i * n_images) // n_pairs (spread over the folder) and the homography drawn
    from np.random.default_rng([seed, i]), so a pair does not depend on how many are made.
    """

    def __init__(self, image_folder: str | Path, n_pairs: int, seed: int = 0,
                 homography: dict | None = None, size: int | None = None,
                 recursive: bool = False):
        self.folder = Path(image_folder)
        if not self.folder.is_dir():
            raise DatasetError(f"{self.folder}: no such image folder")
        files = self.folder.rglob("*") if recursive else self.folder.iterdir()
        self.images = sorted(p for p in files
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise DatasetError(f"{self.folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if n_pairs < 1:
            raise DatasetError(f"number of pairs must be >= 1, got {n_pairs}")
        self.n_pairs, self.seed, self.size = int(n_pairs), int(seed), size
        self.homography = make_homography_config(homography)
        try:  # bad ranges fail now, not after the first pairs were evaluated
            sample_homography(np.random.default_rng(0), 64, 64, **self.homography)
        except ValueError as exc:
            raise ConfigError(f"homography: {exc}") from exc
        self.description = {
            "kind": "generated", "folder": str(self.folder), "images": len(self.images),
            "pairs": self.n_pairs, "seed": self.seed, "max_side": size,
            "homography": dict(self.homography),
            "sampling": "pair i: image (i*n_images)//n_pairs, H from "
                        "numpy default_rng([seed, i]), B = warp_image(A, H)",
        }

    def __len__(self) -> int:
        return self.n_pairs

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> Pair:
        """Pair `index` (0 <= index < n_pairs); the same for a given seed however many pairs."""
        if not 0 <= index < self.n_pairs:
            raise IndexError(f"pair {index} of {self.n_pairs}")
        path = self.images[(index * len(self.images)) // self.n_pairs]
        image_a, _ = resize_to_max_side(read_rgb(path), self.size)
        h, w = image_a.shape[:2]
        H = sample_homography(np.random.default_rng([self.seed, index]), h, w, **self.homography)
        return Pair(image_a, warp_image(image_a, H), H, f"{path.stem}_{index:04d}")


def generated_pairs(image_folder: str | Path, n_pairs: int, seed: int = 0,
                    homography_config: dict | None = None, size: int | None = None,
                    recursive: bool = False) -> GeneratedPairs:
    """`n_pairs` warped pairs from any image folder; `size` = max image side (None: as read);
    `recursive`: also the images in sub-folders (e.g. Cityscapes' leftImg8bit/val/<city>/)."""
    return GeneratedPairs(image_folder, n_pairs, seed, homography_config, size, recursive)
