"""Config schema of the `ptb_lm` workload (torch-free: the host validates grids with it).

A config names a preset and may override any of its keys:

    {"preset": "medium", "max_epochs": 2, "learning_rate": 0.5}

``expand`` fills in the preset before validation; the user's keys win. Every
preset number comes from the seed documents (docs: reference/seed-facts.md):
small/medium/large are the TensorFlow PTB tutorial's SmallConfig, MediumConfig
and LargeConfig (seed-facts section 2); kuchaiev2017 is the PyTorch port of the
large model in deeplearningathome/pytorch-language-model (section 1.3).

The learning-rate schedules live here too, as plain arithmetic on the config,
so the host can show them without torch.
"""
import difflib

from .config import Field
from .memory import FLOAT_BYTES, INDEX_BYTES
from .protocol import BadConfig

# The keys a preset sets. The user may override each of them.
PRESETS = {
    # TF tutorial SmallConfig: the non-regularised 2x200 model (no dropout).
    "small": {
        "hidden_size": 200, "num_layers": 2, "num_steps": 20, "batch_size": 20,
        "epochs": 13, "learning_rate": 1.0, "lr_decay": 0.5, "lr_flat_epochs": 4,
        "lr_schedule": "tf", "keep_prob": 1.0, "clip_norm": 5.0, "init_scale": 0.1,
        "init": "tf", "loss": "sum_steps", "test_batch_size": 1, "test_num_steps": 1,
    },
    # TF tutorial MediumConfig (note: lr_decay 0.8, where Zaremba et al. wrote 1/1.2).
    "medium": {
        "hidden_size": 650, "num_layers": 2, "num_steps": 35, "batch_size": 20,
        "epochs": 39, "learning_rate": 1.0, "lr_decay": 0.8, "lr_flat_epochs": 6,
        "lr_schedule": "tf", "keep_prob": 0.5, "clip_norm": 5.0, "init_scale": 0.05,
        "init": "tf", "loss": "sum_steps", "test_batch_size": 1, "test_num_steps": 1,
    },
    # TF tutorial LargeConfig.
    "large": {
        "hidden_size": 1500, "num_layers": 2, "num_steps": 35, "batch_size": 20,
        "epochs": 55, "learning_rate": 1.0, "lr_decay": 1 / 1.15, "lr_flat_epochs": 14,
        "lr_schedule": "tf", "keep_prob": 0.35, "clip_norm": 10.0, "init_scale": 0.04,
        "init": "tf", "loss": "sum_steps", "test_batch_size": 1, "test_num_steps": 1,
    },
    # Kuchaiev's 2017 PyTorch port (ptb-lm.py defaults and its hard-coded constants):
    # lr 20 with a mean loss and clip 0.25 stand in for TF's lr 1 with a summed loss and
    # clip 10; the decay compounds (lr_decay_base 1/1.15, m_flat_lr 14); the test pass
    # runs with batch 1 but keeps num_steps 35; init_range 0.1 for embedding and softmax.
    "kuchaiev2017": {
        "hidden_size": 1500, "num_layers": 2, "num_steps": 35, "batch_size": 20,
        "epochs": 40, "learning_rate": 20.0, "lr_decay": 1 / 1.15, "lr_flat_epochs": 14,
        "lr_schedule": "compound", "keep_prob": 0.35, "clip_norm": 0.25, "init_scale": 0.1,
        "init": "kuchaiev2017", "loss": "mean", "test_batch_size": 1, "test_num_steps": 35,
    },
}

DEFAULT_PRESET = "small"

# What the preset's authors published for it on the real PTB, for the env event
# (seed-facts 1.2 and section 2). A run on other data or other settings will differ.
PUBLISHED_PERPLEXITY = {
    "small": {"train": 37.99, "valid": 121.39, "test": 115.91,
              "source": "tensorflow/models ptb_word_lm.py docstring"},
    "medium": {"train": 48.45, "valid": 86.16, "test": 82.07,
               "source": "tensorflow/models ptb_word_lm.py docstring"},
    "large": {"train": 37.87, "valid": 82.62, "test": 78.29,
              "source": "tensorflow/models ptb_word_lm.py docstring"},
    "kuchaiev2017": {"test": 78.04,
                     "source": "deeplearningathome/pytorch-language-model README (~78.04)"},
}

