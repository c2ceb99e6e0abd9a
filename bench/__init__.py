"""Benchmarks against the budgets of DESIGN.md (``make bench``).

Each ``bench/bench_<name>.py`` defines ``run(quick: bool) -> list[Result]``.
``python -m bench [NAME ...] [--quick] [--json]`` runs them and prints one table.
"""
