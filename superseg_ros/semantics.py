"""Semantic classes and the stability groups they map to.

The segmentation head predicts `classes`; post-processing only cares about which *stability group*
a pixel belongs to. The table travels inside every checkpoint, so a model trained on another label
set carries its own mapping.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .config import ConfigError

STATIC, FLAT, DYNAMIC, UNSTABLE = 0, 1, 2, 3
GROUPS = ("static_structure", "flat_surface", "dynamic_object", "unstable_ambiguous")
DEFAULT_STABLE_GROUPS = ("static_structure", "flat_surface")

# Cityscapes' 19 train ids (cityscapesScripts labels.py order) and their stability group.
# Vegetation moves in wind and repeats; sky has no geometry: both are unstable for VO.
CITYSCAPES_TRAIN_CLASSES = (
    ("road", FLAT), ("sidewalk", FLAT), ("building", STATIC), ("wall", STATIC),
    ("fence", STATIC), ("pole", STATIC), ("traffic light", STATIC), ("traffic sign", STATIC),
    ("vegetation", UNSTABLE), ("terrain", FLAT), ("sky", UNSTABLE), ("person", DYNAMIC),
    ("rider", DYNAMIC), ("car", DYNAMIC), ("truck", DYNAMIC), ("bus", DYNAMIC),
    ("train", DYNAMIC), ("motorcycle", DYNAMIC), ("bicycle", DYNAMIC),
)


def default_semantics() -> dict:
    return {
        "classes": [name for name, _ in CITYSCAPES_TRAIN_CLASSES],
        "groups": list(GROUPS),
        "class_to_group": [group for _, group in CITYSCAPES_TRAIN_CLASSES],
    }


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
