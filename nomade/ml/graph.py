"""The job similarity graph: for each query job, its most similar jobs that ended before it started.

An edge r → q exists when reference r ended strictly before q started, the cosine
similarity of their feature vectors is at least ``threshold``, and r is among q's
``k`` most similar such references. Similarity is taken over the features the query
knows (``q_mask``): the start-time part always, runtime parts where it has them.
Reference vectors are used as given (normalised features, 0 where unknown).

Cost: references are sorted by end time and queries by start time, so each block of
queries is compared (one float32 matrix product) only with the prefix of references
that ended before the block's last start; a thin band at the prefix's end is masked
per query. References are cut into chunks of ``CHUNK``; the k-th largest chunk
maximum bounds each row's k-th similarity from below, and only chunks that reach it
are searched exactly. No Python loop over jobs; one reused scratch buffer.
"""

from __future__ import annotations

import numpy as np

BLOCK_ELEMENTS = 1 << 24
"""Similarity entries computed at once (64 MiB of float32); sets the query block size."""
MAX_BLOCK_ROWS = 1024
CHUNK = 128
"""References per chunk whose maximum is taken before the exact top-k search."""


def _unit(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero: similarity 0 to everything)."""
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norm > 0, norm, 1.0)


def neighbours(ref_X: np.ndarray, ref_end_ts: np.ndarray, q_X: np.ndarray, q_start_ts: np.ndarray,
               q_mask: np.ndarray | None = None, threshold: float = 0.7, k: int = 10
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query, the ≤ ``k`` most similar references with cosine ≥ ``threshold``
    that ended before the query started (``ref_end_ts < q_start_ts``; NaN never).

    Returns ``(idx int64[nq, k], sim float32[nq, k], valid bool[nq, k])``, each row in
    decreasing similarity; ``idx`` indexes ``ref_X`` and is 0 (sim 0) where not valid.
    ``q_mask`` (bool[nq, F], default all True) says which features each query knows.
    """
    ref_X, q_X = np.asarray(ref_X, np.float32), np.asarray(q_X, np.float32)
    ref_end_ts, q_start_ts = np.asarray(ref_end_ts, np.float64), np.asarray(q_start_ts, np.float64)
    q_mask = np.ones(q_X.shape, bool) if q_mask is None else np.asarray(q_mask, bool)
    _check(ref_X, ref_end_ts, q_X, q_start_ts, q_mask, k, threshold)
    nq = len(q_X)
    idx, sim = np.zeros((nq, k), np.int64), np.zeros((nq, k), np.float32)
    valid = np.zeros((nq, k), bool)
    ended = np.flatnonzero(np.isfinite(ref_end_ts))
    ref_order = ended[np.argsort(ref_end_ts[ended], kind="stable")]
    ref_end = ref_end_ts[ref_order]
    if len(ref_order) == 0 or nq == 0 or k == 0:
        return idx, sim, valid
    patterns, which = _mask_patterns(q_mask)
    scratch = _Scratch()
    pad = np.zeros((int(_padded(len(ref_order))) - len(ref_order), ref_X.shape[1]), np.float32)
    for p, pattern in enumerate(patterns):
        R = np.concatenate([_unit(ref_X[ref_order] * pattern), pad])
        qs = np.flatnonzero((which == p) & np.isfinite(q_start_ts))
        qs = qs[np.argsort(q_start_ts[qs], kind="stable")]
        Q = _unit(q_X[qs] * pattern)
        for lo_q, hi_q in _blocks(ref_end, q_start_ts[qs]):
            rows = slice(lo_q, hi_q)
            _block(R, ref_end, Q[rows], q_start_ts[qs[rows]], threshold, k,
                   (idx, sim, valid), qs[rows], ref_order, scratch)
    return idx, sim, valid


