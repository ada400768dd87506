"""OpenVLA's action discretisation and (un)normalisation.

Actions normalised to [-1, 1] are cut into `n_bins` uniform bins; bin k maps to token id
`vocab_end - k` (the last `n_bins` ids of the unpadded vocabulary, as in OpenVLA). Decoding uses
the `n_bins - 1` bin centres, exactly as `OpenVLAForActionPrediction.predict_action` upstream.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ACTION_DIM = 7  # xyz delta, rotation delta (3), gripper


class ActionTokenizer:
    """Map continuous actions in [-1, 1] to action token ids and back."""

    def __init__(self, vocab_end: int = 32000, n_bins: int = 256, min_action: float = -1.0,
                 max_action: float = 1.0) -> None:
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        self.vocab_end, self.n_bins = vocab_end, n_bins
        self.bins = np.linspace(min_action, max_action, n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions `[..., D]` -> token ids `[..., D]` (int64)."""
        actions = np.clip(np.asarray(actions, dtype=np.float64), self.bins[0], self.bins[-1])
        return self.vocab_end - np.digitize(actions, self.bins).astype(np.int64)

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids `[..., D]` -> normalised actions at the bin centres `[..., D]` (float32)."""
        index = np.clip(self.vocab_end - np.asarray(token_ids) - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[index].astype(np.float32)

    def action_index_to_token_id(self, index: np.ndarray) -> np.ndarray:
        """Index into the action vocabulary (0 = first action token id) -> token id."""
        return self.vocab_end - self.n_bins + np.asarray(index)

    def token_id_to_action_index(self, token_ids: np.ndarray) -> np.ndarray:
        return np.asarray(token_ids) - (self.vocab_end - self.n_bins)


def _action_stats(norm_stats: Mapping, unnorm_key: str | None) -> Mapping:
    if not norm_stats:
        raise ValueError("the model has no norm_stats: pass normalised actions or set config.norm_stats")
    if unnorm_key is None:
        if len(norm_stats) != 1:
            raise ValueError(
                f"unnorm_key is required when norm_stats has several entries; allowed: {sorted(norm_stats)}"
            )
        unnorm_key = next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        raise ValueError(f"unnorm_key={unnorm_key!r} is not in norm_stats; allowed: {sorted(norm_stats)}")
    return norm_stats[unnorm_key]["action"]


def unnormalize_actions(normalized: np.ndarray, norm_stats: Mapping, unnorm_key: str | None = None) -> np.ndarray:
    """`a = 0.5 (n + 1)(q99 - q01) + q01` where `mask`, else `a = n` (OpenVLA's convention)."""
    stats = _action_stats(norm_stats, unnorm_key)
    q01, q99 = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
    mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    return np.where(mask, 0.5 * (normalized + 1.0) * (q99 - q01) + q01, normalized).astype(np.float32)


def normalize_actions(actions: np.ndarray, norm_stats: Mapping, unnorm_key: str | None = None) -> np.ndarray:
    """Inverse of `unnormalize_actions`, clipped to [-1, 1] (used to build training targets)."""
    stats = _action_stats(norm_stats, unnorm_key)
    q01, q99 = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
    mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    scaled = 2.0 * (np.asarray(actions, np.float32) - q01) / np.maximum(q99 - q01, 1e-8) - 1.0
    return np.clip(np.where(mask, scaled, actions), -1.0, 1.0).astype(np.float32)
