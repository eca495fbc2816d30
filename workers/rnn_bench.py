"""The `rnn_bench` workload: seed 004's LSTM speed benchmarks, timed batch by batch.

    toy batch -> reference weights -> correctness gate -> timed loop -> result

The seed's method (seed-facts.md §3.1): one fixed random batch fed every time,
Adam, each batch timed between two device synchronisations with the host->device
copy of the input inside and the loss read-back outside, the first batches
dropped as warm-up, and an abort on a non-finite loss. Before any timing, the
implementations that claim to compute the same function must agree on shared
weights, or the run ends with an error instead of a time.
"""
import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .protocol import Diverged, Mismatch, Unsupported
from .rnn_bench_config import BENCHMARKS, ctc_lengths
from .rnn_models import build_model, copy_weights, count_parameters
from .runtime import clock, synchronize
from .stats import percentile, summarize_ms

# The gate runs on a slice of the batch so it stays cheap at full size (1000 steps,
# 4 bidirectional layers): at most this many steps and sequences.
GATE_MAX_STEPS = 64
GATE_MAX_SEQUENCES = 4

NO_CTC_LOSS = "nn.CTCLoss needs torch>=1.0 and warpctc_pytorch is not installed"

# The implementations the gate compares; the first is the reference.
GATE_IMPLEMENTATIONS = ("cudnn", "fused", "basic")


def benchmark_shape(config):
    """The sizes, direction and loss of the configured benchmark (sizes already expanded)."""
    bench = BENCHMARKS[config["bench"]]
    shape = dict((key, config[key]) for key in
                 ("batch_size", "seq_len", "input_size", "hidden_size", "num_layers", "classes"))
    shape["bidirectional"] = bench["bidirectional"]
    shape["loss"] = bench["loss"]
    shape["labels_per_sample"] = config["labels_per_sample"]
    return shape


def choose_ctc_loss(has_native_ctc, has_warpctc):
    """Which CTC loss to use, from what this torch offers; Unsupported when neither."""
    if has_native_ctc:
        return "nn.CTCLoss"
    if has_warpctc:
        return "warpctc_pytorch"
    raise Unsupported(NO_CTC_LOSS)


def warpctc_installed():
    """Whether the SeanNaren warp-ctc binding (the seed's CTC loss) imports."""
    try:
        import warpctc_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def ctc_loss_here():
    """The CTC loss this process would use (Unsupported when none)."""
    has_native_ctc = hasattr(nn, "CTCLoss")  # torch >= 1.0
    # warp-ctc is imported only when it would be used: it loads its own CUDA library.
    return choose_ctc_loss(has_native_ctc, not has_native_ctc and warpctc_installed())


def env_extras(config):
    """The env event names the CTC loss in use, so a report can tell warp-ctc runs apart."""
    if BENCHMARKS[config["bench"]]["loss"] != "ctc":
        return {}
    try:
        return {"ctc_loss": ctc_loss_here()}
    except Unsupported:
        return {"ctc_loss": None}  # run() reports the reason


def _randint(low, high, count):
    """``count`` integers in [low, high), int64."""
    if hasattr(torch, "randint"):
        return torch.randint(low, high, (count,), dtype=torch.long)
    return (torch.rand(count) * (high - low)).long() + low


def make_toy_batch(shape):
    """The fixed toy batch, on the CPU, from torch's generator (seeded by the config).

    inputs  (T, N, C) float32 U(-1, 1), time-major
    CE:     targets (N,) in 0..classes-2 (the seed never draws the top class);
            lengths None (every sequence is full length)
    CTC:    lengths int(linspace(T/2, T, N)) ascending; targets flat (N * labels,)
            in 1..classes-2 with blank 0; target_lengths labels_per_sample each
    """
    steps, batch_size = shape["seq_len"], shape["batch_size"]
    inputs = torch.rand(steps, batch_size, shape["input_size"]) * 2 - 1
    if shape["loss"] == "ce":
        targets = _randint(0, shape["classes"] - 1, batch_size)
        return {"inputs": inputs, "targets": targets, "lengths": None, "target_lengths": None}
    labels = shape["labels_per_sample"]
    targets = _randint(1, shape["classes"] - 1, batch_size * labels)
    return {"inputs": inputs, "targets": targets, "lengths": ctc_lengths(steps, batch_size),
            "target_lengths": [labels] * batch_size}