# A language model whose perplexity is this many times the vocabulary (ten times worse than
# guessing every word uniformly) is no model: the trial has diverged. Real models end far
# below the vocabulary (PTB: 10,000 words, perplexities of 80 to 150); an untrained one
# starts near it. The worker stops on it (ptb_lm.py), the host checks it too
# (sweeps/workloads/ptb_lm.py).
DIVERGED_FACTOR = 10

_SMALL = PRESETS[DEFAULT_PRESET]

# The largest value each size or count takes. Far beyond any published model, so they only
# stop a typo (an extra 0, a seed pasted into a size) before it hangs a dry run or makes a
# worker die in an allocation; what a config needs in memory is checked on top of them
# (memory_estimate below, workers/memory.py).
MAX_SIZE = 65536  # hidden (and embedding) units
MAX_LAYERS = 64
MAX_STEPS = 100000  # BPTT length
MAX_BATCH = 1000000
MAX_EPOCHS = 10000
MAX_COUNT = 10 ** 9  # steps per epoch or evaluation
MAX_SYNTHETIC_WORDS = 10 ** 8  # PTB has about 1.04 million; the generator is pure Python
MAX_SYNTHETIC_VOCAB = 10 ** 6

# The real PTB (ptb.*.txt of a data_dir): its vocabulary and tokens (<eos> included), for
# the memory estimate without reading the files.
PTB_VOCAB = 10000
PTB_WORDS = 1036580
# Bytes per word the pure-Python synthetic generator holds at its peak (the sentences as
# lists, the texts, the ids): measured at 73 with CPython 3.11, so 64 stays below it.
SYNTHETIC_BYTES_PER_WORD = 64

SCHEMA = {
    # Which published configuration to start from; every other key overrides it.
    "preset": Field("str", DEFAULT_PRESET, choices=sorted(PRESETS)),
    # A directory with ptb.train.txt, ptb.valid.txt, ptb.test.txt; null: the synthetic corpus.
    "data_dir": Field("str", None, nullable=True),
    # LSTM hidden size, also the embedding size (as in both seeds).
    "hidden_size": Field("int", _SMALL["hidden_size"], positive=True, maximum=MAX_SIZE),
    "num_layers": Field("int", _SMALL["num_layers"], positive=True, maximum=MAX_LAYERS),
    # Truncated-BPTT length: tokens per row per training step.
    "num_steps": Field("int", _SMALL["num_steps"], positive=True, maximum=MAX_STEPS),
    "batch_size": Field("int", _SMALL["batch_size"], positive=True, maximum=MAX_BATCH),
    # The preset's full number of epochs (the schedule is defined over these).
    "epochs": Field("int", _SMALL["epochs"], positive=True, maximum=MAX_EPOCHS),
    "learning_rate": Field("float", _SMALL["learning_rate"], positive=True),
    "lr_decay": Field("float", _SMALL["lr_decay"], positive=True, maximum=1.0),
    # Epochs trained at the initial learning rate before the decay starts.
    "lr_flat_epochs": Field("int", _SMALL["lr_flat_epochs"], minimum=0, maximum=MAX_EPOCHS),
    # "tf": lr0 * decay ** max(epoch + 1 - flat, 0); "compound": the port's running product.
    "lr_schedule": Field("str", _SMALL["lr_schedule"], choices=("tf", "compound")),
    # Dropout keep probability (dropout p = 1 - keep_prob); 1.0 turns dropout off.
    "keep_prob": Field("float", _SMALL["keep_prob"], positive=True, maximum=1.0),
    # Global gradient-norm clip.
    "clip_norm": Field("float", _SMALL["clip_norm"], positive=True),
    "init_scale": Field("float", _SMALL["init_scale"], positive=True),
    # "tf": every parameter U(-init_scale, init_scale); "kuchaiev2017": embedding and
    # softmax weight U(-init_scale, init_scale), softmax bias 0, LSTM at torch's default.
    "init": Field("str", _SMALL["init"], choices=("tf", "kuchaiev2017")),
    # "sum_steps": TF's cost (batch mean summed over num_steps); "mean": mean over B*T tokens.
    "loss": Field("str", _SMALL["loss"], choices=("sum_steps", "mean")),
    # The test pass's batch layout (TF: 1 x 1; the port: 1 x 35).
    "test_batch_size": Field("int", _SMALL["test_batch_size"], positive=True,
                             maximum=MAX_BATCH),
    "test_num_steps": Field("int", _SMALL["test_num_steps"], positive=True, maximum=MAX_STEPS),
    # Limits for quick runs; null = the full run.
    "max_epochs": Field("int", None, nullable=True, positive=True, maximum=MAX_EPOCHS),
    "max_steps_per_epoch": Field("int", None, nullable=True, positive=True, maximum=MAX_COUNT),
    "max_eval_steps": Field("int", None, nullable=True, positive=True, maximum=MAX_COUNT),
    # Size of the synthetic corpus (used when data_dir is null): tokens over all three
    # splits including <eos>, and the number of word types including <eos> and <unk>.
    "synthetic_words": Field("int", 60000, positive=True, maximum=MAX_SYNTHETIC_WORDS),
    "synthetic_vocab": Field("int", 1000, minimum=3, maximum=MAX_SYNTHETIC_VOCAB),
}


