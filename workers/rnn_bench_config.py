"""Config schema of the `rnn_bench` workload (torch-free: the host validates grids with it).

The four benchmarks are those of seed 004 (stefbraun/rnn_benchmarks); their sizes
are in BENCHMARKS. Every size key defaults to null, meaning "the benchmark's own
size"; ``expand`` writes the benchmark's sizes into the config before validation,
so the resolved config (the env event, the MLflow params) shows what really ran.
"""
from .config import Field
from .memory import FLOAT_BYTES, INDEX_BYTES
from .protocol import BadConfig

# name -> the benchmark's own sizes, as in seed-facts.md §3.2/3.3. The input is
# time-major: (seq_len, batch_size, input_size).
BENCHMARKS = {
    "1x320-ce-short": {"batch_size": 64, "seq_len": 100, "input_size": 123, "hidden_size": 320,
                       "num_layers": 1, "bidirectional": False, "loss": "ce", "classes": 10},
    "1x320-ce-long": {"batch_size": 32, "seq_len": 1000, "input_size": 123, "hidden_size": 320,
                      "num_layers": 1, "bidirectional": False, "loss": "ce", "classes": 10},
    "4x320-ce-long": {"batch_size": 32, "seq_len": 1000, "input_size": 123, "hidden_size": 320,
                      "num_layers": 4, "bidirectional": True, "loss": "ce", "classes": 10},
    "4x320-ctc-long": {"batch_size": 32, "seq_len": 1000, "input_size": 123, "hidden_size": 320,
                       "num_layers": 4, "bidirectional": True, "loss": "ctc", "classes": 59},
}

# The size keys a user may override; null (or absent) takes the benchmark's value.
SIZE_KEYS = ("batch_size", "seq_len", "input_size", "hidden_size", "num_layers", "classes")

# The seed's CTC benchmark: 100 labels per sample ("labels per sample comes from WSJ-si84").
CTC_LABELS_PER_SAMPLE = 100

IMPLEMENTATIONS = ("basic", "fused", "cudnn", "compiled")
CELLS = ("lstm", "gru", "rnn")
# Gates per cell: the rows of its weight matrices are GATES x hidden_size.
GATES = {"lstm": 4, "gru": 3, "rnn": 1}

# The largest value each size or count takes: far beyond the seed's, so they only stop a
# typo before it hangs or kills a worker in an allocation; what a config needs in memory
# is checked on top of them (memory_estimate below, workers/memory.py).
MAX_SIZE = 1 << 20  # batch, sequence length, input features, classes, labels
MAX_HIDDEN = 65536
MAX_LAYERS = 64
MAX_BATCHES = 10 ** 7

SCHEMA = {
    # Which of seed 004's four benchmarks: its shapes, layers, direction and loss.
    "bench": Field("str", choices=sorted(BENCHMARKS)),
    # basic: hand-written cell (two linears + pointwise gates) in a Python loop;
    # fused: nn.LSTMCell/GRUCell/RNNCell in a Python loop; cudnn: nn.LSTM/GRU/RNN;
    # compiled: the hand-written cell through torch.compile (torch >= 2.0).
    "impl": Field("str", "cudnn", choices=IMPLEMENTATIONS),
    # The recurrent cell (seed 002 adds GRU and the plain tanh RNN to the seed's LSTM).
    "cell": Field("str", "lstm", choices=CELLS),
    # Batches run in all, warm-up included (the seed: 500).
    "batches": Field("int", 500, positive=True, maximum=MAX_BATCHES),
    # Leading batches left out of the statistics "to let the loop settle" (the seed: 100).
    "warmup_batches": Field("int", 100, minimum=0, maximum=MAX_BATCHES),
    # Sizes; null = the benchmark's own (see BENCHMARKS). Tiny values make CPU tests fast.
    "batch_size": Field("int", None, positive=True, nullable=True, maximum=MAX_SIZE),
    "seq_len": Field("int", None, positive=True, nullable=True, maximum=MAX_SIZE),
    "input_size": Field("int", None, positive=True, nullable=True, maximum=MAX_SIZE),
    "hidden_size": Field("int", None, positive=True, nullable=True, maximum=MAX_HIDDEN),
    "num_layers": Field("int", None, positive=True, nullable=True, maximum=MAX_LAYERS),
    # Output classes; null = the benchmark's (10 for CE, 59 with the CTC blank).
    "classes": Field("int", None, positive=True, nullable=True, maximum=MAX_SIZE),
    # CTC only: labels per sequence; null = the seed's 100.
    "labels_per_sample": Field("int", None, positive=True, nullable=True,
                               maximum=MAX_SIZE),
    # Adam's learning rate (the seed: 1e-3). Adam's first step is 10 x the rate, which
    # must fit in float32 (3.4e38) or torch stops with an overflow instead of a loss.
    "learning_rate": Field("float", 1e-3, positive=True, maximum=3e37),
    # A metric event (that chunk's median ms and the loss) every this many timed batches.
    "chunk_batches": Field("int", 50, positive=True, maximum=MAX_BATCHES),
    # Run the correctness gate (basic, fused and cudnn agree on shared weights) before timing.
    "check": Field("bool", True),
    # The gate's largest allowed absolute difference in outputs and gradients (fp32).
    "check_tolerance": Field("float", 1e-5, positive=True),
    # Put the timed per-batch seconds in the result event.
    "samples": Field("bool", True),
}


