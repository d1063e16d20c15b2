"""Window embeddings -> speaker labels: count the speakers, then spectral clustering with that count.

Spectral clustering (spectralcluster, default settings, no affinity refinement) is accurate once
it is told the count, but its eigengap estimate says 1 on real two-speaker audio because the
(cos + 1) / 2 affinity has one dominant eigenvalue. A plain cosine threshold fails the other way:
a single noisy voice (jfk.flac) has window-to-window similarities as low as two similar voices.

The count comes from divisive splitting instead. A cluster is cut in two (spectral, k = 2) and the
cut is kept when the halves are really different:

- ``z = gap * sqrt(min(n_a, n_b, 30)) >= min_z`` and ``gap >= min_gap``, where ``gap`` is the mean
  cosine similarity of windows within a half minus that across the halves. Pairs of windows that
  overlap in time are left out (they share audio). The square root makes a cut of a few windows
  need a larger gap; the cap and ``min_gap`` stop long recordings of one voice from being cut
  over small acoustic drifts that become 'significant' with thousands of windows.
- or the halves are simply far apart: mean cross similarity ``<= max_between``.

The largest cluster is tried first until nothing splits or the upper bound is reached. Windows
that repeat earlier audio almost exactly (looped or duplicated content) are left out of the count:
repeated audio is not independent evidence, and its perfect self-similarity would pass as a speaker.

Recordings longer than ``MAX_WINDOWS`` windows are clustered on evenly spaced windows and the rest
are given the nearest speaker centroid, so memory stays bounded whatever the length.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

STAT_WINDOWS = 600
"""At most this many windows (evenly spaced in time) enter the within/between similarity
statistics of one cut: the statistics are means, and this bounds the pairwise matrix."""
Z_CAP = 30
"""Windows counted in the significance of a cut: beyond this, more audio adds no more evidence."""
MIN_WINDOWS = 2
"""Each half of a cut needs at least this many windows (about 2.25 s of speech)."""
DUPLICATE_SIMILARITY = 0.99
"""Cosine similarity above which a window repeats earlier, non-overlapping audio."""
MAX_WINDOWS = 4800
"""Windows clustered directly (one hour at the default 0.75 s step); beyond, a subsample is."""
_BLOCK = 512


@dataclass(frozen=True)
class SplitRule:
    min_z: float = 0.18
    min_gap: float = 0.04
    max_between: float = 0.65
    overlap_s: float = 1.6
    """Windows whose centres are closer than this share audio; their similarity is not evidence."""


@dataclass(frozen=True)
class Cut:
    left: np.ndarray
    right: np.ndarray
    z: float
    gap: float
    between: float


def _spectral(embeddings: np.ndarray, k: int, max_spectral_size: int) -> np.ndarray:
    from spectralcluster import SpectralClusterer

    clusterer = SpectralClusterer(
        min_clusters=k,
        max_clusters=k,
        max_spectral_size=max_spectral_size if len(embeddings) > max_spectral_size else None,
    )
    return np.asarray(clusterer.predict(embeddings.astype(np.float64)), dtype=int)


def warm_up() -> None:
    """One tiny spectral run: the first in a process costs over a second of lazy set-up."""
    points = np.random.default_rng(0).standard_normal((12, 8))
    _spectral(points / np.linalg.norm(points, axis=1, keepdims=True), 2, 600)


def _evenly(indices: np.ndarray, most: int) -> np.ndarray:
    if len(indices) <= most:
        return indices
    picked: np.ndarray = indices[np.linspace(0, len(indices) - 1, most).round().astype(int)]
    return picked


def cut_statistics(
    embeddings: np.ndarray, centers: np.ndarray, left: np.ndarray, right: np.ndarray, rule: SplitRule
) -> tuple[float, float, float]:
    """(z, gap, between) of splitting into ``left`` and ``right`` (index arrays)."""
    a = _evenly(left, STAT_WINDOWS // 2)
    b = _evenly(right, STAT_WINDOWS // 2)

    def within(idx: np.ndarray) -> float:
        sims = embeddings[idx] @ embeddings[idx].T
        apart = np.abs(centers[idx][:, None] - centers[idx][None, :]) >= rule.overlap_s
        values = sims[np.triu(apart, 1)]
        return float(values.mean()) if len(values) else np.nan

    cross = embeddings[a] @ embeddings[b].T
    apart = np.abs(centers[a][:, None] - centers[b][None, :]) >= rule.overlap_s
    between = float(cross[apart].mean()) if apart.any() else float(cross.mean())
    inner = [w for w in (within(a), within(b)) if not np.isnan(w)]
    gap = float(np.mean(inner)) - between if inner else float("nan")
    z = gap * np.sqrt(min(len(left), len(right), Z_CAP))
    return z, gap, between


def try_cut(
    embeddings: np.ndarray, centers: np.ndarray, members: np.ndarray, rule: SplitRule, max_spectral_size: int
) -> Cut | None:
    """The spectral 2-way cut of ``members`` if it separates two speakers, else None."""
    if len(members) < 2 * MIN_WINDOWS:
        return None
    labels = _spectral(embeddings[members], 2, max_spectral_size)
    left, right = members[labels == 0], members[labels == 1]
    if min(len(left), len(right)) < MIN_WINDOWS:
        return None
    z, gap, between = cut_statistics(embeddings, centers, left, right, rule)
    distinct = (z >= rule.min_z and gap >= rule.min_gap) or between <= rule.max_between
    return Cut(left, right, z, gap, between) if distinct else None


def repeated_windows(embeddings: np.ndarray, centers: np.ndarray, overlap_s: float) -> np.ndarray:
    """True for windows nearly identical to an earlier window they do not overlap."""
    n = len(embeddings)
    repeated = np.zeros(n, dtype=bool)
    for first in range(0, n, _BLOCK):
        last = min(first + _BLOCK, n)
        sims = embeddings[first:last] @ embeddings[:last].T
        rows = np.arange(first, last)[:, None]
        earlier = np.arange(last)[None, :] < rows
        apart = np.abs(centers[first:last, None] - centers[None, :last]) >= overlap_s
        sims[~(earlier & apart)] = -1.0
        repeated[first:last] = sims.max(axis=1) >= DUPLICATE_SIMILARITY
    return repeated


def estimate_count(
    embeddings: np.ndarray,
    centers: np.ndarray,
    *,
    rule: SplitRule,
    max_speakers: int,
    max_spectral_size: int,
    checkpoint: Callable[[], None] = lambda: None,
) -> int:
    """How many speakers the windows hold (1..max_speakers). ``checkpoint`` runs before every cut (it
    may raise: a deadline or a cancel stops the count between two spectral runs)."""
    if len(embeddings) == 0:
        return 0
    distinct = ~repeated_windows(embeddings, centers, rule.overlap_s)
    if distinct.sum() >= 2 * MIN_WINDOWS:
        embeddings, centers = embeddings[distinct], centers[distinct]
    # Largest cluster first: a heap of (-size, tiebreak, members); rejected clusters are final.
    heap: list[tuple[int, int, np.ndarray]] = [(-len(embeddings), 0, np.arange(len(embeddings)))]
    final = 0
    counter = 1
    while heap and final + len(heap) < max_speakers:
        _, _, members = heapq.heappop(heap)
        checkpoint()
        cut = try_cut(embeddings, centers, members, rule, max_spectral_size)
        if cut is None:
            final += 1
            continue
        for part in (cut.left, cut.right):
            heapq.heappush(heap, (-len(part), counter, part))
            counter += 1
    return final + len(heap)


def cluster(
    embeddings: np.ndarray,
    centers: np.ndarray,
    *,
    min_speakers: int | None,
    max_speakers: int | None,
    default_max: int,
    rule: SplitRule,
    max_spectral_size: int,
    checkpoint: Callable[[], None] = lambda: None,
) -> np.ndarray:
    """A speaker label per window. The count is fixed when min == max, else estimated and clamped.
    ``checkpoint`` runs before each spectral run (see ``estimate_count``)."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=int)
    if n > MAX_WINDOWS:
        chosen = _evenly(np.arange(n), MAX_WINDOWS)
        labels = cluster(
            embeddings[chosen],
            centers[chosen],
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            default_max=default_max,
            rule=rule,
            max_spectral_size=max_spectral_size,
            checkpoint=checkpoint,
        )
        return nearest_centroid(embeddings, embeddings[chosen], labels)
    upper = min(max_speakers or max(default_max, min_speakers or 1), n)
    lower = min(min_speakers or 1, upper)
    if lower == upper:
        k = lower
    else:
        k = estimate_count(
            embeddings,
            centers,
            rule=rule,
            max_speakers=upper,
            max_spectral_size=max_spectral_size,
            checkpoint=checkpoint,
        )
        k = min(max(k, lower), upper)
    if k <= 1:
        return np.zeros(n, dtype=int)
    checkpoint()
    return _spectral(embeddings, k, max_spectral_size)


def nearest_centroid(embeddings: np.ndarray, labelled: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Label every embedding with the most similar centroid of the labelled ones."""
    present = np.unique(labels)
    centroids = np.stack([labelled[labels == k].mean(axis=0) for k in present])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    out = np.empty(len(embeddings), dtype=int)
    for first in range(0, len(embeddings), _BLOCK * 8):
        block = embeddings[first : first + _BLOCK * 8]
        out[first : first + len(block)] = present[np.argmax(block @ centroids.T, axis=1)]
    return out
