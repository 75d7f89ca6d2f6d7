"""The command line end to end, on fake hardware, as a user would run it."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest


def aipm(*args, env=None, check=True):
    full_env = {
        **os.environ,
        "AIPM_MSR_ROOT": "/nonexistent",
        "AIPM_PERF_ROOT": "/nonexistent",
        "AIPM_POWERCAP_ROOT": "/nonexistent",
        "AIPM_NVML_LIB": "/nonexistent/libnvidia-ml.so.1",
        **(env or {}),
    }
    result = subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", *args], capture_output=True, text=True, env=full_env, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def hw(fake_powercap, fake_nvml_lib):
    root, writer = fake_powercap()
    return {"AIPM_POWERCAP_ROOT": str(root), "AIPM_NVML_LIB": str(fake_nvml_lib)}, writer


def test_devices_json_lists_channels_and_explains_the_rest(hw):
    env, _ = hw
    data = json.loads(aipm("devices", "--json", env=env).stdout)
    names = {c["name"] for c in data["channels"]}
    assert {"rapl:package-0.energy", "nvml:0.power_samples", "nvml:0.energy"} <= names
    assert data["devices"]["nvml:0"] == "Fake GPU 0"
    assert any("powercap" in n for n in data["notes"])


def test_devices_on_a_bare_machine_says_why_and_how_to_fix(tmp_path):
    result = aipm("devices")
    text = result.stderr
    assert "no power source can be read" in text
    assert "libnvidia-ml.so.1" in text and "fix:" in text


def test_probe_json_measures_update_intervals_and_read_cost(hw):
    env, _ = hw
    data = json.loads(aipm("probe", "--seconds", "1.5", "--json", env=env).stdout)
    rows = {r["channel"]: r for r in data["channels"]}
    samples = rows["nvml:0.power_samples"]
    assert samples["status"] == "live"
    assert samples["update_median_ms"] == pytest.approx(20.0, rel=0.05)  # the fake's 50 Hz buffer
    rapl = rows["rapl:package-0.energy"]
    assert rapl["update_median_ms"] == pytest.approx(1.0, rel=0.3)  # the writer's 1 ms
    assert rapl["read_cost_us"] > 0
    assert data["sampler"]["lateness_p99_us"] is not None


def test_record_duration_writes_samples_and_summary(hw, tmp_path):
    env, writer = hw
    out = tmp_path / "rec"
    aipm("record", "--duration", "2", "--out", str(out), env=env)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["duration_s"] == pytest.approx(2.0, abs=0.3)
    pkg = summary["domains"]["rapl:package-0"]
    assert pkg["mean_power_w"] == pytest.approx(writer.power_w("intel-rapl:0"), rel=0.01)
    assert summary["domains"]["nvml:0"]["mean_power_w"] == pytest.approx(100.0, rel=0.01)  # const:100
    assert set(pkg) >= {"energy_j", "mean_power_w", "method"}
    samples = pd.read_parquet(out / "samples.parquet")
    assert list(samples.columns) == ["t_ns", "channel", "value", "flags"]
    assert {"rapl:package-0.energy", "nvml:0.power_samples"} <= set(samples["channel"].astype(str))


def test_record_a_command_passes_its_exit_code_on(hw, tmp_path):
    env, _ = hw
    out = tmp_path / "cmd"
    result = aipm(
        "record",
        "--out",
        str(out),
        "--",
        sys.executable,
        "-c",
        "import time, sys; time.sleep(1); sys.exit(3)",
        env=env,
        check=False,
    )
    assert result.returncode == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command_exit_code"] == 3
    assert summary["duration_s"] == pytest.approx(1.0, abs=0.5)


def test_record_refuses_both_or_neither_duration_and_command(tmp_path):
    result = aipm("record", "--out", str(tmp_path / "x"), check=False)
    assert result.returncode == 2 and "either --duration" in result.stderr


def test_serve_prints_its_address_and_stops_after_duration(hw):
    env, _ = hw
    result = aipm("serve", "--port", "0", "--duration", "1", env=env)
    assert "serving http://127.0.0.1:" in result.stderr


# -- options that would end in a traceback: each a usage error that names the option ------------


@pytest.mark.parametrize(
    "args, option, why",
    [
        (["serve", "--addr", "999.1.1.1", "--duration", "1"], "'--addr'", "not an address or host name"),
        (["serve", "--duration", "nan"], "'--duration'", "not a finite number"),
        (["probe", "--seconds", "inf"], "'--seconds'", "not a finite number"),
        (["bench", "--model", "resnet18", "--device", "tpu"], "'--device'", "unknown device 'tpu'"),
        (["bench", "--model", "resnet18", "--device", "cuda:99"], "'--device'", "cuda:99"),
        (["bench", "--model", "resnet18", "--sizes", "1:10000000000:1"], "--sizes", "more than 256 sizes"),
        (["bench", "--model", "resnet18", "--sizes", "2000000", "--device", "cpu"], "--sizes", "GiB free on cpu"),
        (["bench", "--model", "resnet18", "--warmup", "nan"], "'--warmup'", "not a finite number"),
        (["bench", "--model", "resnet18", "--weights", "/nonexistent/w.pt"], "'--weights'", "does not exist"),
    ],
)
def test_bad_options_are_usage_errors_naming_the_option(args, option, why):
    result = aipm(*args, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert option in result.stderr and why in result.stderr


def test_serve_on_a_busy_port_says_so(hw):
    import socket

    env, _ = hw
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = aipm("serve", "--port", str(port), "--duration", "1", env=env, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr and "--port" in result.stderr
