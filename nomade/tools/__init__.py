"""Tools, not runtime: the lab (workloads, the corpus recorder) and the demo. Never imported by a daemon."""