def _mask_patterns(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``mask`` and, per row, the index of its pattern.

    Each row is packed into bytes and compared as one opaque value: the same result
    as ``np.unique(mask, axis=0, return_inverse=True)`` up to the order of the
    patterns, ~40x faster (that sorts row by row as structured records)."""
    packed = np.ascontiguousarray(np.packbits(mask, axis=1))
    codes = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, which = np.unique(codes, return_index=True, return_inverse=True)
    return mask[first], which.ravel()


def edge_list(idx: np.ndarray, sim: np.ndarray, valid: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The valid entries of :func:`neighbours` as edges ``(src, dst, weight)``: ``src``
    the reference (sender), ``dst`` the query row (receiver), weight the similarity."""
    dst, slot = np.nonzero(valid)
    return idx[dst, slot].astype(np.int64), dst.astype(np.int64), sim[dst, slot].astype(np.float32)


def _check(ref_X: np.ndarray, ref_end_ts: np.ndarray, q_X: np.ndarray, q_start_ts: np.ndarray,
           q_mask: np.ndarray, k: int, threshold: float) -> None:
    if ref_X.ndim != 2 or q_X.ndim != 2 or ref_X.shape[1] != q_X.shape[1]:
        raise ValueError(f"ref_X and q_X must be 2-d with one width, got {ref_X.shape}, {q_X.shape}")
    if ref_end_ts.shape != (len(ref_X),) or q_start_ts.shape != (len(q_X),):
        raise ValueError("ref_end_ts and q_start_ts need one time per row of ref_X and q_X")
    if q_mask.shape != q_X.shape:
        raise ValueError(f"q_mask has shape {q_mask.shape}, q_X {q_X.shape}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")


def _blocks(ref_end: np.ndarray, q_start: np.ndarray) -> list[tuple[int, int]]:
    """Query blocks (start-sorted) sized so block rows × eligible refs ≤ BLOCK_ELEMENTS."""
    width = _padded(np.searchsorted(ref_end, q_start, side="left"))
    out, lo = [], 0
    while lo < len(q_start):
        hi = min(lo + MAX_BLOCK_ROWS, len(q_start))
        # the widest prefix is the block's last (it grows with start time): halve to fit
        while hi - lo > 1 and (hi - lo) * int(width[hi - 1]) > BLOCK_ELEMENTS:
            hi = lo + (hi - lo) // 2
        out.append((lo, hi))
        lo = hi
    return out


def _padded(n: np.ndarray | int) -> np.ndarray:
    """Reference counts rounded up to whole chunks."""
    return -(-np.asarray(n) // CHUNK) * CHUNK


class _Scratch:
    """One reusable similarity buffer: allocating a fresh one per block costs more
    (page faults) than the matrix product itself."""

    def __init__(self) -> None:
        self.buf = np.empty(0, np.float32)

    def matrix(self, rows: int, cols: int) -> np.ndarray:
        if len(self.buf) < rows * cols:
            self.buf = np.empty(max(rows * cols, BLOCK_ELEMENTS), np.float32)
        return self.buf[: rows * cols].reshape(rows, cols)


def _block(R: np.ndarray, ref_end: np.ndarray, Q: np.ndarray, q_start: np.ndarray, threshold: float,
           k: int, out: tuple[np.ndarray, np.ndarray, np.ndarray], q_rows: np.ndarray,
           ref_order: np.ndarray, scratch: _Scratch) -> None:
    """Fill the output rows ``q_rows`` for one block of start-sorted queries.

    ``R`` has zero rows appended to a whole number of chunks. The k-th largest of the
    per-chunk maxima is a lower bound of each row's k-th largest similarity (the top
    k chunks hold k distinct values at least that high), so only chunks whose maximum
    reaches it are searched exactly.
    """
    lo = int(np.searchsorted(ref_end, q_start[0], side="left"))
    hi = int(np.searchsorted(ref_end, q_start[-1], side="left"))
    if hi == 0:
        return
    width = int(_padded(hi))
    S = scratch.matrix(len(Q), width)
    np.matmul(Q, R[:width].T, out=S)
    S[:, hi:] = -np.inf  # padding, and refs that ended after every start in the block
    if hi > lo:  # refs ending inside the block's start range: eligible only for later starts
        band = S[:, lo:hi]
        band[ref_end[None, lo:hi] >= q_start[:, None]] = -np.inf
    chunks = S.reshape(len(Q), width // CHUNK, CHUNK)
    top = chunks.max(axis=2)
    cut = np.full(len(Q), threshold, np.float32)
    if top.shape[1] > k:
        cut = np.maximum(cut, np.partition(top, top.shape[1] - k, axis=1)[:, top.shape[1] - k])
    rc, cc = np.nonzero(top >= cut[:, None])
    vals = chunks[rc, cc]
    hit_r, hit_j = np.nonzero(vals >= cut[rc][:, None])
    r, c = rc[hit_r], cc[hit_r] * CHUNK + hit_j
    s = vals[hit_r, hit_j]
    order = np.lexsort((-c, -s, r))
    r, c, s = r[order], c[order], s[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
    keep = rank < k
    idx, sim, valid = out
    rows, ranks = q_rows[r[keep]], rank[keep]
    idx[rows, ranks] = ref_order[c[keep]]
    sim[rows, ranks] = s[keep]
    valid[rows, ranks] = True
