"""Build hooks: compile the Cython fastpath and generate gRPC stubs from protos/.

Generated stubs land in ``meshproto/`` (git-ignored); ``scripts/gen_protos.py``
is the generator and can be run by hand after editing a ``.proto`` file.
"""
from __future__ import annotations

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
import gen_protos  # noqa: E402  (the generator lives in scripts/, not in a package)

gen_protos.generate()

_DEBUG = os.environ.get("MESH_FASTPATH_DEBUG") == "1"

extensions = [
    Extension(f"fastpath.{name}", [f"fastpath/{name}.pyx"], extra_compile_args=["-O3"])
    for name in ("codec", "wire", "batch")
    if os.path.exists(f"fastpath/{name}.pyx")
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compile_time_env={"MESH_DEBUG": _DEBUG},
        compiler_directives={
            "boundscheck": _DEBUG,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
