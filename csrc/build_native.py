"""cffi build script for the native sampler (aipm_fast._aipm_native).

The cdef is the public header itself, between its CDEF markers, so the C API and what
Python sees cannot drift apart. Needs only gcc: no CUDA toolkit, no NVML headers.
"""

import os
import pathlib
import sys

from cffi import FFI

CSRC = pathlib.Path(__file__).resolve().parent
ROOT = CSRC.parent
SOURCES = ["engine.c", "ring.c", "src_files.c", "src_nvml.c", "cudart.c"]
# -Wmissing-prototypes: a function another file calls is declared in internal.h, and one that
# no other file calls is static; the sanitizer builds (tests/c/) add -Werror to these.
WARNINGS = ["-Wall", "-Wextra", "-Wmissing-prototypes", "-Wno-unused-parameter"]


def header_cdef() -> str:
    text = (CSRC / "aipm.h").read_text()
    body = text.split("/* AIPM_CDEF_BEGIN */", 1)[1].split("/* AIPM_CDEF_END */", 1)[0]
    return body


if __name__ == "__main__":
    # In-place build for development and for machines without network access for pip's build
    # isolation: `python csrc/build_native.py` leaves aipm_fast/_aipm_native*.so in the tree.
    os.chdir(ROOT)

ffibuilder = FFI()
ffibuilder.cdef(header_cdef())
ffibuilder.set_source(
    "aipm_fast._aipm_native",
    # cffi's own module init has no prototype: keep the warning for our files only
    '#include "aipm.h"\n#pragma GCC diagnostic ignored "-Wmissing-prototypes"',
    # relative paths: setuptools builds from the project root and refuses absolute sources
    sources=[os.path.relpath(CSRC / name, os.getcwd()) for name in SOURCES],
    include_dirs=[os.path.relpath(CSRC, os.getcwd())],
    libraries=["dl", "pthread"],
    extra_compile_args=["-O2", "-std=gnu11", *WARNINGS],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(ROOT), verbose="-v" in sys.argv)
