"""seq_copy's host half: what versweep needs to know of it, without torch.

Everything the host does with a workload reads this one value: the grid check (which
metrics a search may optimise), the trial names and the dry run's columns, the summary's
"best", the image requirements and the report's sections.
"""
from sweeps.workloads.base import HIGHER, LOWER, Metric, Workload


def image_reason(torch, image, config):
    """Why an image cannot run this config (None: nothing known stops it).

    ``torch`` is the image's torch version ("1.4.0"), or None for the host's own torch.
    nn.GRU and nn.LSTM are in every torch versweep runs, so nothing is refused here; a
    workload that needs, say, torch.compile would return a reason for torch < 2.0.
    """
    return None


WORKLOAD = Workload(
    name="seq_copy",
    description="a small LSTM or GRU learns to repeat a random sequence (an example plug-in)",
    metrics=(
        Metric("loss", "", LOWER, per_step=True, description="cross-entropy of the copy"),
        Metric("accuracy", "", HIGHER, per_step=True,
               description="fraction of symbols copied right"),
        Metric("ms_per_step_median", "ms", LOWER,
               description="median time of one training step, the first tenth dropped"),
    ),
    label_keys=("cell",),
    key_columns=("cell", "hidden_size", "seq_len", "steps"),
    best_metric="accuracy",
    best_per=("cell",),
    report_sections=("metrics",),
    image_reason=image_reason,
)
