"""Report of a benchmark folder: one row per run, medians per input size, a table and plots.

`aipm-fast bench` writes one folder per run (see :mod:`aipm_fast.bench.folder`); this module
puts the pieces together:

- :func:`load_runs` reads and checks every run.json (:class:`~aipm_fast.bench.runfile.RunFile`);
- :func:`summarize` reduces the runs of each input size to medians and a run-to-run spread,
  :func:`write_summary` writes OUT/summary.csv;
- :func:`format_table` renders the summary for a terminal;
- :func:`plot_report` draws PNGs into OUT/plots/;
- :func:`build_report` does all of that but the table.

A file that is missing, unreadable or malformed raises :class:`ReportError` naming the file and
what is wrong with it. Data that was simply not measured (no GPU, no RAPL, no samples) is not an
error: the values are NaN and the plots that need them are skipped, with the reason.
"""

from __future__ import annotations

import os

from aipm_fast.bench.folder import load_runs
from aipm_fast.bench.plots import plot_report
from aipm_fast.bench.runfile import ReportError
from aipm_fast.bench.summary import summarize, write_summary
from aipm_fast.bench.table import format_table

__all__ = ["ReportError", "build_report", "format_table", "load_runs", "plot_report", "summarize", "write_summary"]


def build_report(out_dir) -> dict:
    """summary.csv and the plots: {"summary": path, "plots": [paths], "skipped": {plot: reason},
    "missing": [run folders without run.json, left out]}."""
    out_dir = os.fspath(out_dir)
    runs = load_runs(out_dir)
    summary = summarize(runs)
    summary_path = write_summary(out_dir, summary)
    skipped: dict[str, str] = {}
    plots = plot_report(out_dir, runs, summary, skipped=skipped)
    return {"summary": summary_path, "plots": plots, "skipped": skipped, "missing": runs.attrs.get("missing", [])}
