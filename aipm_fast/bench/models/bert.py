"""BERT (bert-base-uncased's architecture) with a sequence-classification head, built with
transformers (extra ``text``). Sizes are sequence lengths in tokens, 2 to 512."""

from __future__ import annotations

import torch
from torch import nn

from aipm_fast.bench.models.base import ModelSpec, require

__all__ = ["SPECS", "bert_input_ids"]

# bert-base-uncased token ids
BERT_CLS_ID = 101
BERT_SEP_ID = 102
BERT_YES_ID = 2748  # "yes"
BERT_FIRST_WORD_ID = 1996  # "the": ids below are special tokens and unused slots
BERT_VOCAB = 30522
BERT_LABELS = 2  # BertConfig's default num_labels: the sequence-classification head's outputs


def _build_bert(spec: ModelSpec, size: int) -> nn.Module:
    transformers = require(spec)
    # BertConfig()'s defaults are bert-base-uncased's architecture
    # (vocab 30522, 12 layers, hidden 768, 12 heads, 512 positions).
    return transformers.BertForSequenceClassification(transformers.BertConfig())


def bert_input_ids(n_tokens: int) -> list[int]:
    """Token ids of a sequence of ``n_tokens``: [CLS], "yes" * (n - 2), [SEP]."""
    if n_tokens < 2:
        raise ValueError(f"bert: a sequence needs at least 2 tokens ([CLS] and [SEP]), got {n_tokens}")
    return [BERT_CLS_ID] + [BERT_YES_ID] * (n_tokens - 2) + [BERT_SEP_ID]


def _token_inputs(spec: ModelSpec, size: int, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
    """``{"input_ids", "attention_mask"}`` int64 tensors of shape ``(batch_size, size)``: [CLS],
    ``size - 2`` times "yes", [SEP], all attended (``dtype`` does not apply to integer tensors)."""
    row = torch.tensor(bert_input_ids(size), dtype=torch.int64, device=device)
    input_ids = row.unsqueeze(0).repeat(batch_size, 1)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _token_samples(spec: ModelSpec, size: int, n: int, device: torch.device, dtype: torch.dtype):
    """n synthetic training sequences of ``size`` token ids: [CLS], random word pieces, [SEP]
    (seeded, so that every run trains on the same sequences)."""
    bert_input_ids(size)  # the same length check as the inference inputs
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    ids = torch.randint(BERT_FIRST_WORD_ID, BERT_VOCAB, (n, size), generator=generator, device=device)
    ids[:, 0] = BERT_CLS_ID
    ids[:, -1] = BERT_SEP_ID
    return ids


SPECS = (
    ModelSpec(
        name="bert",
        input_kind="tokens",
        native_size=512,
        default_batch_size=128,
        description=(
            "bert-base-uncased architecture (12 layers, hidden 768) with a "
            "sequence-classification head (transformers), 109 M parameters"
        ),
        requires="text",
        min_size=2,
        max_size=512,
        builder=_build_bert,
        inputs=_token_inputs,
        classes=BERT_LABELS,
        samples=_token_samples,
    ),
)
