"""`aipm-fast bench` under torchrun on CPU: gloo ranks on localhost, each with its fake GPU (the
fake NVML serves two; GPU i draws 100 + 10 i W), a shared fake powercap tree, resnet18 at 32 and
48 px. Each launch is `python -m torch.distributed.run` as a subprocess, running tests/sweep_rank.py
(the CLI, with an optional rank that fails after its first run)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from aipm_fast.bench.protocol import HOST_SHARED, Benchmark, BenchOptions
from aipm_fast.bench.sweep import (
    Sweep,
    SweepError,
    complete_cells,
    options_clash,
    share_cells,
    sweep_from_env,
)

pytest.importorskip("torchvision")

TESTS = Path(__file__).parent
SIZES = (32, 48)
BENCH_ARGS = ["--model", "resnet18", "--batch-size", "2", "--duration", "0.5", "--warmup", "0.1"]
BENCH_ARGS += ["--baseline", "0.3", "--device", "cpu", "--no-plots", "--sizes", ",".join(map(str, SIZES))]
GPU_W = {0: 100.0, 1: 110.0}  # FAKE_NVML_TRACE const:100, GPU i draws i*10 W more


# -- pure parts -------------------------------------------------------------------------------------
def test_cells_are_shared_round_robin_in_order():
    cells = [(32, 0), (32, 1), (32, 2), (48, 0), (48, 1)]
    assert share_cells(cells, 2) == [[(32, 0), (32, 2), (48, 1)], [(32, 1), (48, 0)]]
    assert share_cells(cells, 8)[5:] == [[], [], []]


def test_a_cell_is_complete_only_with_its_run_json(tmp_path):
    (tmp_path / "input_32" / "run_0").mkdir(parents=True)
    (tmp_path / "input_32" / "run_0" / "run.json").write_text("{}")
    (tmp_path / "input_32" / "run_1").mkdir()
    (tmp_path / "input_32" / "run_1" / "inferences.csv").write_text("index\n")  # interrupted
    assert complete_cells(str(tmp_path), [(32, 0), (32, 1), (48, 0)]) == [(32, 0)]


def test_a_launch_is_a_sweep_only_with_several_ranks():
    assert sweep_from_env("all", {}) is None
    assert sweep_from_env("all", {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None
    s = sweep_from_env("one", {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "AIPM_NODE_NAME": "b"})
    assert (s.rank, s.world_size, s.local_rank, s.node, s.mode) == (3, 4, 1, "b", "one")
    with pytest.raises(SweepError, match="RANK or LOCAL_RANK"):
        sweep_from_env("all", {"WORLD_SIZE": "2"})
    with pytest.raises(SweepError, match="--gpus-at-once 'some'"):
        sweep_from_env("some", {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})


@pytest.mark.parametrize(("mode", "local_rank", "host"), [("all", 0, True), ("all", 1, False), ("one", 1, True)])
def test_each_rank_meters_its_gpu_and_the_host_once_per_node_while_cells_run_at_once(mode, local_rank, host):
    sweep = Sweep(rank=local_rank, world_size=2, local_rank=local_rank, node="n", mode=mode)
    env = {"LOCAL_RANK": str(local_rank), "CUDA_VISIBLE_DEVICES": "2,3"}
    assert sweep.engine_options({}, env) == {"gpus": [2 + local_rank], "cpu": host}
    assert sweep.device("cuda") == f"cuda:{local_rank}" and sweep.device("cpu") == "cpu"
    with pytest.raises(SweepError, match="cuda:1: under torchrun"):
        sweep.device("cuda:1")


def test_a_folder_of_other_options_is_refused_naming_what_differs(tmp_path):
    opts = {"model": "resnet18", "batch_size": 2, "duration_s": 0.5, "iters": None, "warmup_s": 0.1}
    assert options_clash(str(tmp_path), opts) is None  # nothing there yet
    (tmp_path / "meta.json").write_text(json.dumps({"options": {**opts, "batch_size": 4}}))
    why = options_clash(str(tmp_path), opts)
    assert "batch_size 4 there, 2 now" in why and str(tmp_path) in why
    (tmp_path / "meta.json").write_text(json.dumps({"options": opts}))
    assert options_clash(str(tmp_path), opts) is None


# -- torchrun groups --------------------------------------------------------------------------------
@pytest.fixture
def rank_env(fake_powercap, fake_nvml_lib):
    from gloo_ranks import free_loopback_port

    root, writer = fake_powercap()
    env = {
        **os.environ,
        "FAKE_NVML_GPUS": "2",
        "FAKE_NVML_TRACE": "const:100",
        "AIPM_NVML_LIB": str(fake_nvml_lib),
        "AIPM_POWERCAP_ROOT": str(root),
        "AIPM_MSR_ROOT": "/nonexistent",
        "AIPM_PERF_ROOT": "/nonexistent",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    for name in ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "RANK", "LOCAL_RANK", "AIPM_NODE_NAME"):
        env.pop(name, None)
    return env, writer, free_loopback_port


def torchrun(env, out, *args, nproc=2, nnodes=1, node_rank=0, port, extra_env=None, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
    cmd += [f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}"]
    cmd += [str(TESTS / "sweep_rank.py"), "bench", *BENCH_ARGS, "--out", str(out), *args]
    p = subprocess.Popen(
        cmd, env={**env, **(extra_env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if not wait:
        return p
    return finish(p)


def finish(p, timeout=300):
    try:
        text, _ = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, text


def run_json(out, size, k) -> dict:
    return json.loads((out / f"input_{size}" / f"run_{k}" / "run.json").read_text())


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


SWEEP_ONLY = {"sweep_runs.csv"}  # besides placement.json in each run folder


def test_all_at_once_shares_the_cells_and_rank_0_gathers_one_folder(tmp_path, rank_env, fake_nvml_lib, monkeypatch):
    env, writer, port = rank_env
    out = tmp_path / "sweep"
    rc, text = torchrun(env, out, "--runs", "2", port=port())
    assert rc == 0, text[-6000:]
    meta = json.loads((out / "meta.json").read_text())
    sweep = meta["sweep"]
    assert (sweep["world_size"], sweep["gpus_at_once"], sweep["nodes"]) == (2, "all", [os.uname().nodename])
    cells = [(s, k) for s in SIZES for k in range(2)]
    runs = {(r["size"], r["run"]): r for r in sweep["runs"]}
    assert sorted(runs) == cells
    for i, cell in enumerate(cells):
        r = runs[cell]
        assert r["rank"] == i % 2  # the sharing: cell i to rank i % world size
        assert r["gpu"]["index"] == r["rank"] and r["gpu"]["name"] == f"Fake GPU {r['rank']}"  # LOCAL_RANK's
        assert r["node"] == os.uname().nodename
        run = run_json(out, *cell)
        # each run metered its own GPU only: its power over the run's inferences
        assert run["energy"]["gpu"]["joules_per_inference"] == pytest.approx(
            GPU_W[r["rank"]] / run["throughput_per_s"], rel=0.03
        )
        # host energy is not split between runs at once: no cpu or total figure, and why
        assert run["energy"]["cpu"] is None and run["energy"]["total"] is None
        assert run["energy_missing_reason"] == HOST_SHARED
        # the other GPU of the node during the run, from the other rank's recording
        (n,) = r["neighbours"]
        assert n["gpu_index"] == 1 - r["rank"] and n["mean_power_w"] == pytest.approx(GPU_W[1 - r["rank"]], rel=0.02)
    assert meta["metered_gpus"] == [0, 1]
    table = pd.read_csv(out / "sweep_runs.csv")
    assert list(table["rank"]) == [0, 1, 0, 1]
    on_gpu0 = table["gpu_index"] == 0
    assert table.loc[on_gpu0, "neighbour_gpu1_power_w"].to_numpy() == pytest.approx(110.0, rel=0.02)
    assert table.loc[~on_gpu0, "neighbour_gpu0_power_w"].to_numpy() == pytest.approx(100.0, rel=0.02)
    # the node's host energy over the whole sweep, once
    (host,) = sweep["host_energy_per_node"]
    cpu_w = writer.power_w("intel-rapl:0") + writer.power_w("intel-rapl:0:1")
    assert host["energy_j"] == pytest.approx(cpu_w * host["duration_s"], rel=0.05)
    assert host["start_ns"] == min(r["start_ns"] for r in runs.values())
    assert host["end_ns"] == max(r["end_ns"] for r in runs.values())

    # the same layout as a single-GPU bench of the same options
    monkeypatch.setenv("FAKE_NVML_GPUS", "2")
    single = tmp_path / "single"
    engine = {k: env[v] for k, v in (("powercap_root", "AIPM_POWERCAP_ROOT"), ("nvml_lib", "AIPM_NVML_LIB"))}
    opts = BenchOptions(
        model="resnet18",
        sizes=list(SIZES),
        batch_size=2,
        runs=2,
        duration_s=0.5,
        warmup_s=0.1,
        baseline_s=0.3,
        out=str(single),
        engine={**engine, "msr_root": "/x", "perf_root": "/x"},
    )
    Benchmark(opts, log=lambda m: None).run()
    sweep_files = {f for f in files_under(out) if os.path.basename(f) != "placement.json"} - SWEEP_ONLY
    assert sweep_files == files_under(single)
    assert list(pd.read_csv(out / "summary.csv").columns) == list(pd.read_csv(single / "summary.csv").columns)


def test_one_gpu_at_a_time_runs_cells_in_turn_with_their_own_host_energy(tmp_path, rank_env):
    env, writer, port = rank_env
    out = tmp_path / "sweep"
    rc, text = torchrun(env, out, "--runs", "2", "--gpus-at-once", "one", port=port())
    assert rc == 0, text[-6000:]
    sweep = json.loads((out / "meta.json").read_text())["sweep"]
    assert sweep["gpus_at_once"] == "one" and sweep["host_energy_per_run"] is True
    runs = sorted(sweep["runs"], key=lambda r: r["start_ns"])
    # in the cells' order, each one after the previous one ended
    assert [(r["size"], r["run"]) for r in runs] == [(s, k) for s in SIZES for k in range(2)]
    assert all(a["end_ns"] <= b["start_ns"] for a, b in zip(runs, runs[1:]))
    cpu_w = writer.power_w("intel-rapl:0") + writer.power_w("intel-rapl:0:1")
    for r in runs:
        run = run_json(out, r["size"], r["run"])
        assert run["energy"]["cpu"]["joules_per_inference"] == pytest.approx(cpu_w / run["throughput_per_s"], rel=0.05)
        assert run["energy"]["total"] is not None and run["energy_missing_reason"] is None
        (n,) = r["neighbours"]
        assert n["mean_power_w"] == pytest.approx(GPU_W[1 - r["rank"]], rel=0.02)
    # bench/sweep_compare.py reads such folders: each size's runs, on GPU 0 and 1 in turn
    sys.path.insert(0, str(TESTS.parent / "bench"))
    from sweep_compare import compare

    table = compare(str(out), str(out)).set_index("size")
    assert list(table.index) == list(SIZES) and (table["one runs"] == 2).all()
    assert table["all/one"].to_numpy() == pytest.approx(1.0)
    assert table["one neighbours W"].to_numpy() == pytest.approx(105.0, rel=0.02)  # median of 110 and 100


def test_a_failed_rank_leaves_the_others_runs_and_a_rerun_fills_only_the_missing(tmp_path, rank_env):
    env, _, port = rank_env
    out = tmp_path / "sweep"
    cells = [(s, k) for s in SIZES for k in range(3)]  # rank 1: (32, 1), (48, 0), (48, 2)
    rc, text = torchrun(env, out, "--runs", "3", port=port(), extra_env={"SWEEP_TEST_FAIL_RANK": "1"})
    assert rc != 0 and "rank 1 fails after its first run" in text, text[-6000:]
    done = complete_cells(str(out), cells)
    assert (32, 1) in done  # rank 1's first run was written before it failed
    assert (48, 0) not in done and (48, 2) not in done
    before = {c: (out / f"input_{c[0]}" / f"run_{c[1]}" / "run.json").stat().st_mtime_ns for c in done}
    missing = [c for c in cells if c not in done]
    # an interrupted run's leftovers are replaced, not kept
    leftover = out / "input_48" / "run_2" / "inferences.csv"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_text("index\n")

    rc, text = torchrun(env, out, "--runs", "3", port=port())
    assert rc == 0, text[-6000:]
    assert f"{len(done)} of {len(cells)} runs complete" in " ".join(text.split())
    assert complete_cells(str(out), cells) == cells
    # the runs already there were left alone, the missing ones shared out afresh
    assert {c: (out / f"input_{c[0]}" / f"run_{c[1]}" / "run.json").stat().st_mtime_ns for c in done} == before
    sweep = json.loads((out / "meta.json").read_text())["sweep"]
    assert sweep["runs_complete_before"] == [f"input_{s}/run_{k}" for s, k in done]
    runs = {(r["size"], r["run"]): r for r in sweep["runs"]}
    assert sorted(runs) == cells
    for i, cell in enumerate(missing):
        assert runs[cell]["rank"] == i % 2
        assert runs[cell]["neighbours_missing_reason"] is None
    for cell in done:
        assert runs[cell]["neighbours"] == [] and "earlier sweep" in runs[cell]["neighbours_missing_reason"]
    assert pd.read_csv(out / "summary.csv")["runs"].tolist() == [3, 3]

    # a rerun of the complete folder runs nothing and keeps what the sweeps knew of each run
    rc, text = torchrun(env, out, "--runs", "3", port=port())
    assert rc == 0, text[-6000:]
    assert f"{len(cells)} of {len(cells)} runs complete" in " ".join(text.split())
    again = {(r["size"], r["run"]): r for r in json.loads((out / "meta.json").read_text())["sweep"]["runs"]}
    assert again == runs


def test_torchrun_groups_as_nodes_keep_neighbours_and_host_energy_per_node(tmp_path, rank_env):
    env, _, port = rank_env
    out = tmp_path / "sweep"
    master = port()
    groups = [
        torchrun(
            env,
            out,
            "--runs",
            "2",
            nnodes=2,
            node_rank=n,
            port=master,
            extra_env={"AIPM_NODE_NAME": name},
            wait=False,
        )
        for n, name in enumerate(("node-a", "node-b"))
    ]
    results = [finish(p) for p in groups]
    for rc, text in results:
        assert rc == 0, text[-6000:]
    sweep = json.loads((out / "meta.json").read_text())["sweep"]
    assert sweep["world_size"] == 4 and sweep["nodes"] == ["node-a", "node-b"]
    runs = sweep["runs"]
    assert len(runs) == 4
    for r in runs:
        assert r["node"] == ("node-a" if r["rank"] < 2 else "node-b")
        assert r["gpu"]["index"] == r["local_rank"]
        # the one other GPU of its node, never a GPU of the other node
        (n,) = r["neighbours"]
        assert n["rank"] // 2 == r["rank"] // 2 and n["gpu_index"] == 1 - r["local_rank"]
    assert sorted(h["node"] for h in sweep["host_energy_per_node"]) == ["node-a", "node-b"]
