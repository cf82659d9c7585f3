"""Semantic classes and the stability groups they map to.

The segmentation head predicts `classes`; post-processing only cares about which *stability group*
a pixel belongs to. The table travels inside every checkpoint, so a model trained on another label
set carries its own mapping.

Each labelled dataset has one table, the one place where its label ids, train ids and stability
groups are defined: `CITYSCAPES_LABELS` (the full Cityscapes ontology) and `CAMVID_LABELS` (the
11 SegNet CamVid classes). An `Ontology` derives everything else from its table: the train
classes, the lookup arrays and the two training label modes ('classes', 'groups4').
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from .config import ConfigError

STATIC, FLAT, DYNAMIC, UNSTABLE = 0, 1, 2, 3
GROUPS = ("static_structure", "flat_surface", "dynamic_object", "unstable_ambiguous")
DEFAULT_STABLE_GROUPS = ("static_structure", "flat_surface")
IGNORE = 255  # label value that losses skip (Cityscapes' own choice for train ids)


class CityscapesLabel(NamedTuple):
    """One row of cityscapesScripts' helpers/labels.py, plus this project's stability group."""
    name: str
    id: int              # value in *_gtFine_labelIds.png (-1: never drawn into label images)
    train_id: int        # official train id, 255 = ignored in training, -1 for license plate
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    group: int           # STATIC/FLAT/DYNAMIC/UNSTABLE, or IGNORE (not supervised)


# Copied field by field from cityscapesScripts (mcordts/cityscapesScripts, helpers/labels.py, the
# official 35-row table; forks that add lane-line ids 34..45 are not Cityscapes). Groups of the
# 19 train classes: vegetation moves in wind and repeats, sky has no geometry -> unstable for VO.
# The classes the official train ids leave out still get a group here, so 'groups4' supervises
# them: parking and rail track are flat ground; guard rail, bridge, tunnel and polegroup are
# rigid structure; caravan and trailer are vehicles that move.
# Void rows are IGNORE, in both modes, because they carry no usable meaning for the network:
# 'unlabeled' is what annotators did not label; 'static', 'dynamic' and 'ground' are catch-alls
# for leftovers of mixed kinds (a 'dynamic' pixel may be a parked pram or a moving one), and are
# annotated less carefully than real classes; 'ego vehicle', 'rectification border' and 'out of
# roi' mark fixed image regions of the Cityscapes camera rig, so supervising them teaches the
# shape of one car's hood, not semantics. 'license plate' has id -1: it is never written into
# labelIds images (its pixels are 'car' there).
CITYSCAPES_LABELS = (
    #              name                    id  trainId  category      catId  inst   ignEval group
    CityscapesLabel("unlabeled",             0, 255, "void",         0, False, True,  IGNORE),
    CityscapesLabel("ego vehicle",           1, 255, "void",         0, False, True,  IGNORE),
    CityscapesLabel("rectification border",  2, 255, "void",         0, False, True,  IGNORE),
    CityscapesLabel("out of roi",            3, 255, "void",         0, False, True,  IGNORE),
    CityscapesLabel("static",                4, 255, "void",         0, False, True,  IGNORE),
    CityscapesLabel("dynamic",               5, 255, "void",         0, False, True,  IGNORE),
    CityscapesLabel("ground",                6, 255, "void",         0, False, True,  IGNORE),
    CityscapesLabel("road",                  7,   0, "flat",         1, False, False, FLAT),
    CityscapesLabel("sidewalk",              8,   1, "flat",         1, False, False, FLAT),
    CityscapesLabel("parking",               9, 255, "flat",         1, False, True,  FLAT),
    CityscapesLabel("rail track",           10, 255, "flat",         1, False, True,  FLAT),
    CityscapesLabel("building",             11,   2, "construction", 2, False, False, STATIC),
    CityscapesLabel("wall",                 12,   3, "construction", 2, False, False, STATIC),
    CityscapesLabel("fence",                13,   4, "construction", 2, False, False, STATIC),
    CityscapesLabel("guard rail",           14, 255, "construction", 2, False, True,  STATIC),
    CityscapesLabel("bridge",               15, 255, "construction", 2, False, True,  STATIC),
    CityscapesLabel("tunnel",               16, 255, "construction", 2, False, True,  STATIC),
    CityscapesLabel("pole",                 17,   5, "object",       3, False, False, STATIC),
    CityscapesLabel("polegroup",            18, 255, "object",       3, False, True,  STATIC),
    CityscapesLabel("traffic light",        19,   6, "object",       3, False, False, STATIC),
    CityscapesLabel("traffic sign",         20,   7, "object",       3, False, False, STATIC),
    CityscapesLabel("vegetation",           21,   8, "nature",       4, False, False, UNSTABLE),
    CityscapesLabel("terrain",              22,   9, "nature",       4, False, False, FLAT),
    CityscapesLabel("sky",                  23,  10, "sky",          5, False, False, UNSTABLE),
    CityscapesLabel("person",               24,  11, "human",        6, True,  False, DYNAMIC),
    CityscapesLabel("rider",                25,  12, "human",        6, True,  False, DYNAMIC),
    CityscapesLabel("car",                  26,  13, "vehicle",      7, True,  False, DYNAMIC),
    CityscapesLabel("truck",                27,  14, "vehicle",      7, True,  False, DYNAMIC),
    CityscapesLabel("bus",                  28,  15, "vehicle",      7, True,  False, DYNAMIC),
    CityscapesLabel("caravan",              29, 255, "vehicle",      7, True,  True,  DYNAMIC),
    CityscapesLabel("trailer",              30, 255, "vehicle",      7, True,  True,  DYNAMIC),
    CityscapesLabel("train",                31,  16, "vehicle",      7, True,  False, DYNAMIC),
    CityscapesLabel("motorcycle",           32,  17, "vehicle",      7, True,  False, DYNAMIC),
    CityscapesLabel("bicycle",              33,  18, "vehicle",      7, True,  False, DYNAMIC),
    CityscapesLabel("license plate",        -1,  -1, "vehicle",      7, False, True,  IGNORE),
)



class CamVidLabel(NamedTuple):
    """One value of CamVid's SegNet-split label PNGs (trainannot/, valannot/)."""
    name: str
    id: int              # pixel value in the label PNG; also the train id (11 = Unlabelled)
    group: int           # STATIC/FLAT/DYNAMIC/UNSTABLE, or IGNORE (not supervised)


