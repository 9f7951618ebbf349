"""The one compiled piece: famfs._cacheline, the cache-line instructions famfs/cacheflush.py
needs for memory that is not cache-coherent (docs/consistency.md). Everything else is in
pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("famfs._cacheline", ["famfs/_cacheline.c"], extra_compile_args=["-O2", "-Wall"])])