class Criterion(object):
    """The benchmark's loss; knows where and in which type it wants the targets.

    CTC takes nn.CTCLoss where torch has it, else warp-ctc (what choose_ctc_loss
    decides; each use sits behind its own feature check so old torch never reaches it).
    """

    def __init__(self, loss, batch, device):
        self.target_device = device
        self.target_dtype = torch.long
        if loss == "ce":
            self.compute = nn.CrossEntropyLoss()
            return
        input_lengths = torch.tensor(batch["lengths"], dtype=torch.long)
        target_lengths = torch.tensor(batch["target_lengths"], dtype=torch.long)
        if hasattr(nn, "CTCLoss"):  # torch >= 1.0
            # Summed over the batch like warp-ctc's default, which the seed used.
            ctc = nn.CTCLoss(blank=0, reduction="sum")

            def compute(output, targets):
                # (T', N, classes) logits -> log-probabilities over classes
                return ctc(F.log_softmax(output, 2), targets, input_lengths, target_lengths)

            self.compute = compute
            return
        try:
            from warpctc_pytorch import CTCLoss as WarpCTCLoss
        except ImportError:
            raise Unsupported(NO_CTC_LOSS) from None
        warp_ctc = WarpCTCLoss()
        # warp-ctc takes int32 labels and lengths on the CPU and applies the softmax itself.
        self.target_device = torch.device("cpu")
        self.target_dtype = torch.int32
        input_lengths, target_lengths = input_lengths.int(), target_lengths.int()

        def compute(output, targets):
            return warp_ctc(output, targets, input_lengths, target_lengths)

        self.compute = compute

    def __call__(self, output, targets):
        return self.compute(output, targets)


def train_step(model, optimizer, criterion, batch, device):
    """One batch: host->device copy, zero_grad, forward, loss, backward, Adam step."""
    # The copies sit inside the timed region, as in the seed.
    inputs = batch["inputs"].to(device)
    targets = batch["targets"].to(criterion.target_device)
    optimizer.zero_grad()
    output = model(inputs, batch["lengths"])
    loss = criterion(output, targets)
    loss.backward()
    optimizer.step()
    return loss


def timed_loop(model, optimizer, criterion, batch, device, config, emitter):
    """Run ``batches`` steps, timing each; return (timed seconds, every loss).

    Warm-up batches run and are checked for a finite loss but are not timed
    results. Every ``chunk_batches`` timed batches a metric event carries that
    chunk's median ms and the latest loss, at step = the batch index.
    """
    warmup = config["warmup_batches"]
    seconds, losses, chunk = [], [], []
    for index in range(config["batches"]):
        synchronize(device)  # queued work must not leak into this batch's time
        start = clock()
        loss = train_step(model, optimizer, criterion, batch, device)
        synchronize(device)  # the batch is done on the device before the clock is read
        elapsed = clock() - start
        # Read back outside the timed region (the seed did too).
        loss_value = float(loss.item())
        if not math.isfinite(loss_value):
            raise Diverged("the loss is %s at batch %d (learning_rate %g); the benchmark "
                           "stops on a non-finite loss" % (loss_value, index,
                                                           config["learning_rate"]))
        losses.append(loss_value)
        if index < warmup:
            continue
        seconds.append(elapsed)
        chunk.append(elapsed)
        if len(chunk) == config["chunk_batches"] or index == config["batches"] - 1:
            chunk_ms = sorted(value * 1000.0 for value in chunk)
            emitter.metric(index, {"chunk_ms_per_batch_median": percentile(chunk_ms, 50),
                                   "loss": loss_value})
            chunk = []
    return seconds, losses


