"""Semantic classes and the stability groups they map to.

The segmentation head predicts `classes`; post-processing only cares about which *stability group*
a pixel belongs to. The table travels inside every checkpoint, so a model trained on another label
set carries its own mapping.

The full Cityscapes ontology (`CITYSCAPES_LABELS`) is the one place where label ids, train ids and
stability groups are defined; the 19-class table, the lookup arrays and the two training label
modes ('classes19', 'groups4') are all derived from it.
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

# Cityscapes' 19 train ids (cityscapesScripts labels.py order) and their stability group.
CITYSCAPES_TRAIN_CLASSES = tuple(
    (label.name, label.group)
    for label in sorted((lb for lb in CITYSCAPES_LABELS if 0 <= lb.train_id < IGNORE),
                        key=lambda lb: lb.train_id))

CITYSCAPES_MAX_ID = max(label.id for label in CITYSCAPES_LABELS)  # 33; labelIds PNGs hold 0..33
LABEL_MODES = ("classes19", "groups4")


def default_semantics() -> dict:
    return {
        "classes": [name for name, _ in CITYSCAPES_TRAIN_CLASSES],
        "groups": list(GROUPS),
        "class_to_group": [group for _, group in CITYSCAPES_TRAIN_CLASSES],
    }


def semantics_for(mode: str) -> dict:
    """The class/group table of a network trained on `remap_labels(..., mode)` targets.

    'classes19': the 19 Cityscapes train classes (= default_semantics()); 'groups4': the network
    predicts the four stability groups directly, so classes = groups and class_to_group is the
    identity.
    """
    _check_mode(mode)
    if mode == "classes19":
        return default_semantics()
    return {"classes": list(GROUPS), "groups": list(GROUPS),
            "class_to_group": list(range(len(GROUPS)))}


def cityscapes_id_to_train_id() -> np.ndarray:
    """(256,) uint8 lookup: labelIds value -> official train id; 255 = ignore (also for ids
    that Cityscapes does not define)."""
    return _lookup(lambda label: label.train_id)


def cityscapes_id_to_group() -> np.ndarray:
    """(256,) uint8 lookup: labelIds value -> stability group id (0..3); 255 = ignore."""
    return _lookup(lambda label: label.group)


def _lookup(value_of) -> np.ndarray:
    table = np.full(256, IGNORE, np.uint8)
    for label in CITYSCAPES_LABELS:
        if label.id >= 0:  # license plate (-1) never appears in a label image
            table[label.id] = value_of(label)
    return table


def remap_labels(label_ids: np.ndarray, mode: str) -> np.ndarray:
    """Cityscapes labelIds (any shape, integer) -> uint8 training targets of `mode`.

    'classes19': train ids 0..18, 'groups4': group ids 0..3; 255 = ignore in both. A value that
    is not a Cityscapes label id (0..33) is a ValueError: it means the wrong file was passed
    (a colour or instance-id PNG, say), which a silent 255 would hide.
    """
    _check_mode(mode)
    label_ids = np.asarray(label_ids)
    if not np.issubdtype(label_ids.dtype, np.integer):
        raise ValueError(f"label ids must be an integer array, got dtype {label_ids.dtype}")
    if label_ids.size and (label_ids.min() < 0 or label_ids.max() > CITYSCAPES_MAX_ID):
        bad = np.unique(label_ids[(label_ids < 0) | (label_ids > CITYSCAPES_MAX_ID)])
        raise ValueError(f"values {bad[:10].tolist()} are not Cityscapes label ids "
                         f"(0..{CITYSCAPES_MAX_ID}); expected a *_gtFine_labelIds.png image")
    table = cityscapes_id_to_train_id() if mode == "classes19" else cityscapes_id_to_group()
    return table[label_ids]


def _check_mode(mode: str) -> None:
    if mode not in LABEL_MODES:
        raise ConfigError(f"unknown label mode {mode!r}; modes are: {', '.join(LABEL_MODES)}")


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
