"""torch.distributed: which devices each rank meters, and energies gathered on rank 0.

The gloo test starts two ranks on localhost, each metering its own fake GPU, on one fake
powercap tree that only local rank 0 reads, and checks what rank 0 gathers.
"""

import textwrap

import numpy as np
import pandas as pd
import pytest

from aipm_fast.domains import additive_domains, additive_rows
from aipm_fast.integrations.distributed import rank_engine_options, resolve_gpus, visible_devices
from aipm_fast.sources import rapl
from aipm_fast.sources.base import GPU, Discovery, Domain

from gloo_ranks import two_gloo_ranks

pytest.importorskip("torch.distributed")


# -- rank_engine_options: pure ------------------------------------------------------------------
def test_a_single_process_meters_every_gpu_and_the_host():
    assert rank_engine_options({}) == {"gpus": None, "cpu": True}
    assert rank_engine_options({"CUDA_VISIBLE_DEVICES": "2,3"}) == {"gpus": [2, 3], "cpu": True}


def test_without_visible_devices_a_rank_meters_gpu_local_rank():
    env = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}
    assert rank_engine_options(env) == {"gpus": [1], "cpu": False}


def test_visible_devices_map_local_rank_to_the_physical_gpu():
    env = {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": "6,4"}
    assert rank_engine_options(env) == {"gpus": [4], "cpu": False}
    assert rank_engine_options({**env, "LOCAL_RANK": "0"}) == {"gpus": [6], "cpu": True}


def test_only_local_rank_zero_reads_the_host_on_every_node():
    for rank, local in [(0, 0), (1, 1), (2, 0), (3, 1)]:  # two nodes of two ranks
        opts = rank_engine_options({"RANK": str(rank), "LOCAL_RANK": str(local), "WORLD_SIZE": "4"})
        assert opts["cpu"] is (local == 0)


def test_uuids_are_returned_for_the_caller_to_resolve():
    env = {"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "GPU-aaaa-1111,GPU-bbbb-2222"}
    opts = rank_engine_options(env)
    assert opts["gpus"] == ["GPU-bbbb-2222"]
    assert resolve_gpus(opts["gpus"], {"GPU-aaaa-1111": 0, "GPU-bbbb-2222": 3}) == [3]
    assert resolve_gpus(["GPU-bb"], {"GPU-aaaa-1111": 0, "GPU-bbbb-2222": 3}) == [3]  # prefix, as CUDA
    with pytest.raises(ValueError):
        resolve_gpus(["GPU-cccc"], {"GPU-aaaa-1111": 0})
    with pytest.raises(ValueError):
        resolve_gpus(["MIG-1234"], {"GPU-aaaa-1111": 0})


def test_one_visible_gpu_per_rank_is_that_rank_s_gpu():
    # srun --gpus-per-task: every rank sees one GPU, whatever its local rank
    assert rank_engine_options({"LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "5"})["gpus"] == [5]


def test_ranks_sharing_a_gpu_meter_it_once():
    env = {"LOCAL_WORLD_SIZE": "4", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert [rank_engine_options({**env, "LOCAL_RANK": str(r)})["gpus"] for r in range(4)] == [[0], [1], [], []]


def test_visible_devices_parse_as_cuda_does():
    assert visible_devices("") == []
    assert visible_devices("0,2,-1,3") == [0, 2]  # CUDA stops at an invalid entry
    assert visible_devices(" 1 , MIG-x") == [1, "MIG-x"]
    assert visible_devices(None) is None


def test_overrides_win():
    env = {"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert rank_engine_options(env, reads_host=True, gpus=[0, 1]) == {"gpus": [0, 1], "cpu": True}
    assert rank_engine_options({"LOCAL_RANK": "0"}, reads_host=False)["cpu"] is False


def test_additive_domains_leave_out_parts_of_a_package():
    found = Discovery()
    for meaning in (
        rapl.domain("package-0"),
        rapl.domain("package-0", "core"),
        rapl.domain("package-0", "dram"),
        rapl.domain("psys"),
    ):
        found.add_domain(meaning)
    rapl.settle_platform(found)  # psys holds the packages: it adds only where none is read
    found.add_domain(Domain("nvml:0", GPU, additive=True))
    assert sorted(additive_domains(found.domains)) == ["nvml:0", "rapl:package-0", "rapl:package-0/dram"]
    assert found.domains["rapl:package-0/core"].parent == "rapl:package-0"


def test_psys_adds_where_no_package_is_read():
    found = Discovery()
    found.add_domain(rapl.domain("psys"))
    rapl.settle_platform(found)
    assert additive_domains(found.domains) == ["rapl:psys"]


# -- two ranks over gloo ----------------------------------------------------------------------
STEPS = 5
RANK_SCRIPT = textwrap.dedent("""
    import os, pickle, sys, time
    from datetime import timedelta
    import torch.distributed as dist
    from aipm_fast.integrations.distributed import (gather_steps, gather_windows, rank_meter,
                                                    synced_window)
    powercap_root, nvml_lib, out = sys.argv[1:4]
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank = dist.get_rank()
    m = rank_meter(powercap_root=powercap_root, nvml_lib=nvml_lib, msr_root="/x", perf_root="/x",
                   cuda=False).start()
    with synced_window(m, "train"):
        for i in range(STEPS):
            with m.step():
                time.sleep(0.06 + 0.04 * rank)     # rank 1 is slower: its steps end later
    m.stop()
    result = {"windows": gather_windows(m), "steps": gather_steps(m),
              "channels": sorted({c.domain for c in m.recorder.channels.values()})}
    with open(out, "wb") as f:
        pickle.dump(result, f)
    dist.destroy_process_group()
""").replace("STEPS", str(STEPS))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, build_fake_nvml):
    """Runs RANK_SCRIPT on two gloo ranks; returns (per-rank results, powercap writer)."""
    with two_gloo_ranks(RANK_SCRIPT, tmp_path_factory.mktemp("dist"), build_fake_nvml()) as result:
        yield result


def test_each_rank_meters_its_own_gpu_and_only_rank_zero_the_host(two_ranks):
    results, _ = two_ranks
    assert results[0]["channels"][:1] == ["nvml:0"] and any(d.startswith("rapl:") for d in results[0]["channels"])
    assert results[1]["channels"] == ["nvml:1"]
    assert results[1]["windows"] is None and results[1]["steps"] is None  # only rank 0 gets the table


def test_per_rank_gpu_energy_is_the_fake_power_times_the_window(two_ranks):
    results, writer = two_ranks
    t = results[0]["windows"]
    ranks = t[(t["scope"] == "rank") & (t["window"] == "train")]
    for rank in (0, 1):
        gpus = ranks[(ranks["rank"] == rank) & ranks["domain"].str.startswith("nvml:")]
        assert list(gpus["domain"]) == [f"nvml:{rank}"]
        row = gpus.iloc[0]
        assert row["energy_j"] == pytest.approx((100 + 10 * rank) * row["duration_s"], rel=0.02)
        assert row["n_inferences"] == STEPS
    rapl = ranks[ranks["domain"].str.startswith("rapl:")]
    assert set(rapl["rank"]) == {0}  # counted once on this node
    pkg = rapl[rapl["domain"] == "rapl:package-0"].iloc[0]
    assert pkg["energy_j"] == pytest.approx(writer.energy_j("intel-rapl:0", pkg["start_ns"], pkg["end_ns"]), rel=0.02)


def test_window_totals_add_up_over_ranks_and_nodes(two_ranks):
    results, _ = two_ranks
    t = results[0]["windows"]
    ranks = additive_rows(t[t["scope"] == "rank"])
    node = t[t["scope"] == "node"].iloc[0]
    job = t[t["scope"] == "job"].iloc[0]
    assert node["energy_j"] == pytest.approx(ranks["energy_j"].sum())
    assert job["energy_j"] == pytest.approx(node["energy_j"]) and job["n_ranks"] == 2
    # the synced window covers the same span on both ranks, so the span across them is close to each
    spans = t[t["scope"] == "rank"].groupby("rank")["duration_s"].first()
    assert job["duration_s"] >= spans.max() and job["duration_s"] == pytest.approx(spans.max(), abs=0.05)
    assert job["start_ns"] == ranks["start_ns"].min() and job["end_ns"] == ranks["end_ns"].max()


def test_steps_keep_per_rank_figures_and_span_the_ranks(two_ranks):
    results, _ = two_ranks
    s = results[0]["steps"]
    ranks = s[s["scope"] == "rank"]
    gpu1 = ranks[ranks["domain"] == "nvml:1"]
    assert len(gpu1) == STEPS and gpu1["duration_s"].median() == pytest.approx(0.10, rel=0.2)
    assert gpu1["energy_j"].to_numpy() == pytest.approx(110 * gpu1["duration_s"].to_numpy(), rel=0.25)
    jobs = s[s["scope"] == "job"].set_index("step")
    assert list(jobs.index) == list(range(STEPS)) and (jobs["n_ranks"] == 2).all()
    add = additive_rows(ranks)
    assert jobs["energy_j"].to_numpy() == pytest.approx(add.groupby("step")["energy_j"].sum().to_numpy())
    # rank 1's steps end later: a step's span across ranks is longer than either rank's step
    slowest = ranks.groupby("step")["duration_s"].max()
    assert (jobs["duration_s"] >= slowest - 1e-9).all()
    assert (jobs["duration_s"].iloc[1:] > slowest.iloc[1:] + 0.02).all()


def test_job_summary_gives_energy_per_rank_node_step_and_sample(two_ranks):
    from aipm_fast.integrations.distributed import job_summary

    results, _ = two_ranks
    summary = job_summary(results[0]["windows"], samples_per_step=64, window="train")
    per_rank = summary["per_rank"].set_index("rank")
    assert per_rank.loc[1, "host_energy_j"] == 0.0  # rank 1 reads no host source
    assert per_rank.loc[0, "host_energy_j"] > 0
    total = summary["total"]
    assert total["energy_j"] == pytest.approx(per_rank["energy_j"].sum())
    assert summary["per_node"]["energy_j"].sum() == pytest.approx(total["energy_j"])
    assert total["n_steps"] == STEPS and total["n_ranks"] == 2 and total["n_nodes"] == 1
    assert total["joules_per_step"] == pytest.approx(total["energy_j"] / STEPS)
    assert total["joules_per_sample"] == pytest.approx(total["joules_per_step"] / 64)


def test_gathering_without_a_process_group_gives_this_process_s_table():
    import torch.distributed as dist

    from aipm_fast.integrations.distributed import gather_windows

    assert not dist.is_initialized()

    class OneWindow:
        def windows(self):
            return pd.DataFrame(
                [
                    {
                        "window": "w",
                        "window_id": 0,
                        "domain": "nvml:0",
                        "part": "gpu",
                        "additive": True,
                        "start_ns": 0,
                        "end_ns": 2_000_000_000,
                        "duration_s": 2.0,
                        "energy_j": 200.0,
                        "n_inferences": 4,
                    }
                ]
            )

    t = gather_windows(OneWindow())
    assert list(t["scope"]) == ["rank", "node", "job"]
    assert (t["energy_j"] == 200.0).all() and t.loc[2, "duration_s"] == 2.0


def test_job_summary_keeps_gpu_figures_when_a_host_source_has_no_reading():
    from aipm_fast.integrations.distributed import job_summary

    rank_rows = [
        {"rank": 0, "domain": "nvml:0", "part": "gpu", "additive": True, "energy_j": 300.0},
        {
            "rank": 0,
            "domain": "rapl:psys",
            "part": "platform",
            "additive": True,
            "energy_j": float("nan"),
        },  # a stuck counter
        {"rank": 1, "domain": "nvml:1", "part": "gpu", "additive": True, "energy_j": 310.0},
    ]
    common = {"scope": "rank", "node": "n0", "window": "train", "seq": 0, "n_inferences": 10, "duration_s": 1.0}
    table = pd.DataFrame(
        [{**common, **r} for r in rank_rows]
        + [
            {
                "scope": "job",
                "window": "train",
                "domain": "all",
                "rank": -1,
                "node": "",
                "energy_j": float("nan"),
                "seq": 0,
                "n_inferences": 10,
                "duration_s": 1.0,
            }
        ]
    )
    total = job_summary(table, samples_per_step=8, window="train")["total"]
    assert np.isnan(total["energy_j"]) and np.isnan(total["host_energy_j"])  # never a silent undercount
    assert total["gpu_energy_j"] == pytest.approx(610.0)
    assert total["gpu_joules_per_step"] == pytest.approx(61.0)
    assert total["gpu_joules_per_sample"] == pytest.approx(61.0 / 8)
    assert total["unmeasured_domains"] == ["rapl:psys"]
    assert total["ranks_without_gpu"] == []
    with pytest.raises(ValueError, match="no window named 'trian'; the table has 'train'"):
        job_summary(table, window="trian")
    no_gpu = table.copy()  # rank 1 meters no GPU
    no_gpu.loc[no_gpu["domain"] == "nvml:1", ["domain", "part"]] = ["rapl:package-0", "host"]
    assert job_summary(no_gpu, window="train")["total"]["ranks_without_gpu"] == [1]
