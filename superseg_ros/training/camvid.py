"""CamVid frames for training and evaluation, read from the SegNet layout.

    <root>/train/<name>.png         (480x360 RGB frames)       <root>/trainannot/<name>.png
    <root>/val/<name>.png                                      <root>/valannot/<name>.png
    <root>/train.txt, <root>/val.txt   one "image label" pair per line, paths relative to <root>

The pair list decides which frames a split has (SegNet's files write absolute paths such as
`/SegNet/CamVid/train/x.png`; only the last two parts are used); without it every PNG of
`<root>/<split>/` is a frame and its label is `<root>/<split>annot/<same name>`. Label values are
CamVid's 11 classes plus 11 = Unlabelled (semantics.CAMVID_LABELS).

A frame is a dict like CityscapesFrames' (name, image, label_ids, labels; camera, vehicle and
neighbour are None: CamVid has no calibration or odometry). Every error names the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ConfigError, merge_config
from ..semantics import CAMVID, check_mode
from .cityscapes import CityscapesError, read_image, read_label_png

DEFAULT_CAMVID_CONFIG = {
    "label_modes": ["classes", "groups4"],  # remapped label maps returned under "labels"
}


class CamVidError(CityscapesError):
    """A CamVid file or folder that cannot be used; the message names it and what is wrong."""


class CamVidFrames:
    """The frames of one split, in pair-list order; `self[i]` is the i-th frame's dict."""

    dataset = "camvid"

    def __init__(self, root: str | Path, split: str, config: dict | None = None):
        self.config = merge_config(DEFAULT_CAMVID_CONFIG, config, where="camvid")
        try:
            self.config["label_modes"] = [check_mode(m) for m in self.config["label_modes"]]
        except ConfigError as exc:
            raise ConfigError(f"camvid.label_modes: {exc}") from exc
        self.root, self.split = Path(root), split
        self.images_dir = self.root / split
        self.pairs = self._pairs()
        if not self.pairs:
            raise CamVidError(f"no frames in split {split!r} of {self.root}: expected the SegNet "
                              f"layout <root>/{split}/*.png with <root>/{split}annot/ "
                              f"(or a {split}.txt pair list)")
        self.frames = [image.stem for image, _ in self.pairs]

    def _pairs(self) -> list[tuple[Path, Path]]:
        listing = self.root / f"{self.split}.txt"
        if listing.is_file():
            pairs = []
            for number, line in enumerate(listing.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise CamVidError(f"{listing}:{number}: expected 'image label', got {line!r}")
                # SegNet's own lists hold absolute paths (/SegNet/CamVid/train/x.png)
                pairs.append(tuple(self.root / Path(*Path(p).parts[-2:]) for p in parts))
            return pairs
        if not self.images_dir.is_dir():
            folders = sorted(p.name for p in self.root.iterdir() if p.is_dir()) \
                if self.root.is_dir() else []
            raise CamVidError(f"{self.images_dir} is not a folder and {listing} does not exist "
                              f"(folders in {self.root}: {', '.join(folders) or 'none'})")
        labels = self.root / f"{self.split}annot"
        return [(p, labels / p.name) for p in sorted(self.images_dir.glob("*.png"))]

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def image_path(self, index: int) -> Path:
        return self.pairs[index][0]

    def label_path(self, index: int) -> Path:
        return self.pairs[index][1]

    @property
    def labelled(self) -> bool:
        return True  # a CamVid split always comes with its annot folder

    def __getitem__(self, index: int) -> dict:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label_ids = read_camvid_labels(label_path, image.shape[:2])
        return {"name": self.frames[index], "image": image, "label_ids": label_ids,
                "labels": {m: CAMVID.remap(label_ids, m) for m in self.config["label_modes"]},
                "camera": None, "vehicle": None, "neighbour": None}


def read_camvid_labels(path: Path, shape=None) -> np.ndarray:
    """(H, W) uint8 CamVid label values (0..11) from a label PNG, checked against `shape`."""
    return read_label_png(path, shape, CAMVID, CamVidError,
                          missing="every CamVid frame needs its label PNG",
                          other_kinds="a colour-coded label image?",
                          outside="11 classes and 11 = Unlabelled")
