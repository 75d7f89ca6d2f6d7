"""Why 2:4 sparsity is slower than dense in the pruning table: its matrix products alone, and
where a 2:4 model's forward pass spends its time.

For each linear layer shape of BERT-base (batch 128 x 512 tokens) and ViT-B/16's MLP (batch 64
x 197 tokens), at float16, the product x @ W.T + b timed by CUDA events and its energy read from
the NVML counter over a loop of about `--seconds`, for: the dense weight (cuBLAS), the 2:4 weight
through cuSPARSELt (torch's default algorithm, and the best one torch._cslt_sparse_mm_search
finds, where it exists) and through CUTLASS. Then BERT with every covered linear layer at 2:4
(aipm_fast.prune, as the pruning table builds it): one forward pass's CUDA kernels by total time,
dense against 2:4, from torch.profiler. Needs one CUDA GPU of compute capability 8.0 or newer.

    python3 bench/gpu_semi_structured_mm.py OUT [--seconds 1.5]

OUT/mm.csv (one row per shape and backend), OUT/kernels.txt, OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pandas as pd
import torch
from torch.nn import functional as F

#: (name, tokens, in features, out features)
SHAPES = (
    ("bert attention/output 768x768", 128 * 512, 768, 768),
    ("bert intermediate 768->3072", 128 * 512, 768, 3072),
    ("bert output 3072->768", 128 * 512, 3072, 768),
    ("vit mlp 768->3072", 64 * 197, 768, 3072),
    ("vit mlp 3072->768", 64 * 197, 3072, 768),
)


def energy_j(handle) -> float:
    import pynvml

    return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3


def measure(fn, handle, seconds: float) -> dict:
    """Median of CUDA-event-timed calls, and joules per call by the counter over a loop of `seconds`."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(30):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / 1e3)
    per_call = sorted(times)[len(times) // 2]
    n = max(10, int(seconds / per_call))
    torch.cuda.synchronize()
    j0, t0 = energy_j(handle), time.monotonic()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    j1, t1 = energy_j(handle), time.monotonic()
    return {"time_ms": per_call * 1e3, "joules": (j1 - j0) / n, "loop_s": t1 - t0, "calls": n}


def backends(w):
    """{name: the weight as that backend holds it} for a 2:4-pruned dense weight `w`."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    out = {"dense (cuBLAS)": w}
    if torch.backends.cusparselt.is_available():
        out["2:4 cuSPARSELt alg 0"] = SparseSemiStructuredTensorCUSPARSELT.from_dense(w)
    try:
        out["2:4 CUTLASS"] = SparseSemiStructuredTensorCUTLASS.from_dense(w)
    except Exception as exc:  # noqa: BLE001 (recorded: the backend this torch lacks)
        out["2:4 CUTLASS"] = exc
    return out


def searched(w, x, bias):
    """cuSPARSELt with the algorithm its search picks for this product (None where torch has no search)."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT

    if not torch.backends.cusparselt.is_available() or not hasattr(torch, "_cslt_sparse_mm_search"):
        return None, "this torch has no cuSPARSELt algorithm search"
    compressed = torch._cslt_compress(w)
    alg = torch._cslt_sparse_mm_search(compressed, x.t(), bias=bias)  # x.t(): as F.linear hands it over
    alg = alg[0] if isinstance(alg, tuple) else alg
    try:
        return SparseSemiStructuredTensorCUSPARSELT.from_dense(w, alg_id=int(alg)), int(alg)
    except TypeError:
        return None, f"the search chose alg {int(alg)}, which this torch's from_dense takes no alg_id to apply"


def two_four(w):
    """w with the smaller two of every four consecutive input weights zeroed (the pruning's own masks)."""
    from aipm_fast.prune.semi_structured import two_four_masks

    return w * two_four_masks({"w": w.abs()})["w"].to(w.dtype)


def one_shape(name: str, tokens: int, k: int, n: int, handle, seconds: float) -> list[dict]:
    """Every backend's row for the product of `tokens` x `k` activations by an `n` x `k` weight."""
    torch.manual_seed(0)
    x = torch.randn(tokens, k, device="cuda", dtype=torch.float16)
    w = two_four(torch.randn(n, k, device="cuda", dtype=torch.float16))
    b = torch.randn(n, device="cuda", dtype=torch.float16)
    weights = backends(w)
    try:
        best, alg = searched(w, x, b)
    except Exception as exc:  # noqa: BLE001 (recorded: the search this torch refuses)
        best, alg = None, f"search failed: {type(exc).__name__}: {exc}"
    if best is None:
        print(f"{name}: no searched row: {alg}", flush=True)
    else:
        weights[f"2:4 cuSPARSELt alg {alg} (searched)"] = best
    dense_ref = F.linear(x, w, b).float()
    rows = []
    for backend, weight in weights.items():
        row = {"shape": name, "tokens": tokens, "in": k, "out": n, "backend": backend}
        if isinstance(weight, Exception):
            row["error"] = f"{type(weight).__name__}: {weight}"
        else:
            try:
                row["max_abs_diff_vs_dense"] = float((F.linear(x, weight, b).float() - dense_ref).abs().max())
                row.update(measure(lambda wt=weight: F.linear(x, wt, b), handle, seconds))
                row["tflops"] = 2 * tokens * k * n / (row["time_ms"] / 1e3) / 1e12
            except Exception as exc:  # noqa: BLE001 (recorded, the next backend runs)
                row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        print({key: (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()}, flush=True)
    return rows


def products(handle, seconds: float) -> list[dict]:
    rows = []
    for shape in SHAPES:
        rows += one_shape(*shape, handle, seconds)
        torch.cuda.empty_cache()
    return rows


def kernel_table(model, inputs, title: str) -> str:
    from torch.profiler import ProfilerActivity, profile

    from aipm_fast.prune.layers import forward_batch

    with torch.inference_mode():
        for _ in range(2):
            forward_batch(model, inputs)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            forward_batch(model, inputs)
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=90)
    return f"== {title}\n{table}\n"


def bert_kernels() -> str:
    from aipm_fast.bench import models
    from aipm_fast.prune import PruneRequest, prune_model

    text = ""
    inputs = models.make_inputs("bert", 512, 128, device="cuda", dtype=torch.float16)
    for fmt in ("dense", "2:4"):
        model = models.build_model("bert", device="cuda", dtype=torch.float16, size=512)
        if fmt == "2:4":
            request = PruneRequest(method="magnitude", sparsity=0.5, sparsity_format="2:4", reapply_masks=False)
            model, _ = prune_model(model, request, batch=inputs)
        text += kernel_table(model.eval(), inputs, f"bert batch 128 x 512, {fmt}: one forward pass's CUDA kernels")
        del model
        torch.cuda.empty_cache()
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seconds", type=float, default=1.5, help="length of each energy loop")
    args = ap.parse_args()
    import pynvml

    os.makedirs(args.out, exist_ok=True)
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cusparselt": torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None,
    }
    print(result, flush=True)
    rows = products(handle, args.seconds)
    pd.DataFrame(rows).to_csv(os.path.join(args.out, "mm.csv"), index=False)
    result["products"] = rows
    try:
        kernels = bert_kernels()
    except Exception as exc:  # noqa: BLE001 (recorded with the products kept)
        kernels = f"kernel tables failed: {type(exc).__name__}: {exc}\n"
    with open(os.path.join(args.out, "kernels.txt"), "w") as f:
        f.write(kernels)
    print(kernels, flush=True)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
