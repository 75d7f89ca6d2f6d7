"""Run AIPowerMeter's own readers, unmodified, on an aipm-fast bench folder (its first size).

    git --git-dir=<mirror of GreenAI-Uppa/AIPowerMeter> archive HEAD | tar -x -C /tmp/aipm
    python3 bench/aipowermeter_readers.py BENCH_FOLDER [/tmp/aipm]

ExpResults(JsonParser(run_0)) totals and print(), then concat_power_measure.main on the folder
with n_iterations = the forward passes of a run (runs made with --iters). AIPowerMeter's code
is not part of this project: it is read from the checkout given."""

import json
import os
import sys
import types

checkout = sys.argv[2] if len(sys.argv) > 2 else "/tmp/aipm"
sys.path.insert(0, checkout)
sys.path.insert(0, os.path.join(checkout, "deep_learning_benchmark"))
try:
    import pynvml  # noqa: F401
except ImportError:  # gpu_power imports it at module level; reading needs no NVML
    sys.modules["pynvml"] = types.ModuleType("pynvml")
import concat_power_measure as concat  # noqa: E402
from deep_learning_power_measure.power_measure import experiment, parsers  # noqa: E402

folder = sys.argv[1]
size_dir = sorted(d for d in os.listdir(folder) if d.startswith("input_"))[0]
run_dir = os.path.join(folder, size_dir, "run_0")
run = json.load(open(os.path.join(run_dir, "run.json")))
exp = experiment.ExpResults(parsers.JsonParser(run_dir))
s = exp.get_summary()
gpu_j = run["energy"]["gpu"]["energy_j"] if run["energy"]["gpu"] else None
cpu_j = run["energy"]["cpu"]["energy_j"] if run["energy"]["cpu"] else None
print("ExpResults.get_summary gpu.nvidia_power J:", s["gpu"]["nvidia_power"], "run.json gpu J:", gpu_j)
print("ExpResults.total_('intel_power') J:", exp.total_("intel_power"), "run.json cpu J:", cpu_j)
print("ExpResults.total_('nvidia_draw_absolute') J:", exp.total_("nvidia_draw_absolute"))
try:
    print("ExpResults.total_power_draw J:", exp.total_power_draw())
except TypeError as exc:  # its loader keeps only nvidia_power/memory/use_rate of the gpu keys
    print("ExpResults.total_power_draw fails:", repr(exc))
print("ExpResults duration s:", s["duration"], "run.json:", run["duration_s"])
exp.print()
passes = run["n_inferences"] // run["batch_size"]
n_iter = {d: passes for d in os.listdir(folder) if d.startswith("input_")}
out = os.path.join(folder, "concat.csv")
concat.main(output="csv", main_folder=folder, n_iterations=n_iter, file_to_write=out)
print(open(out).read())
print("run.json gpu J per forward pass:", gpu_j / passes if gpu_j else None)
