"""cffi build script for the native sampler (aipm_fast._aipm_native).

The cdef is the public header itself, between its CDEF markers, so the C API and what
Python sees cannot drift apart. Needs only gcc: no CUDA toolkit, no NVML headers.
"""
import pathlib

from cffi import FFI

CSRC = pathlib.Path(__file__).resolve().parent
SOURCES = ["engine.c", "ring.c", "src_files.c", "src_nvml.c"]


def header_cdef() -> str:
    text = (CSRC / "aipm.h").read_text()
    body = text.split("/* AIPM_CDEF_BEGIN */", 1)[1].split("/* AIPM_CDEF_END */", 1)[0]
    return body


ffibuilder = FFI()
ffibuilder.cdef(header_cdef())
ffibuilder.set_source(
    "aipm_fast._aipm_native",
    '#include "aipm.h"',
    sources=[str(CSRC / name) for name in SOURCES],
    include_dirs=[str(CSRC)],
    libraries=["dl", "pthread"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
