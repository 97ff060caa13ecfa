"""Build script: setuptools reads pyproject.toml; this file declares the
compiled extensions (none yet: the Cython hot path lands in src/tel400/_fast/)."""

from setuptools import setup

setup(ext_modules=[])
