"""Which Python runs this process, and whether it is a build that runs the worker slowly.

The worker's processing path took 12-34 % more CPU per event on a CPython whose core is
a shared ``libpython`` built without profile-guided optimisation (pyenv's default build)
than on a statically linked, optimised one (Debian's ``python3``); see ``docs/speed.md``.
The official ``python`` container images, which ``deploy/Dockerfile`` uses, are built
with ``--enable-optimizations``.

>>> info = interpreter()
>>> sorted(info)
['executable', 'libpython', 'optimized', 'version']
>>> info["libpython"] in ("shared", "static", "unknown")
True
"""

from __future__ import annotations

import platform
import sys
import sysconfig


def _libpython() -> str:
    """"shared" when a libpython shared library is mapped into this process, "static"
    when none is (the interpreter is in the executable), "unknown" off Linux."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return "shared" if any("/libpython3" in line for line in maps) else "static"
    except OSError:
        return "unknown"


def interpreter() -> dict[str, str]:
    """This interpreter: version, executable, how its core is linked (``libpython``) and
    whether its configure line asked for PGO (``optimized``: "yes", or "not recorded":
    distributions build with PGO through their own make targets and do not record it)."""
    config = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    return {"version": platform.python_version(), "executable": sys.executable, "libpython": _libpython(),
            "optimized": "yes" if "--enable-optimizations" in config else "not recorded"}


def slow_build_warning(info: dict[str, str] | None = None) -> str | None:
    """A line for the log when this interpreter is of the slow kind: a shared libpython
    whose configure line did not ask for PGO. None otherwise.

    >>> slow_build_warning({"version": "3.11.7", "executable": "/x/python", "libpython": "shared",
    ...                     "optimized": "not recorded"}) is not None
    True
    >>> slow_build_warning({"version": "3.11.2", "executable": "/usr/bin/python3", "libpython": "static",
    ...                     "optimized": "not recorded"}) is None
    True
    """
    info = info or interpreter()
    if info["libpython"] != "shared" or info["optimized"] == "yes":
        return None
    return (f"Python {info['version']} ({info['executable']}) runs from a shared libpython built without "
            "--enable-optimizations: the worker's processing path took 12-34 % more CPU per event on such a "
            "build than on an optimised one "
            "(a distribution's python3, the official container images, or pyenv with "
            "PYTHON_CONFIGURE_OPTS='--enable-optimizations --with-lto'); see docs/speed.md")
