"""Where pruning saves joules: inference energy and latency of pruned models against dense.

ViT-B/16 and BERT at 2:4 (sparse tensor cores on the linear layers), ResNet-50 and ViT-B/16 at
90% masked (zeros in dense kernels) and 90% structured (a smaller dense model), each beside its
dense model, all at float16 (2:4 kernels need half precision), magnitude-pruned (the method
chooses which weights go, not how much work the kernels do). Each variant is one `aipm-fast
bench` folder under OUT/<model>_<variant>/; OUT/prune_table.csv and .md hold one row each with
J/inference and latency against the model's dense row.

    python3 bench/gpu_prune_table.py OUT [--device cuda] [--runs 3] [--duration 2.5]
    (on CPU, for a check: --device cpu --dtype float32 --iters 1 --models resnet50 --formats dense,masked)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import pandas as pd

from aipm_fast.bench.protocol import Benchmark, BenchOptions
from aipm_fast.bench.table import fmt

#: (model, sparsity format, sparsity); "dense" is the model's reference row
VARIANTS = (
    ("resnet50", "dense", None),
    ("resnet50", "masked", 0.9),
    ("resnet50", "structured", 0.9),
    ("vit_b_16", "dense", None),
    ("vit_b_16", "2:4", 0.5),
    ("vit_b_16", "masked", 0.9),
    ("vit_b_16", "structured", 0.9),
    ("bert", "dense", None),
    ("bert", "2:4", 0.5),
)
METHOD = "magnitude"

TABLE_COLUMNS = (
    "model",
    "format",
    "sparsity",
    "batch_size",
    "params_total",
    "effective_sparsity",
    "flops_executed",
    "flops_dense",
    "semi_structured_flops_share",
    "latency_median_s",
    "gpu_joules_per_inference",
    "total_joules_per_inference",
    "gpu_j_vs_dense",
    "latency_vs_dense",
    "error",
)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=2.5, help="seconds per run")
    p.add_argument("--iters", type=int, help="forward passes per run (instead of --duration)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--baseline", type=float, default=1.0)
    p.add_argument("--models", help="comma list: only these models")
    p.add_argument("--formats", help="comma list: only these formats (dense, masked, 2:4, structured)")
    p.add_argument("--batch-size", type=int, help="one batch size for every model [each model's default]")
    p.add_argument("--sizes", help="model=size,... [native sizes]")
    return p.parse_args(argv)


def variant_name(model: str, fmt_name: str, sparsity) -> str:
    return f"{model}_{fmt_name.replace(':', 'of')}" + ("" if sparsity is None else f"_{sparsity:g}")


def run_variant(args, model: str, fmt_name: str, sparsity, sizes: dict) -> dict:
    from aipm_fast.bench import models

    spec = models.get_spec(model)
    out = os.path.join(args.out, variant_name(model, fmt_name, sparsity))
    opts = BenchOptions(
        model=model,
        sizes=[sizes.get(model, spec.native_size)],
        batch_size=args.batch_size or spec.default_batch_size,
        runs=args.runs,
        duration_s=None if args.iters else args.duration,
        iters=args.iters,
        warmup_s=args.warmup,
        baseline_s=args.baseline,
        device=args.device,
        dtype=args.dtype,
        out=out,
        prune=None if fmt_name == "dense" else METHOD,
        sparsity=sparsity,
        sparsity_format=None if fmt_name == "dense" else fmt_name,
    )
    row: dict = {"model": model, "format": fmt_name, "sparsity": sparsity, "batch_size": opts.batch_size}
    started = time.monotonic()
    try:
        summary = Benchmark(opts, log=lambda msg: print(f"  {msg}", file=sys.stderr)).run()
    except Exception as exc:  # one variant's failure (a kernel missing) leaves the others' rows
        row["error"] = f"{type(exc).__name__}: {exc}"
        print(f"{model} {fmt_name}: {row['error']}", file=sys.stderr)
        return row
    first = summary.iloc[0]
    for col in TABLE_COLUMNS:
        if col in first.index and col not in row:
            row[col] = first[col]
    print(f"{model} {fmt_name}: done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return row


def against_dense(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows).reindex(columns=list(TABLE_COLUMNS))
    for _, group in table.groupby("model", sort=False):
        dense = group[group["format"] == "dense"]
        if dense.empty:
            continue
        ref = dense.iloc[0]
        for what, col in (("gpu_j_vs_dense", "gpu_joules_per_inference"), ("latency_vs_dense", "latency_median_s")):
            base = pd.to_numeric(ref[col], errors="coerce")
            values = pd.to_numeric(table.loc[group.index, col], errors="coerce")
            table.loc[group.index, what] = values / base if base and math.isfinite(base) else float("nan")
    return table


def markdown(table: pd.DataFrame) -> str:
    head = "| model | format | sparsity | batch | params M | eff. sparsity | GFLOP/inf run | 2:4 FLOP share | "
    head += "latency ms | GPU J/inf | GPU J vs dense | latency vs dense |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for _, r in table.iterrows():
        if isinstance(r["error"], str):
            lines.append(
                f"| {r['model']} | {r['format']} | {r['sparsity']} | {r['batch_size']} | failed: {r['error']} |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['format']} | {'-' if pd.isna(r['sparsity']) else f'{r.sparsity:g}'} | "
            f"{r['batch_size']} | {fmt(r['params_total'] / 1e6)} | {fmt(r['effective_sparsity'])} | "
            f"{fmt(r['flops_executed'] / 1e9)} | {fmt(r['semi_structured_flops_share'])} | "
            f"{fmt(r['latency_median_s'] * 1e3)} | {fmt(r['gpu_joules_per_inference'])} | "
            f"{fmt(r['gpu_j_vs_dense'])} | {fmt(r['latency_vs_dense'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse(argv)
    os.makedirs(args.out, exist_ok=True)
    models = set(args.models.split(",")) if args.models else None
    formats = set(args.formats.split(",")) if args.formats else None
    sizes = {k: int(v) for k, v in (item.split("=") for item in args.sizes.split(","))} if args.sizes else {}
    rows = [
        run_variant(args, model, fmt_name, sparsity, sizes)
        for model, fmt_name, sparsity in VARIANTS
        if (models is None or model in models) and (formats is None or fmt_name in formats)
    ]
    table = against_dense(rows)
    table.to_csv(os.path.join(args.out, "prune_table.csv"), index=False, float_format="%.6g")
    text = markdown(table)
    with open(os.path.join(args.out, "prune_table.md"), "w") as f:
        f.write(text)
    print(text)
    return 0 if table["error"].isna().all() else 1


if __name__ == "__main__":
    sys.exit(main())
