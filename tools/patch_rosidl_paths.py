#!/usr/bin/env python3
"""Point the ROS wheels' rosidl Python CMake exports at this interpreter's include directories.

The ros-* wheels ship `share/*/cmake/*__rosidl_generator_pyExport.cmake` files that hard-code the
wheel build machine's paths (/opt/python/cp311-cp311/include/python3.11 and its numpy include);
CMake then refuses to build any interface package ("non-existent path"). This rewrites both to the
running interpreter's Python and numpy include directories. Idempotent: run it after every install
(`make setup` does) with the environment's own python:
    .venv/bin/python tools/patch_rosidl_paths.py [PREFIX]    (PREFIX defaults to sys.prefix)
"""
import re
import sys
import sysconfig
from pathlib import Path

import numpy

# Any path ending in .../include/python3.N or .../numpy/(_)core/include, inside a CMake string list.
PYTHON_INCLUDE = re.compile(r'[^";]*/include/python3\.\d+(?=[";])')
NUMPY_INCLUDE = re.compile(r'[^";]*/numpy/_?core/include(?=[";])')


def patch(prefix: Path) -> int:
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    if not Path(python_include, "Python.h").is_file():
        print(f"warning: no Python.h in {python_include}; building messages needs the Python "
              "development headers", file=sys.stderr)
    changed = 0
    for path in sorted(prefix.glob("share/*/cmake/*__rosidl_generator_pyExport.cmake")):
        text = path.read_text()
        new = PYTHON_INCLUDE.sub(lambda _: python_include, text)
        new = NUMPY_INCLUDE.sub(lambda _: numpy_include, new)
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


def main() -> int:
    prefix = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sys.prefix)
    changed = patch(prefix)
    print(f"patch_rosidl_paths: {changed} file(s) changed under {prefix}/share")
    return 0


if __name__ == "__main__":
    sys.exit(main())
