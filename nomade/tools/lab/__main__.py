"""``python -m nomade.tools.lab record|export ...``: the lab's tools (see ``nomade.tools.lab.record``)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Dispatch to a lab tool; 2 with a usage line for an unknown one."""
    if argv[:1] == ["record"]:
        from nomade.tools.lab.record import main as record
        return record(argv[1:])
    if argv[:1] == ["export"]:
        from nomade.tools.lab.record import export
        return export(argv[1:])
    print("usage: python -m nomade.tools.lab record [--dir D] [--jobs N] [--seed S] [--max-running K]\n"
          "       python -m nomade.tools.lab export [--dir D] --out FILE",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