# The 11 classes of the SegNet CamVid split (Badrinarayanan et al.; Brostow et al.'s 32 classes
# merged), in label-PNG order. Groups mean what they mean for Cityscapes: SignSymbol and Fence are
# rigid structure like traffic signs and fences there; Pavement is Cityscapes' sidewalk; Tree is
# vegetation; Bicyclist is rider + bicycle.
CAMVID_LABELS = (
    CamVidLabel("Sky",         0, UNSTABLE),
    CamVidLabel("Building",    1, STATIC),
    CamVidLabel("Pole",        2, STATIC),
    CamVidLabel("Road",        3, FLAT),
    CamVidLabel("Pavement",    4, FLAT),
    CamVidLabel("Tree",        5, UNSTABLE),
    CamVidLabel("SignSymbol",  6, STATIC),
    CamVidLabel("Fence",       7, STATIC),
    CamVidLabel("Car",         8, DYNAMIC),
    CamVidLabel("Pedestrian",  9, DYNAMIC),
    CamVidLabel("Bicyclist",  10, DYNAMIC),
    CamVidLabel("Unlabelled", 11, IGNORE),
)

LABEL_MODES = ("classes", "groups4")
MODE_ALIASES = {"classes19": "classes"}  # the Cityscapes-only name of 'classes' in older configs


class Ontology:
    """One dataset's label table and every lookup derived from it.

    `rows` are (name, label-PNG value, train id, group): the train id is the class the semantic
    head predicts (0..n-1, IGNORE = not supervised as a class), the group its stability group
    (IGNORE = not supervised at all). Label modes: 'classes' (the dataset's train classes) and
    'groups4' (the head predicts the four groups directly).
    """

    def __init__(self, name: str, rows, label_file: str):
        self.name, self.label_file = name, label_file
        self.rows = tuple((str(n), int(i), int(t), int(g)) for n, i, t, g in rows)
        trained = sorted((r for r in self.rows if 0 <= r[2] < IGNORE), key=lambda r: r[2])
        if [r[2] for r in trained] != list(range(len(trained))):
            raise ValueError(f"{name}: train ids must be 0..n-1, each used once")
        self.train_classes = tuple((r[0], r[3]) for r in trained)
        self.max_id = max(r[1] for r in self.rows)

    def semantics(self, mode: str) -> dict:
        """The class/group table of a network trained on `remap(..., mode)` targets."""
        if check_mode(mode) == "classes":
            return {"classes": [n for n, _ in self.train_classes], "groups": list(GROUPS),
                    "class_to_group": [g for _, g in self.train_classes]}
        return {"classes": list(GROUPS), "groups": list(GROUPS),
                "class_to_group": list(range(len(GROUPS)))}

    def lookup(self, mode: str) -> np.ndarray:
        """(256,) uint8: label-PNG value -> training target of `mode`; IGNORE for values the
        table does not define."""
        column = 2 if check_mode(mode) == "classes" else 3
        table = np.full(256, IGNORE, np.uint8)
        for row in self.rows:
            if row[1] >= 0:  # Cityscapes' license plate (-1) is never drawn into a label image
                table[row[1]] = row[column] if 0 <= row[column] < IGNORE else IGNORE
        return table

    def remap(self, label_ids: np.ndarray, mode: str) -> np.ndarray:
        """Label-PNG values (any shape, integer) -> uint8 targets of `mode` (IGNORE = skip). A
        value outside the table is a ValueError: it means the wrong file was passed (a colour
        or instance PNG, say), which a silent IGNORE would hide."""
        table = self.lookup(mode)
        label_ids = np.asarray(label_ids)
        if not np.issubdtype(label_ids.dtype, np.integer):
            raise ValueError(f"label ids must be an integer array, got dtype {label_ids.dtype}")
        bad = self.values_outside(label_ids)
        if bad.size:
            raise ValueError(f"values {bad[:10].tolist()} are not {self.name} label ids "
                             f"(0..{self.max_id}); expected {self.label_file}")
        return table[label_ids]

    def values_outside(self, label_ids: np.ndarray) -> np.ndarray:
        """The distinct values of `label_ids` that are not label-PNG values of this table."""
        label_ids = np.asarray(label_ids)
        if not label_ids.size or (label_ids.min() >= 0 and label_ids.max() <= self.max_id):
            return np.zeros(0, np.int64)
        return np.unique(label_ids[(label_ids < 0) | (label_ids > self.max_id)])


