"""Build script: setuptools reads pyproject.toml; this file declares the
compiled hot path in src/tel400/_fast/.

Environment:
    TEL400_NO_EXTENSIONS=1   build nothing (the pure-Python reference runs)
    TEL400_DEBUG_BUILD=1     -O0 -g and line tracing, for debuggers and coverage
"""

import os

from setuptools import setup

ADAPTER_MODULES = ["_fastparse"]
MODULES = ["_numbers", "_segments", "_clock", "_select", "_counters", "_shm", "_engine", "_plans", "_compile"]


def extensions():
    if os.environ.get("TEL400_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    debug = bool(os.environ.get("TEL400_DEBUG_BUILD"))
    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if debug else []
    flags = ["-O0", "-g"] if debug else ["-O2"]
    exts = [
        Extension(
            f"tel400._fast.{name}",
            [f"src/tel400/_fast/{name}.pyx"],
            define_macros=macros,
            extra_compile_args=flags,
        )
        for name in MODULES
        if os.path.exists(f"src/tel400/_fast/{name}.pyx")
    ]
    # the FreeSWITCH adapter's Event Socket parser (its reference: tel400_freeswitch/protocol.py)
    exts += [
        Extension(f"tel400_freeswitch.{name}", [f"adapters/freeswitch/tel400_freeswitch/{name}.pyx"],
                  define_macros=macros, extra_compile_args=flags)
        for name in ADAPTER_MODULES
        if os.path.exists(f"adapters/freeswitch/tel400_freeswitch/{name}.pyx")
    ]
    return cythonize(
        exts,
        compiler_directives={
            "language_level": 3,
            "embedsignature": True,
            "linetrace": debug,
        },
    )


setup(ext_modules=extensions())
