"""One rank of `aipm-fast bench` under torchrun, for tests/test_bench_sweep.py: the CLI as it is,
except that the rank named by SWEEP_TEST_FAIL_RANK raises once its first run's files are
written (a rank that fails mid-sweep, which torchrun answers by ending the group)."""

import os
import sys

if os.environ.get("SWEEP_TEST_FAIL_RANK") == os.environ.get("RANK"):
    from aipm_fast.bench import protocol

    write_run = protocol.Benchmark._write_run

    def write_then_fail(self, *args, **kwargs):
        write_run(self, *args, **kwargs)
        raise RuntimeError(f"rank {os.environ['RANK']} fails after its first run, as the test asked")

    protocol.Benchmark._write_run = write_then_fail

from aipm_fast.cli import main  # noqa: E402

main(sys.argv[1:], prog_name="aipm-fast")
