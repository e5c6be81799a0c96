"""The interpreter check agrees with the dynamic linker about this Python."""

import shutil
import subprocess
import sys

import pytest

from streams.interpreter import interpreter, slow_build_warning


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("ldd") is None, reason="needs Linux and ldd")
def test_libpython_kind_matches_ldd():
    linked = subprocess.run(["ldd", sys.executable], capture_output=True, text=True, check=True).stdout
    info = interpreter()
    assert info["libpython"] == ("shared" if "libpython3" in linked else "static"), (linked, info)
    # the warning follows the kind: never for a static interpreter
    if info["libpython"] == "static":
        assert slow_build_warning(info) is None


def test_warning_names_the_interpreter_and_the_way_out():
    said = slow_build_warning({"version": "3.11.7", "executable": "/opt/py/bin/python", "libpython": "shared",
                               "optimized": "not recorded"})
    assert said is not None and "/opt/py/bin/python" in said and "--enable-optimizations" in said
    assert slow_build_warning({"version": "3.11.7", "executable": "/x", "libpython": "shared",
                               "optimized": "yes"}) is None
