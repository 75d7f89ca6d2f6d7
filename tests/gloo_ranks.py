"""Two torch.distributed ranks on the gloo backend over loopback, on fake hardware: each rank is
a subprocess running a script, with a shared fake powercap tree and its own fake GPU."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import subprocess
import sys
import time


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def two_gloo_ranks(script: str, tmp, nvml_lib, *, extra_args=lambda rank: [], extra_env=None, timeout_s=50.0):
    """Runs `script` (argv: powercap root, NVML library, pickle path, *extra_args(rank)) on ranks
    0 and 1; yields (each rank's unpickled result, the powercap writer). Every process is killed
    on the way out, whatever happened."""
    from fakes.powercap import PowercapWriter, build_powercap_tree

    tree = build_powercap_tree(tmp / "powercap")
    writer = PowercapWriter(tree, None).start()
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_loopback_port()),
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "FAKE_NVML_GPUS": "2",
        "FAKE_NVML_TRACE": "const:100",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        # the rank scripts import shared test modules (tiny_models) from this folder
        "PYTHONPATH": os.pathsep.join(
            filter(None, [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH")])
        ),
        **(extra_env or {}),
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)
    procs = []
    try:
        for rank in range(2):
            rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        script,
                        str(tmp / "powercap"),
                        str(nvml_lib),
                        str(tmp / f"rank{rank}.pkl"),
                        *extra_args(rank),
                    ],
                    env=rank_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout_s
        for rank, p in enumerate(procs):
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0, f"rank {rank} failed:\n{out[-6000:]}"
        yield [pickle.loads((tmp / f"rank{r}.pkl").read_bytes()) for r in range(2)], writer
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        writer.stop()
