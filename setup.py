# The native sampler is a cffi extension; setup.py exists only to name it (cffi_modules is not
# expressible in pyproject.toml). Everything else lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["csrc/build_native.py:ffibuilder"])
