"""The three models of DESIGN "Models" as scikit-learn-style estimators over torch.

Estimator habits: ``__init__`` stores hyper-parameters only; ``fit`` returns self and
sets attributes ending in ``_``; ``predict*`` checks it was fitted; ``seed`` seeds a
forked torch RNG inside ``fit`` so two fits with the same data and seed give the same
weights; ``to_state``/``from_state`` give plain containers and tensors that
``torch.load(..., weights_only=True)`` reads back.

Inputs are already normalised (``features.Normalizer``): ``X`` float32[n, 19] with 0
where masked, ``S`` float32[n, T, C] left-padded (valid steps last) with NaN→0,
``lengths`` int[n] valid steps. The LSTM reads the whole window plus a padding-flag
channel (:func:`with_padding_flag`) instead of packed sequences.

Epochs: examples are drawn with probability ∝ weight (snapshots weigh 1/ticks), and
one epoch is ``round(Σw)`` draws, i.e. one pass over the jobs however many ticks each
ran, capped at ``epoch_size`` (20,000) so that validation and early stopping come
often enough on large histories; ``epochs`` is the maximum, early stopping keeps the
best validation epoch.

GNN: jobs are nodes; a job receives messages only from its ≤ k most similar
*reference* jobs (ended before it started; ``ml.graph.neighbours``). Layer 1 of a
reference job uses its own features and the similarity-weighted mean of its
neighbours' ``[x, label]`` (``Reference.agg``, computed once: those inputs never
change), so layer 2 is a true two-hop layer while scoring a new job needs only its k
neighbour rows (``h1`` of every reference job is computed at load time). The label is
an ended job's final state, known before the query started, so it leaks nothing
(``neighbour_labels=False`` zeroes it: the plain 19-input GraphConv).

Batch sizes: the LSTM uses ``[ml.training] batch_size`` (32) as given; the GNN and
autoencoder, trained on hundreds of thousands of tiny as-of snapshots, default to 512
so that an epoch is not ~10⁴ optimiser steps of microseconds each.

The package: ``nets`` (the torch modules), ``fitting`` (balance, epochs, early stopping,
the estimator base), ``gnn``, ``lstm`` and ``autoencoder`` (the three estimators).
"""

from __future__ import annotations

from nomade.ml.models.autoencoder import AutoencoderScorer
from nomade.ml.models.fitting import (
    BALANCE_MODES,
    EPOCH_SIZE,
    FIT_THREADS,
    MIN_EPOCH_DRAWS,
    NotFittedError,
    Progress,
    balance,
    fit_loop,
)
from nomade.ml.models.gnn import GNNClassifier
from nomade.ml.models.lstm import LSTMClassifier, with_padding_flag
from nomade.ml.models.nets import AENet, GNNNet, LSTMNet, Neighbours, Reference, messages, pool

__all__ = ["BALANCE_MODES", "EPOCH_SIZE", "FIT_THREADS", "MIN_EPOCH_DRAWS", "AENet", "AutoencoderScorer",
           "GNNClassifier", "GNNNet", "LSTMClassifier", "LSTMNet", "Neighbours", "NotFittedError", "Progress",
           "Reference", "balance", "fit_loop", "messages", "pool", "with_padding_flag"]
