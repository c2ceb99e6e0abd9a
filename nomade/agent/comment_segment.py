"""NØMADE's segment of a Slurm job Comment (pure string functions, standard library only).

A job's Comment holds at most 1024 bytes and users may write their own. NØMADE owns one
delimited segment of it and leaves everything else alone::

    user text [NOMADE|risk high 0.74: memory grows 2.1 GB/h|NOMADE]

Rules:

- The segment is ``START + text + END`` and goes at the end, after one space when there
  is user text. ``text`` is printable ASCII; ``[``, ``]`` and ``|`` become ``(``, ``)``
  and ``/``, so the markers can never occur inside it.
- The user's text is everything outside the segment(s). It is kept as it is, except that
  characters that are not printable (tabs, newlines, control bytes) become spaces: NØMADE
  writes printable text only.
- Users may edit around the segment. Every ``START ... END`` pair is NØMADE's; a
  ``START`` without an ``END`` (the tail was cut or edited) is NØMADE's up to the end of
  the comment; one space before a segment is the separator and goes with it. Text that
  the user typed which contains ``START`` is therefore taken for NØMADE's (it is
  unlikely: ``[NOMADE|`` in upper case with a bar).
- The whole comment stays within ``MAX_BYTES`` (UTF-8 bytes, as Slurm counts): NØMADE's
  text is shortened (ending in ``~``), never the user's. When the user's text leaves no
  room for even a short segment, the result is the user's text alone (no segment). A
  user text longer than ``MAX_BYTES`` cannot come from Slurm, which refuses it; it is
  returned unchanged and Slurm will refuse it again.
"""

from __future__ import annotations

#: Slurm's limit on a job Comment (longer ones are refused), in bytes.
MAX_BYTES = 1024
#: Marks the start and the end of NØMADE's segment.
START = "[NOMADE|"
END = "|NOMADE]"
#: NØMADE's text is cut to leave the segment no shorter than this many characters of text.
MIN_TEXT = 8
_TRUNCATED = "~"
_REPLACE = str.maketrans({"[": "(", "]": ")", "|": "/"})


def _printable(text: str) -> str:
    """``text`` with every character that is not printable replaced by a space."""
    return "".join(c if c.isprintable() else " " for c in text)


def _clean_segment(text: str) -> str:
    """NØMADE's text as printable ASCII without marker characters, spaces collapsed."""
    ascii_only = "".join(c if " " <= c <= "~" else " " for c in text.translate(_REPLACE))
    return " ".join(ascii_only.split())


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def extract(existing: str) -> tuple[str, str | None]:
    """Split a Comment into (the user's text, NØMADE's segment text or None).

    The user's text is returned exactly as it stands in ``existing`` (no cleaning);
    when there are several segments, the last one's text is returned.
    """
    user: list[str] = []
    segment: str | None = None
    rest = existing
    while (i := rest.find(START)) >= 0:
        before = rest[:i]
        user.append(before[:-1] if before.endswith(" ") else before)
        j = rest.find(END, i + len(START))
        if j < 0:
            segment = rest[i + len(START):]
            rest = ""
            break
        segment = rest[i + len(START):j]
        rest = rest[j + len(END):]
    user.append(rest)
    return "".join(user), segment


def remove(existing: str) -> str:
    """The Comment without NØMADE's segment(s): the user's text, as it stands."""
    return extract(existing)[0]


def merge(existing: str, segment_text: str) -> str:
    """The Comment ``existing`` with NØMADE's segment set to ``segment_text``.

    Keeps the user's text (non-printable characters become spaces), replaces any old
    segment, and shortens ``segment_text`` so that the result fits in ``MAX_BYTES``.
    Idempotent: ``merge(merge(c, s), s) == merge(c, s)``.
    """
    user = _printable(remove(existing))
    prefix = f"{user} " if user else ""
    room = MAX_BYTES - _nbytes(prefix) - len(START) - len(END)
    text = _clean_segment(segment_text)
    if room < min(MIN_TEXT, len(text)):
        return user
    if len(text) > room:
        text = text[: room - len(_TRUNCATED)].rstrip() + _TRUNCATED
    return f"{prefix}{START}{text}{END}"
