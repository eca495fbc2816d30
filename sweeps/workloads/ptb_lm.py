"""ptb_lm, the host half: the PTB word-level LSTM language model (workers/ptb_lm.py).

Seed 000/001's model (embedding, dropout, multi-layer nn.LSTM, dropout, linear) with the
TensorFlow tutorial's presets and Kuchaiev's PyTorch port; perplexity per epoch, test
perplexity at the end. Judged by test perplexity; reported as a language model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sweeps.workloads.base import HIGHER, LOWER, NEITHER, Metric, Workload
from workers.ptb_lm_config import DIVERGED_FACTOR


def _cudnn(config: Mapping[str, Any]) -> str | None:
    return "ptb_lm's nn.LSTM runs on cuDNN"


PERPLEXITIES = ("train_perplexity", "valid_perplexity", "test_perplexity",
                "best_valid_perplexity")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _diverged(metrics: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """A perplexity that is not finite or beyond the bound the worker sent (or 10 x vocab)."""
    bound = _number(metrics.get("perplexity_bound"))
    vocab = _number(metrics.get("vocab_size"))
    if bound is None and vocab is not None:
        bound = DIVERGED_FACTOR * vocab
    for name in PERPLEXITIES:
        value = _number(metrics.get(name))
        if value is None:
            continue
        if not math.isfinite(value):
            return f"{name} is {value}"
        if bound is not None and value > bound:
            return (f"{name} {value:.4g} is beyond the bound {bound:.4g} ({DIVERGED_FACTOR} x "
                    "the vocabulary: worse than guessing)")
    return None


WORKLOAD = Workload(
    name="ptb_lm",
    description="the PTB word-level LSTM language model of the 2017 'PyTorch vs TensorFlow' "
                "post (presets small, medium, large, kuchaiev2017)",
    metrics=(
        Metric("train_perplexity", "", LOWER, per_step=True,
               description="exp(mean cross-entropy) over the epoch's training batches"),
        Metric("valid_perplexity", "", LOWER, per_step=True,
               description="perplexity on the validation split after the epoch"),
        Metric("words_per_second", "words/s", HIGHER, per_step=True,
               description="training words per second (the result: mean over epochs)"),
        Metric("learning_rate", "", NEITHER, per_step=True, in_result=False,
               description="the learning rate of the epoch"),
        Metric("epoch_seconds", "s", LOWER, per_step=True, in_result=False,
               description="wall time of the epoch's training and validation passes"),
        Metric("test_perplexity", "", LOWER,
               description="perplexity on the test split after the last epoch"),
        Metric("best_valid_perplexity", "", LOWER,
               description="the lowest validation perplexity of any epoch"),
        Metric("epochs_run", "", NEITHER, description="epochs trained"),
        Metric("vocab_size", "", NEITHER, description="words in the corpus's vocabulary"),
        Metric("perplexity_bound", "", NEITHER, per_step=True,
               description=f"the perplexity beyond which the trial counts as diverged "
                           f"({DIVERGED_FACTOR} x the vocabulary)"),
    ),
    label_keys=("preset",),
    key_columns=("preset", "hidden_size", "num_layers", "max_epochs", "learning_rate",
                 "keep_prob"),
    best_metric="test_perplexity",
    report_sections=("language_model",),
    cudnn_reason=_cudnn,
    diverged_reason=_diverged,
)
