"""Standard deep-learning workloads for ``aipm-fast bench``."""