def expand(raw):
    """Fill the benchmark's own sizes into a raw config (values the user gave win).

    Leaves ``raw`` alone when ``bench`` is missing or unknown: validation then
    reports that with the nearest name.
    """
    bench = BENCHMARKS.get(raw.get("bench")) if isinstance(raw.get("bench"), str) else None
    if bench is None:
        return raw
    expanded = dict(raw)
    for key in SIZE_KEYS:
        if expanded.get(key) is None:
            expanded[key] = bench[key]
    if bench["loss"] == "ctc" and expanded.get("labels_per_sample") is None:
        expanded["labels_per_sample"] = CTC_LABELS_PER_SAMPLE
    return expanded


# The keys that drive each part of memory_estimate (named when a config cannot fit).
MEMORY_KEYS = {"parameters": ("hidden_size", "num_layers", "input_size", "classes"),
               "activations": ("batch_size", "seq_len", "hidden_size", "num_layers"),
               "data": ("batch_size", "seq_len", "input_size")}


def memory_estimate(config):
    """What a resolved config holds at its peak, as (part, bytes) pairs (workers/memory.py).

    parameters: every layer's and direction's GATES*H x (input + H) weights and two biases,
    and the output layer, each with its gradient and Adam's two moments; the correctness gate
    (``check``) holds up to three more copies of the weights while it runs.
    activations: what the backward pass keeps per time step, layer and direction (the
    gates' pre-activations and activations, the state), and the output's logits.
    data: the fixed batch (inputs, labels).
    """
    bench = BENCHMARKS[config["bench"]]
    hidden, layers = config["hidden_size"], config["num_layers"]
    steps, batch = config["seq_len"], config["batch_size"]
    directions = 2 if bench["bidirectional"] else 1
    gates = GATES[config["cell"]]
    parameters = 0
    features = config["input_size"]
    for _ in range(layers):
        parameters += directions * gates * hidden * (features + hidden + 2)
        features = hidden * directions
    parameters += features * config["classes"]
    copies = 4 + (3 if config["check"] else 0)
    outputs = (steps if bench["loss"] == "ctc" else 1) * batch * config["classes"]
    activations = steps * batch * layers * directions * hidden * (2 * gates + 2) + 3 * outputs
    labels = batch * (config["labels_per_sample"] or 1)
    data = steps * batch * config["input_size"] * FLOAT_BYTES + labels * INDEX_BYTES
    return [("parameters", copies * parameters * FLOAT_BYTES),
            ("activations", activations * FLOAT_BYTES),
            ("data", data)]


def ctc_lengths(seq_len, batch_size):
    """The seed's CTC sequence lengths: int(linspace(seq_len/2, seq_len, batch_size)).

    Ascending; 500, 516, 532, ..., 983, 1000 at the full size. Computed as numpy
    does (start + i*step, the end point set exactly) so the truncation to int
    gives the seed's values without numpy.
    """
    start = seq_len / 2.0
    if batch_size == 1:
        return [int(start)]
    step = (seq_len - start) / (batch_size - 1)
    lengths = [int(start + i * step) for i in range(batch_size - 1)]
    return lengths + [int(seq_len)]


def check(config):
    """Cross-key checks the schema cannot express; raises BadConfig with one line."""
    if config["warmup_batches"] >= config["batches"]:
        raise BadConfig("config key 'warmup_batches' is %d but 'batches' is %d; warm-up batches "
                        "are dropped, so warmup_batches must be less than batches"
                        % (config["warmup_batches"], config["batches"]))
    bench = BENCHMARKS[config["bench"]]
    if bench["loss"] == "ce":
        if config["labels_per_sample"] is not None:
            raise BadConfig("config key 'labels_per_sample' applies only to the CTC benchmark "
                            "(4x320-ctc-long); leave it out for '%s'" % config["bench"])
        # CE labels are randint(0, classes-1): at least one class must be drawable.
        if config["classes"] < 2:
            raise BadConfig("config key 'classes' is %d; the CE benchmarks need at least 2 "
                            "(labels are drawn from 0..classes-2, as in the seed)"
                            % config["classes"])
        return
    # CTC: class 0 is the blank and labels are drawn from 1..classes-2.
    if config["classes"] < 3:
        raise BadConfig("config key 'classes' is %d; the CTC benchmark needs at least 3 "
                        "(blank 0, labels from 1..classes-2, as in the seed)" % config["classes"])
    shortest = min(ctc_lengths(config["seq_len"], config["batch_size"]))
    labels = config["labels_per_sample"]
    # An alignment of L labels needs at most 2L-1 frames (a blank between every
    # repeated pair); asking for no more keeps every random label draw feasible.
    if 2 * labels - 1 > shortest:
        raise BadConfig("config key 'labels_per_sample' is %d but the shortest sequence has %d "
                        "steps (lengths run from seq_len/2 to seq_len); CTC needs up to 2*labels-1 "
                        "steps, so use at most %d labels or a longer seq_len"
                        % (labels, shortest, (shortest + 1) // 2))

