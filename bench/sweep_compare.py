"""Per-size J/inference of one sweep folder measured one GPU at a time and one measured with every
GPU at once (`aipm-fast bench --gpus-at-once one|all` under torchrun), side by side with their
run-to-run spread, and the other GPUs' mean power during the runs, as a Markdown table.

Usage: python3 bench/sweep_compare.py ONE_DIR ALL_DIR [--title T] > table.md

The GPU part is compared: with every GPU at once the host energy of a run is not its own (meta.json
gives it per node for the whole sweep), so total J/inference exists in the `one` folder only.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import pandas as pd


def _neighbour_w(folder: str) -> pd.Series:
    """Median over runs, per size, of the other GPUs' mean power summed (W)."""
    table = pd.read_csv(os.path.join(folder, "sweep_runs.csv"))
    cols = [c for c in table.columns if c.startswith("neighbour_gpu")]
    if not cols:
        return pd.Series(dtype=float)
    table["neighbours_w"] = table[cols].sum(axis=1, min_count=1)
    return table.groupby("size")["neighbours_w"].median()


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def compare(one: str, all_: str) -> pd.DataFrame:
    rows = []
    a, b = (pd.read_csv(os.path.join(f, "summary.csv")).set_index("size") for f in (one, all_))
    na, nb = _neighbour_w(one), _neighbour_w(all_)
    for size in sorted(set(a.index) | set(b.index)):
        row = {"size": size}
        for tag, s, n in (("one", a, na), ("all", b, nb)):
            have = size in s.index
            row[f"{tag} runs"] = int(s.loc[size, "runs"]) if have else 0
            row[f"{tag} GPU J/inf"] = s.loc[size, "gpu_joules_per_inference"] if have else math.nan
            row[f"{tag} IQR %"] = s.loc[size, "gpu_joules_per_inference_iqr_pct"] if have else math.nan
            row[f"{tag} neighbours W"] = n.get(size, math.nan)
        row["all/one"] = row["all GPU J/inf"] / row["one GPU J/inf"]
        row["one total J/inf"] = a.loc[size, "total_joules_per_inference"] if size in a.index else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame, title: str) -> str:
    cols = list(table.columns)
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        cells = [str(int(r[c])) if c in ("size", "one runs", "all runs") else _fmt(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("one")
    ap.add_argument("all")
    ap.add_argument("--title", default="one GPU at a time vs every GPU at once")
    args = ap.parse_args()
    for folder in (args.one, args.all):
        with open(os.path.join(folder, "meta.json")) as f:
            mode = json.load(f).get("sweep", {}).get("gpus_at_once")
        if mode is None:
            raise SystemExit(f"{folder}/meta.json: not a sweep folder (no sweep section)")
    print(to_markdown(compare(args.one, args.all), args.title))


if __name__ == "__main__":
    main()
