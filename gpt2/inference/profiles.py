"""The TensorRT optimisation profile: the range of batch, query and cache lengths one engine accepts.

TensorRT compiles an engine for shapes between a profile's min and max and tunes it
for opt. One profile covers prefill (query = sequence, empty cache) and decode
(query 1, long cache); by default it is derived from the deploy batch size and
sequence length (the training length, max_seq_len, unless given), and each bound can
be set on its own. A model with learned positions refuses bounds past max_seq_len; the
others take longer ones, and then the profile is the engine's only length limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gpt2.errors import UserError
from gpt2.inference.graph_io import GraphDims, input_shapes

Range = tuple[int, int, int]  # (min, opt, max)


@dataclass
class ProfileConfig:
    min_batch: int = field(default=1, metadata={"help": "TensorRT profile: smallest batch"})
    opt_batch: int | None = field(
        default=None, metadata={"help": "TensorRT profile: batch to tune for (None: batch_size)"}
    )
    max_batch: int | None = field(
        default=None, metadata={"help": "TensorRT profile: largest batch (None: batch_size)"}
    )
    min_query: int = field(default=1, metadata={"help": "TensorRT profile: shortest query (1: decode)"})
    opt_query: int | None = field(
        default=None, metadata={"help": "TensorRT profile: query length to tune for (None: seq_len, prefill)"}
    )
    max_query: int | None = field(
        default=None, metadata={"help": "TensorRT profile: longest query (None: seq_len)"}
    )
    min_cache: int = field(default=0, metadata={"help": "TensorRT profile: shortest cache (0: prefill)"})
    opt_cache: int = field(default=0, metadata={"help": "TensorRT profile: cache length to tune for"})
    max_cache: int | None = field(
        default=None,
        metadata={"help": "TensorRT profile: longest cache (None: seq_len - 1, the last decode step)"},
    )


@dataclass(frozen=True)
class Profile:
    batch: Range
    query: Range
    cache: Range

    def to_dict(self) -> dict[str, Range]:
        return {"batch": self.batch, "query": self.query, "cache": self.cache}

    def outside(self, batch: int, query_len: int, cache_len: int) -> str | None:
        """Why the profile does not cover a call ("batch 4 is outside ... [1, 1]"), or None when it does."""
        calls = (("batch", batch, self.batch), ("query length", query_len, self.query))
        for axis, value, (lo, _, hi) in (*calls, ("cache length", cache_len, self.cache)):
            if not lo <= value <= hi:
                return f"{axis} {value} is outside the TensorRT engine's profile [{lo}, {hi}]"
        return None

    def check_call(self, batch: int, query_len: int, cache_len: int) -> None:
        """Raise a clear error for a call the engine cannot run (TensorRT's own message is cryptic)."""
        why = self.outside(batch, query_len, cache_len)
        if why:
            raise UserError(
                f"{why}; rebuild the engine with a wider profile (deploy --min_*/--max_* flags)"
            )


def _check_range(axis: str, values: Range, floor: int) -> None:
    lo, opt, hi = values
    if lo < floor:
        raise UserError(f"profile {axis}: min {lo} must be >= {floor}")
    if not lo <= opt <= hi:
        raise UserError(f"profile {axis}: need min <= opt <= max, got min {lo}, opt {opt}, max {hi}")


def resolve_profile(
    cfg: ProfileConfig,
    batch_size: int,
    seq_len: int,
    max_positions: int | None,
    cover: Iterable[tuple[int, int, int]] = (),
) -> Profile:
    """The profile for a deploy run; a clear error for an inconsistent or out-of-range one.

    ``max_positions`` is the longest sequence the model reads (:attr:`~gpt2.model.ModelConfig.max_positions`):
    with learned positions every call must fit it; with the others (None) the profile alone bounds the engine.

    ``cover`` holds further ``(batch, query_len, cache_len)`` calls the engine must run (the validation's,
    :func:`gpt2.deployment.validate.validation_calls`): unset maxima grow to include them, and set bounds
    that exclude one are refused here, before a build whose validation could only fail.
    """
    cover = sorted(set(cover), reverse=True)  # the largest first: the error names the one to lower
    batch_hi = max([batch_size, *(c[0] for c in cover)])
    query_hi = max([seq_len, *(c[1] for c in cover)])
    cache_hi = max([seq_len - 1, *(c[2] for c in cover)])
    profile = Profile(
        batch=(cfg.min_batch, cfg.opt_batch or batch_size, cfg.max_batch or batch_hi),
        query=(cfg.min_query, cfg.opt_query or seq_len, cfg.max_query or query_hi),
        cache=(cfg.min_cache, cfg.opt_cache, cache_hi if cfg.max_cache is None else cfg.max_cache),
    )
    _check_range("batch", profile.batch, 1)
    _check_range("query", profile.query, 1)
    _check_range("cache", profile.cache, 0)
    if max_positions is not None:
        _check_fits(profile, max_positions)
    if not profile.batch[0] <= batch_size <= profile.batch[2] or seq_len > profile.query[2]:
        raise UserError(
            f"batch_size {batch_size} / seq_len {seq_len} do not fit the profile (batch {profile.batch}, "
            f"query {profile.query}); the benchmark could not run on the engine"
        )
    for call in cover:
        why = profile.outside(*call)
        if why:
            raise UserError(
                f"the accuracy check after the TensorRT build runs (batch, query, cache) = {call}, but {why}; "
                "widen the profile (--min_*/--max_*) or lower --validate_batch_size, "
                "--validate_seq_len or --greedy_steps"
            )
    return profile


def _check_fits(profile: Profile, max_positions: int) -> None:
    """Refuse a profile with calls past ``max_positions`` (learned positions: the rows of their table)."""
    if profile.query[2] > max_positions:
        raise UserError(f"profile max_query {profile.query[2]} exceeds the model's max_seq_len {max_positions}")
    if profile.cache[2] + profile.query[0] > max_positions:
        raise UserError(
            f"profile max_cache {profile.cache[2]} + min_query {profile.query[0]} exceeds the model's "
            f"max_seq_len {max_positions}"
        )
    if profile.query[1] + profile.cache[1] > max_positions:
        raise UserError(
            f"profile opt_query {profile.query[1]} + opt_cache {profile.cache[1]} exceeds the model's "
            f"max_seq_len {max_positions}: the engine would be tuned for a call that cannot happen"
        )


def profile_shapes(profile: Profile, dims: GraphDims) -> dict[str, tuple[tuple[int, ...], ...]]:
    """``{input name: (min shape, opt shape, max shape)}`` for ``IOptimizationProfile.set_shape``."""
    per_level = [input_shapes(dims, profile.batch[i], profile.query[i], profile.cache[i]) for i in range(3)]
    return {name: tuple(level[name] for level in per_level) for name in per_level[0]}