def expand(raw):
    """Fill in the preset's keys; keys the user gave win. Unknown preset -> BadConfig."""
    preset = raw.get("preset", DEFAULT_PRESET)
    if not isinstance(preset, str):
        return raw  # resolve() reports the wrong type with the usual message
    if preset not in PRESETS:
        near = difflib.get_close_matches(preset, list(PRESETS), n=1, cutoff=0.4)
        hint = " (did you mean '%s'?)" % near[0] if near else ""
        raise BadConfig("config key 'preset' is '%s'%s; choose one of: %s"
                        % (preset, hint, ", ".join(sorted(PRESETS))))
    expanded = dict(PRESETS[preset])
    expanded.update(raw)
    expanded["preset"] = preset
    return expanded


def check(config):
    """Cross-key checks on the resolved config."""
    if config["data_dir"] is not None and not config["data_dir"].strip():
        raise BadConfig("config key 'data_dir' is an empty string; give a directory or null "
                        "for the synthetic corpus")


# The keys that drive each part of memory_estimate (named when a config cannot fit).
MEMORY_KEYS = {"parameters": ("hidden_size", "num_layers", "synthetic_vocab"),
               "activations": ("batch_size", "num_steps", "hidden_size", "synthetic_vocab"),
               "data": ("synthetic_words",)}


def memory_estimate(config):
    """What a resolved config holds at its peak, as (part, bytes) pairs (workers/memory.py).

    parameters: embedding V x H, the LSTM's 4H x 2H weights and two biases per layer, the
    decoder H x V + V, each with its gradient (plain SGD keeps no other state).
    activations: what one training step keeps for the backward pass: the embedded input, each
    layer's four gates, cell and output state, and the decoder's logits with their gradient,
    for num_steps x batch_size tokens.
    data: the corpus as int64 ids, and for the synthetic corpus its pure-Python generation.
    """
    hidden, layers = config["hidden_size"], config["num_layers"]
    if config["data_dir"] is None:
        vocab, words = config["synthetic_vocab"], config["synthetic_words"]
        data = words * (INDEX_BYTES + SYNTHETIC_BYTES_PER_WORD)
    else:
        vocab, words = PTB_VOCAB, PTB_WORDS
        data = words * INDEX_BYTES
    parameters = 2 * hidden * vocab + vocab + layers * (8 * hidden * hidden + 8 * hidden)
    tokens = max(config["num_steps"] * config["batch_size"],
                 config["test_num_steps"] * config["test_batch_size"])
    activations = tokens * (hidden * (2 + 6 * layers) + 2 * vocab)
    return [("parameters", 2 * parameters * FLOAT_BYTES),
            ("activations", activations * FLOAT_BYTES),
            ("data", data)]


def learning_rate(config, epoch):
    """The learning rate of 0-based ``epoch`` under the config's schedule.

    tf (ptb_word_lm.py):  lr0 * decay ** max(epoch + 1 - flat, 0), never compounding.
    compound (ptb-lm.py): starting from lr0, every epoch multiplies the running rate by
                          decay ** max(epoch - flat, 0), so the exponents add up:
                          lr0 * decay ** sum_{e<=epoch} max(e - flat, 0).
    """
    lr0 = config["learning_rate"]
    decay = config["lr_decay"]
    flat = config["lr_flat_epochs"]
    if config["lr_schedule"] == "tf":
        return lr0 * decay ** max(epoch + 1 - flat, 0)
    rate = lr0
    for e in range(epoch + 1):
        rate *= decay ** max(e - flat, 0)
    return rate
