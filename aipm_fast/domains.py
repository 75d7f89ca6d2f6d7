"""Which measured domains add up without counting any energy twice, and which part each counts
in. The sources declare it (aipm_fast.sources.Domain: part, additive, parent); this module only
reads those declarations, for mappings of domain meaning and for result tables that carry them
as `part` and `additive` columns (Meter.windows(), gathered tables)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from aipm_fast.sources.base import GPU, HOST, PLATFORM, Domain

#: The benchmark's energy columns (gpu_j, cpu_j; total_j is their sum), by the parts they hold.
BENCH_COLUMNS = {"gpu": (GPU,), "cpu": (HOST, PLATFORM)}


def additive_domains(domains: Mapping[str, Domain], names: Iterable[str] | None = None) -> list[str]:
    """The domains (those of `names`, default all) whose energies add up without overlap."""
    names = list(domains) if names is None else list(names)
    return [d for d in names if d in domains and domains[d].additive]


def bench_parts(domains: Mapping[str, Domain], names: Iterable[str] | None = None) -> dict[str, list[str]]:
    """{bench column: its additive domains}, e.g. {"gpu": ["nvml:0"], "cpu": ["rapl:package-0"]}."""
    add = additive_domains(domains, names)
    return {col: [d for d in add if domains[d].part in parts] for col, parts in BENCH_COLUMNS.items()}


def additive_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a result table (with an `additive` column) that add into totals."""
    return table[table["additive"].astype(bool)]


def gpu_rows(table: pd.DataFrame) -> pd.Series:
    """Which rows of a result table (with a `part` column) are GPU energy (a boolean Series)."""
    return table["part"] == GPU
