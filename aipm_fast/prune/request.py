"""What a caller asks of the pruner, checked once: the method, the sparsity, the format."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FORMATS", "METHODS", "SEMI_STRUCTURED_SPARSITY", "PruneError", "PruneRequest"]

#: how the weights to remove are chosen
METHODS = ("magnitude", "snip", "force")
#: what pruning does to the model: zeros in dense kernels, 2:4 sparse kernels, a smaller dense model
FORMATS = ("masked", "2:4", "structured")
#: 2:4 keeps two of every four weights: half of each covered layer, by definition
SEMI_STRUCTURED_SPARSITY = 0.5


class PruneError(ValueError):
    """A pruning request that cannot be met; the message names the value and what would work."""


@dataclass(frozen=True)
class PruneRequest:
    """One pruning of a model.

    ``method``: magnitude (|w|), snip (|g w| from one batch, Lee et al. 2019) or force (FORCE's
    progressive skeletonization, de Jorge et al. 2021). ``sparsity``: the share of the prunable
    weights to remove, in [0, 1) (for ``structured``, the share of each pruned group's channels;
    for ``2:4``, 0.5 by definition). ``sparsity_format``: masked, 2:4 or structured.

    ``reapply_masks`` (masked only): True re-applies the masks before every forward pass
    (torch.nn.utils.prune), so that masked weights stay zero while the model trains; False
    writes the zeros once and leaves no hook, for inference (a hook's multiply would cost
    energy that dense kernels with zeros do not). ``force_steps``: FORCE's number of pruning
    iterations (its authors' default, 10).
    """

    method: str
    sparsity: float
    sparsity_format: str = "masked"
    reapply_masks: bool = True
    force_steps: int = 10

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PruneError(f"pruning method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.sparsity_format not in FORMATS:
            raise PruneError(f"sparsity format {self.sparsity_format!r}: choose one of {', '.join(FORMATS)}")
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s < 1:
            raise PruneError(f"sparsity {s!r}: must be a number in [0, 1) (0.9 removes 90% of the prunable weights)")
        if self.sparsity_format == "2:4" and s != SEMI_STRUCTURED_SPARSITY:
            raise PruneError(
                f"sparsity {s!r} with format 2:4: 2:4 keeps 2 of every 4 weights, so its sparsity is "
                f"{SEMI_STRUCTURED_SPARSITY} by definition; pass sparsity {SEMI_STRUCTURED_SPARSITY} "
                "(or choose format masked or structured)"
            )
        if self.sparsity_format == "2:4" and self.method == "force":
            raise PruneError(
                "method force with format 2:4: FORCE's progressive schedule removes weights globally, "
                "not two of every four; 2:4 chooses its pairs by magnitude or snip"
            )
        if self.sparsity_format == "structured" and self.method == "force":
            raise PruneError(
                "method force with format structured: FORCE scores single weights through a masked "
                "network; channels are scored by magnitude (the filter's L1 norm) or snip (its summed |g w|)"
            )
        if isinstance(self.force_steps, bool) or not isinstance(self.force_steps, int) or self.force_steps < 1:
            raise PruneError(f"force_steps {self.force_steps!r}: must be an integer >= 1")
