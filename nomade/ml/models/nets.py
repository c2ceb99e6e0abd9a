"""The torch networks (GNN, LSTM, autoencoder) and the GNN's graph inputs."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from torch import nn


@dataclass
class Neighbours:
    """For each query the ≤ k reference rows it receives messages from (``valid``
    marks the real ones; ``idx`` elsewhere is ignored)."""

    idx: np.ndarray
    sim: np.ndarray
    valid: np.ndarray

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Safe indices and similarity weights that sum to 1 per query (0 if none)."""
        valid = np.asarray(self.valid, bool)
        idx = np.where(valid, np.asarray(self.idx, np.int64), 0)
        w = np.where(valid, np.clip(np.asarray(self.sim, np.float64), 0.0, None), 0.0)
        tot = w.sum(axis=1, keepdims=True)
        return idx, (w / np.where(tot > 0, tot, 1.0)).astype(np.float32)


def messages(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Layer-1 message of each reference job: its 19 features and its label."""
    return np.concatenate([np.asarray(x, np.float32), np.asarray(y, np.float32)[:, None]], axis=1)


@dataclass
class Reference:
    """The ended jobs new jobs attach to: normalised final features ``x``, labels
    ``y``, ``end_ts``, and ``agg`` float32[m, 18], each one's own layer-1 input (the
    weighted mean of its neighbours' messages; see :meth:`build`)."""

    x: np.ndarray
    y: np.ndarray
    end_ts: np.ndarray
    agg: np.ndarray

    @classmethod
    def build(cls, x: np.ndarray, y: np.ndarray, end_ts: np.ndarray, own: Neighbours) -> Reference:
        """``own``: each reference job's neighbours among the reference set (jobs that
        ended before it started)."""
        idx, w = own.weights()
        agg = (w[:, :, None] * messages(x, y)[idx]).sum(axis=1) if len(x) else np.zeros((0, 18))
        return cls(np.asarray(x, np.float32), np.asarray(y, np.float32),
                   np.asarray(end_ts, np.float64), agg.astype(np.float32))

    def recent(self, n: int) -> tuple[Reference, np.ndarray]:
        """The ``n`` most recently ended jobs, and their rows in this set."""
        keep = np.sort(np.argsort(self.end_ts, kind="stable")[-n:]) if n < len(self.x) else np.arange(len(self.x))
        return Reference(self.x[keep], self.y[keep], self.end_ts[keep], self.agg[keep]), keep


# ------------------------------------------------------------------ networks

class GNNNet(nn.Module):
    """GraphConv 19→64 → 64→32 (ReLU; ``h' = W_self h + W_nbr mean_sim(h_nbr)``),
    neighbourhood pooling by the similarity-weighted mean, dense 32→1 (logit)."""

    def __init__(self, n_in: int = 19, hidden: int = 64, out: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        self.self1, self.nbr1 = nn.Linear(n_in, hidden), nn.Linear(n_in + 1, hidden, bias=False)
        self.self2, self.nbr2 = nn.Linear(hidden, out), nn.Linear(hidden, out, bias=False)
        self.head = nn.Linear(out, 1)
        self.drop = nn.Dropout(dropout)

    def layer1(self, x: torch.Tensor, agg: torch.Tensor) -> torch.Tensor:
        """First GraphConv, for queries or reference jobs alike."""
        return self.drop(torch.relu(self.self1(x) + self.nbr1(agg)))

    def forward(self, x: torch.Tensor, agg: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Logits of queries ``x`` [B,19] with layer-1 input ``agg`` [B,20] and the
        pooled neighbour embeddings ``pooled`` [B,64] (see :func:`pool`)."""
        return self.from_neighbour_terms(x, self.nbr1(agg), self.nbr2(pooled))

    def from_neighbour_terms(self, x: torch.Tensor, nbr1: torch.Tensor, nbr2: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` given ``nbr1(agg)`` and ``nbr2(pooled)``, which do not
        depend on ``x`` (reused when scoring variants of the same jobs)."""
        h1 = self.drop(torch.relu(self.self1(x) + nbr1))
        h2 = self.drop(torch.relu(self.self2(h1) + nbr2))
        return self.head(h2).squeeze(-1)


def pool(nbr: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Neighbourhood pooling: similarity-weighted mean of ``nbr`` [B,k,D] (``w`` [B,k]
    sums to 1, or 0 for a job without neighbours)."""
    return (w.unsqueeze(-1) * nbr).sum(dim=1)


class LSTMNet(nn.Module):
    """LSTM(64) → LSTM(32) → dense 32→16 ReLU → 16→1 (logit), read at the last step."""

    def __init__(self, n_channels: int, hidden: int = 64, out: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        self.lstm1 = nn.LSTM(n_channels, hidden, batch_first=True)
        self.lstm2 = nn.LSTM(hidden, out, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.fc1, self.fc2 = nn.Linear(out, 16), nn.Linear(16, 1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq`` [B,T,C]: left-padded windows ending at the as-of time."""
        out1, _ = self.lstm1(seq)
        _, (h, _) = self.lstm2(self.drop(out1))
        return self.fc2(torch.relu(self.fc1(self.drop(h[-1])))).squeeze(-1)


class AENet(nn.Module):
    """19→12→8→4→8→12→19, ReLU inside, sigmoid out."""

    def __init__(self, n_in: int = 19) -> None:
        super().__init__()
        sizes = [n_in, 12, 8, 4, 8, 12]
        layers: list[nn.Module] = []
        for a, b in pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(12, n_in), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