def gate_slice(batch, max_steps, max_sequences):
    """A small batch for the gate: the first steps of a few sequences spread over the batch.

    (T, N, C) -> (T', N', C) with T' = min(T, max_steps), N' = min(N, max_sequences).
    Lengths shrink in proportion, so a variable-length batch stays variable.
    """
    inputs = batch["inputs"]
    steps, batch_size = inputs.size(0), inputs.size(1)
    gate_steps = min(steps, max_steps)
    count = min(batch_size, max_sequences)
    if count == 1:
        picks = [0]
    else:
        picks = [int(round(i * (batch_size - 1) / float(count - 1))) for i in range(count)]
    # (T, N, C) -> (T', N', C)
    sliced = inputs[:gate_steps].index_select(1, torch.tensor(picks, dtype=torch.long))
    lengths = None
    if batch["lengths"] is not None:
        # ceil(length * T' / T), at least 1; the longest sequence keeps all T' steps.
        lengths = [max(1, -(-batch["lengths"][n] * gate_steps // steps)) for n in picks]
    return sliced, lengths


def _valid_frames(output, lengths):
    """1 on frames inside each sequence, 0 on padding; shaped to multiply ``output``."""
    if lengths is None:
        return torch.ones(1, device=output.device)
    steps, batch_size = output.size(0), output.size(1)
    time = torch.arange(steps, dtype=torch.long).view(steps, 1)  # (T', 1)
    length = torch.tensor(lengths, dtype=torch.long).view(1, batch_size)  # (1, N)
    # (T', N) -> (T', N, 1), broadcast over classes
    return (time < length).float().view(steps, batch_size, 1).to(output.device)


@contextlib.contextmanager
def tf32_disabled():
    """Plain fp32 inside: TF32 would make cuDNN and the loops differ by far more than 1e-5."""
    backends_cuda = getattr(torch.backends, "cuda", None)
    holders = [torch.backends.cudnn, getattr(backends_cuda, "matmul", None)]
    saved = [(holder, holder.allow_tf32) for holder in holders
             if holder is not None and hasattr(holder, "allow_tf32")]  # torch >= 1.7
    for holder, _ in saved:
        holder.allow_tf32 = False
    try:
        yield
    finally:
        for holder, value in saved:
            holder.allow_tf32 = value


def check_agreement(models, inputs, lengths, tolerance):
    """The correctness gate: (largest absolute, largest scaled difference), or Mismatch.

    ``models`` is a list of (name, BenchNet) holding the same weights on the
    inputs' device; the first is the reference. Each runs forward on ``inputs``
    (T', N', C); the loss is a fixed random weighting of its valid outputs, so
    every output feeds every parameter's gradient differently. The outputs and
    every parameter's gradient are compared with the reference's.

    A tensor's difference is scaled by max(1, its largest reference magnitude):
    absolute for values up to 1, relative for larger ones (summed gradients reach
    ~10), so fp32 rounding cannot fail the gate where the numbers are merely big.
    Mismatch when the largest scaled difference exceeds ``tolerance``.
    """
    runs = []
    probe = None
    with tf32_disabled():
        for name, model in models:
            model.zero_grad()
            output = model(inputs, lengths)
            output = output * _valid_frames(output, lengths)  # padding frames do not count
            if probe is None:
                probe = (torch.rand(output.size()) * 2 - 1).to(output.device)
            (output * probe).sum().backward()
            gradients = dict((key, parameter.grad.detach().clone())
                             for key, parameter in model.named_shared_parameters())
            runs.append((name, output.detach(), gradients))
    reference_name, reference_output, reference_gradients = runs[0]
    largest_absolute, largest_scaled, where = 0.0, 0.0, None
    for name, output, gradients in runs[1:]:
        pairs = [("output", output, reference_output)]
        pairs.extend(("gradient of " + key, gradients[key], reference_gradients[key])
                     for key in sorted(gradients))
        for what, value, reference in pairs:
            absolute = float((value - reference).abs().max().item())
            scaled = absolute / max(1.0, float(reference.abs().max().item()))
            largest_absolute = max(largest_absolute, absolute)
            # "not <=" also takes a NaN, and a NaN, once taken, is kept.
            if not scaled <= largest_scaled and not math.isnan(largest_scaled):
                largest_scaled, where = scaled, (name, what)
    if not largest_scaled <= tolerance:
        raise Mismatch("implementations disagree: %s and %s differ by %.3g in the %s "
                       "(tolerance %g)" % (where[0], reference_name, largest_scaled, where[1],
                                           tolerance))
    return largest_absolute, largest_scaled


def build_for(impl, shape):
    """A BenchNet of ``impl`` for the configured benchmark, on the CPU."""
    return build_model(impl, cell=shape["cell"], input_size=shape["input_size"],
                       hidden_size=shape["hidden_size"], num_layers=shape["num_layers"],
                       bidirectional=shape["bidirectional"], classes=shape["classes"],
                       every_step=shape["loss"] == "ctc")


def loaded_copy(impl, shape, reference, device):
    """A fresh ``impl`` network holding ``reference``'s weights, on ``device``."""
    model = build_for(impl, shape)
    copy_weights(reference, model)
    return model.to(device)


def run(config, device, emitter):
    shape = benchmark_shape(config)
    shape["cell"] = config["cell"]
    if shape["loss"] == "ctc":
        ctc_loss_here()  # Unsupported before any work when this torch has no CTC loss

    # Drawn in this order from the seeded generator: the batch, then the weights.
    batch = make_toy_batch(shape)
    # One set of weights for every implementation, so their losses can be compared too.
    reference = build_for("cudnn", shape)
    model = loaded_copy(config["impl"], shape, reference, device)  # Unsupported: no compile

    metrics = {"parameters": count_parameters(model)}
    if config["check"]:
        names = list(GATE_IMPLEMENTATIONS)
        if config["impl"] not in names:
            names.append(config["impl"])
        gate_models = [(name, loaded_copy(name, shape, reference, device)) for name in names]
        inputs, lengths = gate_slice(batch, GATE_MAX_STEPS, GATE_MAX_SEQUENCES)
        absolute, scaled = check_agreement(gate_models, inputs.to(device), lengths,
                                           config["check_tolerance"])
        metrics["check_max_abs_diff"] = absolute
        metrics["check_max_scaled_diff"] = scaled
        metrics["check_steps"] = inputs.size(0)
        metrics["check_sequences"] = inputs.size(1)
        del gate_models

    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    criterion = Criterion(shape["loss"], batch, device)
    batch["targets"] = batch["targets"].to(criterion.target_dtype)
    seconds, losses = timed_loop(model, optimizer, criterion, batch, device, config, emitter)

    metrics.update(summarize_ms(seconds, shape["batch_size"]))
    metrics["loss_first"] = losses[0]  # batch 0, a warm-up batch: the untrained loss
    metrics["loss_last"] = losses[-1]
    emitter.result(metrics, seconds if config["samples"] else None)
