"""NØMADE's Comment segment: the user's text is kept, the 1024-byte bound holds, merging twice is merging once."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nomade.agent import comment_segment
from nomade.agent.comment_segment import END, MAX_BYTES, START, extract, merge, remove

#: User text as Slurm can hold it: printable, within the limit, without NØMADE's start marker.
user_texts = st.text(max_size=1100).filter(
    lambda s: s.isprintable() and START not in s and len(s.encode()) <= MAX_BYTES)
#: Anything advice.py might hand over, including markers, control characters and very long text.
segment_texts = st.text(max_size=1500) | st.sampled_from([START, END, "|NOMADE|NOMADE]]", "a" * 2000])
#: Whatever a Comment may hold after users edited it.
any_comments = st.text(max_size=1500) | st.builds(
    lambda a, b, c: a + b + c, st.text(max_size=40), st.sampled_from([START, END, START + "x" + END]),
    st.text(max_size=40))


def nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=300)
@given(user_texts, segment_texts)
def test_user_text_is_kept(user: str, text: str) -> None:
    merged = merge(user, text)
    assert remove(merged) == user
    assert merged.startswith(user)


@settings(max_examples=300)
@given(any_comments, segment_texts)
def test_result_fits_and_is_printable(existing: str, text: str) -> None:
    merged = merge(existing, text)
    assert merged.isprintable()
    # a user text over the limit cannot come from Slurm: it is returned, cleaned, without a segment
    assert nbytes(merged) <= max(MAX_BYTES, nbytes(remove(existing)))


@settings(max_examples=300)
@given(any_comments, segment_texts)
def test_merge_is_idempotent(existing: str, text: str) -> None:
    once = merge(existing, text)
    assert merge(once, text) == once


@settings(max_examples=200)
@given(user_texts, segment_texts, segment_texts)
def test_a_new_segment_replaces_the_old(user: str, first: str, second: str) -> None:
    assert merge(merge(user, first), second) == merge(user, second)


def test_layout_and_extract() -> None:
    merged = merge("please keep me", "risk high 0.74: memory grows")
    assert merged == f"please keep me {START}risk high 0.74: memory grows{END}"
    assert extract(merged) == ("please keep me", "risk high 0.74: memory grows")
    assert merge("", "low") == f"{START}low{END}"
    assert extract("no segment here") == ("no segment here", None)


def test_markers_and_control_characters_in_our_text_are_neutralised() -> None:
    merged = merge("", f"a{END}b\n[c]|d\x00é")
    assert extract(merged) == ("", "a/NOMADE)b (c)/d")


def test_user_edits_around_the_segment() -> None:
    edited = f"before {START}old{END} after"
    assert remove(edited) == "before after"
    assert merge(edited, "new") == f"before after {START}new{END}"
    cut = f"mine {START}risk hi"          # the user cut our END off
    assert extract(cut) == ("mine", "risk hi")
    assert merge(cut, "new") == f"mine {START}new{END}"
    orphan = f"text with {END} in it"       # an END alone is the user's
    assert remove(merge(orphan, "x")) == orphan


def test_non_printable_user_characters_become_spaces() -> None:
    assert merge("line1\nline2\t!", "x") == f"line1 line2 ! {START}x{END}"


def test_our_text_is_shortened_never_the_users() -> None:
    user = "u" * 900
    merged = merge(user, "z" * 500)
    assert nbytes(merged) == MAX_BYTES
    assert merged.startswith(user + " " + START)
    assert extract(merged)[1].endswith("~")


def test_no_room_for_a_segment_leaves_the_user_text_alone() -> None:
    user = "é" * 508                       # 1016 bytes: no room for the markers and text
    assert merge(user + f" {START}old{END}", "risk high") == user
    assert merge("x" * (MAX_BYTES - len(START) - len(END) - 1 - comment_segment.MIN_TEXT), "0123456789")\
        .endswith(f"{START}0123456~{END}")


@pytest.mark.parametrize("existing", ["", "x", START, END, START + END, f"{START}{START}{END}{END}"])
def test_degenerate_comments(existing: str) -> None:
    merged = merge(existing, "seg")
    assert extract(merged)[1] == "seg"
    assert merge(merged, "seg") == merged
