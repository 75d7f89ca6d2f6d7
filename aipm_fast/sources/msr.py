"""RAPL through the msr driver: <root>/<cpu>/msr, read with pread at the register address.

Used only when powercap gives nothing, so that no domain is counted twice. One CPU per
package is read (the packages' first CPUs, from the CPU topology in sysfs).
"""

from __future__ import annotations

import os
import struct

from aipm_fast._native import NativeError
from aipm_fast.sources import rapl
from aipm_fast.sources.base import COUNTER, Channel, Discovery, Problem

INTEL_UNITS = 0x606
INTEL_DOMAINS = [  # register, domain suffix ("" = the package itself)
    (0x611, ""),
    (0x639, "core"),
    (0x641, "uncore"),
    (0x619, "dram"),
]
INTEL_PLATFORM = 0x64D  # psys: the whole platform, not per package
AMD_UNITS = 0xC0010299
AMD_DOMAINS = [(0xC001029B, ""), (0xC001029A, "core")]

MSR_FIX = (
    "load the msr module (`sudo modprobe msr`) and run as root, or give the user "
    "CAP_SYS_RAWIO and read access to /dev/cpu/*/msr; or point AIPM_MSR_ROOT (--msr-root) elsewhere"
)


class ShortRegister(ValueError):
    """A register that the file holds only part of: not an msr device, or a truncated copy."""


def read_msr(path: str, register: int) -> int | None:
    """The 64-bit value of a register, or None where the register does not exist (the driver
    answers EIO; a regular file ends before it). Raises ShortRegister where fewer than its 8
    bytes could be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        data = os.pread(fd, 8, register)
    except OSError:
        return None
    finally:
        os.close(fd)
    if 0 < len(data) < 8:
        end = register + len(data)
        raise ShortRegister(f"register {register:#x}: only {len(data)} of its 8 bytes (the file ends at byte {end})")
    return struct.unpack("<Q", data)[0] if data else None


def _missing_package_register(path: str, register: int) -> str:
    """Why a package's energy status register, which every RAPL CPU has, cannot be read."""
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        return f"register {register:#x} unreadable: {exc.strerror}"
    if size and size < register + 8:
        return (
            f"the file is {size} bytes long, too short for the package energy register {register:#x} "
            f"(bytes {register}-{register + 7}): not the msr driver's device"
        )
    return f"the package energy register {register:#x} cannot be read"


def energy_unit_j(units_register: int) -> float:
    """Energy status unit: bits 12:8 give 2^-ESU joules."""
    return 2.0 ** -((units_register >> 8) & 0x1F)


def package_cpus(msr_root: str, cpu_root: str) -> dict[int, int]:
    """package id -> first CPU of that package that has an msr file."""
    cpus = sorted(int(d) for d in os.listdir(msr_root) if d.isdigit())
    packages: dict[int, int] = {}
    for cpu in cpus:
        topo = os.path.join(cpu_root, f"cpu{cpu}", "topology", "physical_package_id")
        pkg: int | None
        try:
            with open(topo) as f:
                pkg = int(f.read().strip())
        except (OSError, ValueError):
            # without topology, treat each msr folder as its own package only if it is the first
            pkg = 0 if not packages else None
        if pkg is not None and pkg not in packages:
            packages[pkg] = cpu
    return packages


def discover(engine, config) -> Discovery:
    found = Discovery()
    root = config.msr_root
    if not os.path.isdir(root):
        found.problems.append(Problem("msr", root, "no such folder", MSR_FIX))
        return found
    packages = package_cpus(root, config.cpu_root)
    if not packages:
        found.problems.append(Problem("msr", root, "no <cpu>/msr files", MSR_FIX))
        return found
    period = config.period("rapl")
    for pkg, cpu in sorted(packages.items()):
        path = os.path.join(root, str(cpu), "msr")
        try:
            intel_units = read_msr(path, INTEL_UNITS)
            amd_units = None if intel_units else read_msr(path, AMD_UNITS)
        except OSError as exc:
            found.problems.append(Problem("msr", path, f"open: {exc.strerror}", MSR_FIX))
            continue
        except ShortRegister as exc:
            found.problems.append(Problem("msr", path, str(exc), MSR_FIX))
            continue
        if intel_units:
            unit, registers = energy_unit_j(intel_units), list(INTEL_DOMAINS)
            if pkg == min(packages):
                registers.append((INTEL_PLATFORM, "psys"))
        elif amd_units:
            unit, registers = energy_unit_j(amd_units), AMD_DOMAINS
        else:
            found.problems.append(
                Problem(
                    "msr",
                    path,
                    "no RAPL unit register (0x606 or 0xC0010299)",
                    "this CPU or hypervisor does not expose RAPL MSRs",
                )
            )
            continue
        for register, suffix in registers:
            try:
                present = read_msr(path, register) is not None
            except ShortRegister as exc:
                found.problems.append(Problem("msr", f"{path}@{register:#x}", str(exc), MSR_FIX))
                continue
            if not present:
                if suffix == "":  # every RAPL CPU has the package counter: its absence is news
                    found.problems.append(
                        Problem("msr", f"{path}@{register:#x}", _missing_package_register(path, register), MSR_FIX)
                    )
                continue  # a CPU that lacks a sub-domain: not a problem worth reporting
            device = f"RAPL MSR {register:#x} on CPU {cpu}"
            if suffix == "psys":
                meaning = rapl.domain("psys", device=device)
            else:
                meaning = rapl.domain(f"package-{pkg}", suffix, device)
            try:
                cid = engine.add_msr_counter(path, register, unit, period)
            except (NativeError, OSError) as exc:
                found.problems.append(Problem("msr", f"{path}@{register:#x}", str(exc), MSR_FIX))
                continue
            found.channels.append(
                Channel(
                    cid,
                    meaning.name,
                    "energy",
                    COUNTER,
                    "energy",
                    "J",
                    "msr",
                    period,
                    update_s=rapl.UPDATE_S,
                    wrap=2.0**32 * unit,
                    detail=f"{path} register {register:#x}",
                )
            )
            found.add_domain(meaning)
    return found
