"""``python -m nomade``: the same as the ``nomade`` command."""

from nomade.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
