"""Run the benchmarks and print them beside the budgets of DESIGN.md."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

from bench.result import Result


def _modules() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)])
                  if m.name.startswith("bench_"))


def _table(rows: list[Result]) -> str:
    head = ("benchmark", "value", "unit", "budget", "verdict")
    body = [(r.name, f"{r.value:.4g}", r.unit, r.budget,
             {True: "ok", False: "OVER BUDGET", None: "-"}[r.ok]) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
    return "\n".join([line(head), line("-" * w for w in widths), *map(line, body)])


def main(argv: list[str] | None = None) -> int:
    names = _modules()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("only", nargs="*", choices=names + [[]], help="benchmarks to run (default all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows: list[Result] = []
    for name in args.only or names:
        t0 = time.monotonic()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        rows.extend(importlib.import_module(f"bench.bench_{name}").run(args.quick))
        print(f"== {name} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    out = Path(".bench")
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps([r.as_dict() for r in rows], indent=2))
    print(json.dumps([r.as_dict() for r in rows], indent=2) if args.json else _table(rows))
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
