"""The C engine under AddressSanitizer (+UBSan) and ThreadSanitizer.

A sanitizer runtime cannot be loaded into a running Python, so tests/c/engine_driver.c drives
the engine from C, against a powercap-like file and the fake NVML, both built here with the
same sanitizer: it drains while the sampler runs, reads the statistics from a third thread,
and checks a slow first pass and a failed setup. Any report, or any failed check, fails it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
DRIVER = ROOT / "tests" / "c" / "engine_driver.c"
FAKE_NVML = ROOT / "tests" / "fakes" / "fake_nvml.c"

SANITIZERS = {
    "asan+ubsan": (
        ["-fsanitize=address,undefined"],
        {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"},
    ),
    "tsan": (["-fsanitize=thread"], {"TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1"}),
}
COMMON = ["-std=gnu11", "-O1", "-g", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-Werror", f"-I{CSRC}"]


def extension_build():
    """csrc/build_native.py, for its list of sources and its warnings: one list for both builds."""
    spec = importlib.util.spec_from_file_location("build_native", CSRC / "build_native.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gcc_with(flags, tmp_path) -> str:
    """gcc, once a trivial threaded program builds and runs with these sanitizer flags."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: the sanitizer builds of the C engine need it")
    probe = tmp_path / "probe.c"
    probe.write_text(
        "#include <pthread.h>\nstatic void *f(void *a) { return a; }\n"
        "int main(void) { pthread_t t; pthread_create(&t, 0, f, 0); return pthread_join(t, 0); }\n"
    )
    built = subprocess.run(
        [gcc, *flags, str(probe), "-o", str(tmp_path / "probe"), "-lpthread"], capture_output=True, text=True
    )
    if built.returncode != 0:
        pytest.skip(f"gcc cannot link {' '.join(flags)} (runtime not installed?): {built.stderr.strip()}")
    ran = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, timeout=30)
    if ran.returncode != 0:
        pytest.skip(f"the {' '.join(flags)} runtime does not run here: {ran.stderr.strip()[:500]}")
    return gcc


def compile_or_fail(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"build failed:\n{' '.join(map(str, cmd))}\n{result.stderr}", pytrace=False)


@pytest.mark.parametrize("name", sorted(SANITIZERS))
def test_engine_driver_is_clean_under_the_sanitizer(name, tmp_path):
    flags, options = SANITIZERS[name]
    gcc = gcc_with(flags, tmp_path)
    build = extension_build()
    fake = tmp_path / "libfake_nvml.so"
    compile_or_fail([gcc, *COMMON, *flags, "-Wall", "-Wextra", "-shared", "-fPIC", str(FAKE_NVML), "-o", str(fake)])
    driver = tmp_path / "engine_driver"
    compile_or_fail(
        [
            gcc,
            *COMMON,
            *flags,
            *build.WARNINGS,
            str(DRIVER),
            *(str(CSRC / s) for s in build.SOURCES),
            "-o",
            str(driver),
            "-ldl",
            "-lpthread",
        ]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML_")}
    env.update(options)
    result = subprocess.run(
        [str(driver), str(tmp_path), str(fake)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, f"{name} run failed (rc {result.returncode}):\n{result.stdout}\n{result.stderr}"
    assert "all checks passed" in result.stdout
