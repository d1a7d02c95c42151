"""Only for cffi: pyproject.toml has the metadata; this adds the native extension build."""
from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:ffibuilder"])
