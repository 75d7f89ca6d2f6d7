"""Standard deep-learning workloads for ``aipm-fast bench``, and the report of their results.

- ``protocol``: the benchmark itself (baseline, warm-up, repeated runs of marked inferences)
  and the files it writes;
- ``models``: the model registry, one module per family;
- ``runfile``: run.json, defined once, written by the protocol and validated by the report;
- ``folder``: a benchmark folder's layout read back (runs, per-pass tables, raw samples);
- ``summary``, ``table``, ``traces``, ``plots``: medians per size, the console table, power
  against time, the PNGs; ``report`` puts them together for ``aipm-fast report``;
- ``aipowermeter``: a run's files in AIPowerMeter's format; ``gpu_use``: the run's per-process
  SM and memory and GPM, read at its edges; ``seed_table``: several models in one table.
"""
