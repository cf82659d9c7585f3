"""Config dicts with defaults: every user-facing setting is checked against a default table.

A wrong key is the most common config mistake, so it is an error that names the key and the keys
that are allowed, never a silently ignored setting.
"""

from __future__ import annotations

import copy
import difflib
import re
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message says what to fix."""


def merge_config(defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None,
                 where: str = "config") -> dict:
    """Return a deep copy of `defaults` updated with `overrides`.

    Keys absent from `defaults` raise ConfigError. Nested dicts merge recursively, except where the
    default is an empty dict (an open mapping: any keys allowed).
    """
    merged = copy.deepcopy(dict(defaults))
    for key, value in (overrides or {}).items():
        if key not in merged:
            hint = difflib.get_close_matches(str(key), [str(k) for k in merged], n=1)
            raise ConfigError(
                f"unknown {where} key '{key}'"
                + (f" (did you mean '{hint[0]}'?)" if hint else "")
                + f"; valid keys: {', '.join(sorted(map(str, merged)))}")
        default = merged[key]
        if isinstance(default, dict) and default and isinstance(value, Mapping):
            merged[key] = merge_config(default, value, where=f"{where}.{key}")
        else:
            merged[key] = checked_type(value, default, f"{where}.{key}")
    return merged


def checked_type(value: Any, default: Any, name: str) -> Any:
    """`value` if it has the default's type (an int is accepted for a float); None = any."""
    if default is None or value is None:
        return copy.deepcopy(value)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{name} must be {type(default).__name__} (like {default!r}), "
                          f"got {value!r}")
    return copy.deepcopy(value)


def require_choice(value: Any, choices, name: str) -> Any:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


MAX_SETTINGS = 10_000  # more leaves than any real settings file: YAML aliases expanding


def flatten(nested: Mapping, prefix: str = "", limit: int = MAX_SETTINGS) -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1} (an empty mapping stays a value). More than `limit` leaves
    is a ConfigError: YAML aliases can make a few lines expand to 2^n settings."""
    flat: dict = {}

    def walk(mapping: Mapping, where: str) -> None:
        for key, value in mapping.items():
            name = f"{where}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, name + ".")
            else:
                flat[name] = value
                if len(flat) > limit:
                    raise ConfigError(f"more than {limit} settings (YAML aliases expanding into "
                                      "copies?): not a settings file")

    walk(nested, prefix)
    return flat


def read_yaml(path, what: str = "file") -> Any:
    """A YAML file's content, with one clear ConfigError for an unreadable or invalid file."""
    import yaml  # local: only the CLIs and the node read YAML

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to be a settings file") from None


def apply_overrides(conf: dict, items, example: str = "key.subkey=value") -> dict:
    """`KEY=VALUE` strings (command-line --set) into a copy of `conf`; values are YAML (so
    [240, 320], true, null work) and dotted keys reach into nested settings."""
    import yaml

    conf = copy.deepcopy(conf)
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. {example}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
        except RecursionError:
            raise ConfigError(f"--set {item[:40]!r}...: the value is nested too deeply") \
                from None
        set_dotted(conf, key.strip(), value, where=f"--set {item!r}")
    return conf


def set_dotted(conf: dict, dotted: str, value, where: str) -> None:
    """conf["a"]["b"] = value for dotted "a.b", making the groups on the way."""
    *parents, leaf = dotted.split(".")
    node = conf
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: '{part}' is a value, not a group of settings")
    node[leaf] = value


def read_parameters(path, node: str = "superseg_node", namespace: str = "/") -> dict:
    """The parameters a ROS 2 parameter file gives the node `namespace`/`node` (a plain mapping
    without `ros__parameters` sections is returned as it is).

    Sections are matched the way rcl does: a key without a leading '/' is made absolute, so
    `superseg_node:` matches only `/superseg_node`; `*` matches one name token and `**` any
    number of them (`/**/superseg_node:` matches the node in every namespace). Every matching
    section applies, in file order, later values winning. A file with sections but none for
    this node raises ConfigError naming the sections it has.
    """
    data = read_yaml(path, "parameter file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    sections = {k: v for k, v in data.items()
                if isinstance(v, dict) and "ros__parameters" in v}
    if not sections:
        return data
    fqn = fully_qualified_name(node, namespace)
    matched = [key for key in sections if node_key_matches(str(key), fqn)]
    if not matched:
        raise ConfigError(
            f"{path}: no parameters for {fqn} (its sections: {', '.join(map(str, sections))}); "
            f"a key without a namespace such as '{node}:' matches only /{node}: "
            f"key it '/**/{node}:' to apply in any namespace")
    merged: dict = {}
    for key in matched:
        params = sections[key]["ros__parameters"] or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: {key}.ros__parameters must be a mapping")
        for name, value in flatten(params).items():
            set_dotted(merged, name, value, where=f"{path}: {key}")
    return merged


def absolute_namespace(namespace: str) -> str:
    """'front', '/front/', 'a/b' -> '/front', '/a/b'; '' and '/' -> '' (no namespace)."""
    return "/" + namespace.strip("/") if namespace.strip("/") else ""


def fully_qualified_name(node: str, namespace: str = "/") -> str:
    """'superseg_node', 'front' -> '/front/superseg_node'."""
    return f"{absolute_namespace(namespace)}/{node}"


def node_key_matches(key: str, fqn: str) -> bool:
    """Does a parameter-file section key (with rcl's `*` and `**` wildcards) name node `fqn`?"""
    if not key.startswith("/"):
        key = "/" + key
    pattern = "".join(r"(/[^/]+)*" if token == "**" else r"/[^/]+" if token == "*"
                      else "/" + re.escape(token) for token in key.strip("/").split("/"))
    return re.fullmatch(pattern, fqn) is not None