CITYSCAPES = Ontology("Cityscapes", ((lb.name, lb.id, lb.train_id, lb.group)
                                     for lb in CITYSCAPES_LABELS),
                      "a *_gtFine_labelIds.png image")
CAMVID = Ontology("CamVid", ((lb.name, lb.id, lb.id if lb.group != IGNORE else IGNORE, lb.group)
                             for lb in CAMVID_LABELS),
                  "a SegNet CamVid label PNG (trainannot/, valannot/)")
ONTOLOGIES = {"cityscapes": CITYSCAPES, "camvid": CAMVID}

# Cityscapes' 19 train ids (cityscapesScripts labels.py order) and their stability group.
CITYSCAPES_TRAIN_CLASSES = CITYSCAPES.train_classes
CITYSCAPES_MAX_ID = CITYSCAPES.max_id  # 33; labelIds PNGs hold 0..33


def ontology(dataset: str) -> Ontology:
    if dataset not in ONTOLOGIES:
        raise ConfigError(f"unknown dataset {dataset!r}; datasets with a label table: "
                          f"{', '.join(ONTOLOGIES)}")
    return ONTOLOGIES[dataset]


def default_semantics() -> dict:
    """The table of a network built without one: Cityscapes' 19 classes."""
    return CITYSCAPES.semantics("classes")


def semantics_for(mode: str, dataset: str = "cityscapes") -> dict:
    """The class/group table of a network trained on `dataset`'s `mode` targets ('classes': the
    dataset's train classes; 'groups4': classes = groups, class_to_group the identity)."""
    return ontology(dataset).semantics(mode)


def cityscapes_id_to_train_id() -> np.ndarray:
    """(256,) uint8 lookup: labelIds value -> official train id; 255 = ignore (also for ids
    that Cityscapes does not define)."""
    return CITYSCAPES.lookup("classes")


def cityscapes_id_to_group() -> np.ndarray:
    """(256,) uint8 lookup: labelIds value -> stability group id (0..3); 255 = ignore."""
    return CITYSCAPES.lookup("groups4")


def remap_labels(label_ids: np.ndarray, mode: str, dataset: str = "cityscapes") -> np.ndarray:
    """Label-PNG values of `dataset` -> uint8 training targets of `mode` (Ontology.remap)."""
    return ontology(dataset).remap(label_ids, mode)


def check_mode(mode: str) -> str:
    """The canonical name of a label mode ('classes19' -> 'classes'); ConfigError if unknown."""
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in LABEL_MODES:
        raise ConfigError(f"unknown label mode {mode!r}; modes are: {', '.join(LABEL_MODES)}")
    return mode


def validate_semantics(semantics: Mapping, num_classes: int, source: str = "semantics") -> dict:
    """Check a class/group table against the network's number of classes."""
    for key in ("classes", "groups", "class_to_group"):
        if key not in semantics:
            raise ConfigError(f"{source}: missing '{key}' in the class/group table")
    classes, groups = list(semantics["classes"]), list(semantics["groups"])
    class_to_group = [int(g) for g in semantics["class_to_group"]]
    if len(classes) != num_classes or len(class_to_group) != num_classes:
        raise ConfigError(
            f"{source}: the network predicts {num_classes} classes but the table lists "
            f"{len(classes)} class names and {len(class_to_group)} group ids")
    bad = [g for g in class_to_group if not 0 <= g < len(groups)]
    if bad:
        raise ConfigError(f"{source}: group ids {sorted(set(bad))} are outside 0..{len(groups) - 1}")
    return {"classes": classes, "groups": groups, "class_to_group": class_to_group}


def stable_group_ids(groups: Sequence[str], stable: Sequence[str | int]) -> list[int]:
    """Turn stable-group names (or ids) into ids, with an error that lists the valid names."""
    ids = []
    for item in stable:
        if isinstance(item, int) and 0 <= item < len(groups):
            ids.append(item)
        elif item in groups:
            ids.append(list(groups).index(item))
        else:
            raise ConfigError(f"unknown stable group {item!r}; groups are: {', '.join(groups)}")
    return sorted(set(ids))
