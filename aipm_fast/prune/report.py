"""What a pruning did to a model: its parameters, sparsity and FLOPs, before and after."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["NUMERIC_COLUMNS", "TEXT_COLUMNS", "PruneReport"]


@dataclass(frozen=True)
class PruneReport:
    """Counts of one pruning (counting.py says what a parameter and a FLOP are).

    FLOPs are per input sample. flops_executed is what the kernels do: all of flops_dense for
    the masked format (dense kernels multiply the zeros too), half of each 2:4 layer's, the
    smaller model's for structured. flops_effective counts only multiply-adds by nonzero weights,
    what an ideal sparse kernel would do. effective_sparsity is the share of the dense model's
    nonzero parameters that pruning removed or zeroed (biases, norms and embeddings stay; a bias
    initialised to zero was no parameter to remove); prunable_sparsity the share of the
    prunable weights that are removed or zero, the set the request's sparsity applies to (a
    weight initialised to zero, as torchvision's ViT head, counts there). params_nonzero counts
    every nonzero parameter.
    """

    method: str
    sparsity_format: str
    sparsity: float  # as requested
    score: str  # how weights or channels were ranked
    loss: str | None  # what loss gave the gradients (snip, force), None for magnitude
    params_dense: int
    params_total: int  # of the pruned model (smaller only for structured)
    params_nonzero: int
    effective_sparsity: float
    prunable_params_dense: int
    prunable_sparsity: float
    flops_dense: float
    flops_effective: float
    flops_executed: float
    semi_structured_flops_share: float  # 2:4: share of flops_dense in converted layers; NaN otherwise
    layers_pruned: int
    channels_removed: int  # structured; 0 otherwise
    left_dense: str  # what was not pruned, and why

    def as_row(self) -> dict:
        """The report as flat columns (prune_method, sparsity_format, ...) for run files and tables."""
        row = asdict(self)
        row["prune_method"] = row.pop("method")
        row["prune_score"] = row.pop("score")
        row["prune_loss"] = row.pop("loss")
        row["prune_left_dense"] = row.pop("left_dense")
        return row


#: numeric columns of as_row()
NUMERIC_COLUMNS = (
    "sparsity",
    "params_dense",
    "params_total",
    "params_nonzero",
    "effective_sparsity",
    "prunable_params_dense",
    "prunable_sparsity",
    "flops_dense",
    "flops_effective",
    "flops_executed",
    "semi_structured_flops_share",
    "layers_pruned",
    "channels_removed",
)
#: text columns of as_row()
TEXT_COLUMNS = ("prune_method", "sparsity_format", "prune_score", "prune_loss", "prune_left_dense")
