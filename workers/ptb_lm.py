"""The `ptb_lm` runner: the word-level LSTM language model of the seeds, and its training loop.

Model (Kuchaiev's lm.py, the TF tutorial's PTBModel): embedding -> dropout ->
multi-layer nn.LSTM (dropout between layers) -> dropout -> linear to the
vocabulary. Training: truncated BPTT over contiguous rows, the hidden state
carried from batch to batch and detached, global-norm gradient clipping, plain
SGD with the preset's learning-rate schedule. Perplexity is exp of the mean
per-token cross-entropy, words per second counts target tokens over the wall
time of the training pass (seed-facts 1.5).

Runs on torch 0.4.1 through 2.x: only APIs that 0.4.1 has, or feature checks.
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .protocol import DataError, Diverged
from .ptb_data import (
    CANONICAL_BLOB_IDS,
    FILE_NAMES,
    SPLITS,
    blob_ids,
    epoch_size,
    load_corpus,
    synthetic_source,
)
from .ptb_lm_config import DIVERGED_FACTOR, PUBLISHED_PERPLEXITY, learning_rate
from .runtime import clock, synchronize

# torch 0.4.0 renamed clip_grad_norm to clip_grad_norm_; keep the old name as a fallback.
_clip_grad_norm = getattr(nn.utils, "clip_grad_norm_", None) or nn.utils.clip_grad_norm


class LanguageModel(nn.Module):
    """embedding -> dropout -> LSTM -> dropout -> linear, time-major like the seeds."""

    def __init__(self, vocab_size, hidden_size, num_layers, keep_prob):
        super(LanguageModel, self).__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = nn.Dropout(1.0 - keep_prob)
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        # nn.LSTM's own dropout acts between layers only; with one layer it would just warn.
        between_layers = (1.0 - keep_prob) if num_layers > 1 else 0.0
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers, dropout=between_layers)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, inputs, hidden):
        # inputs (T, B) ids -> embedded (T, B, H) -> LSTM output (T, B, H)
        embedded = self.dropout(self.embedding(inputs))
        output, hidden = self.lstm(embedded, hidden)
        output = self.dropout(output)
        steps, batch = output.size(0), output.size(1)
        # (T, B, H) -> (T*B, H): one row per target token, in the targets' order
        logits = self.decoder(output.view(steps * batch, self.hidden_size))
        return logits, hidden

    def initial_hidden(self, batch_size, device):
        """Zero (h, c), each (num_layers, B, H)."""
        shape = (self.num_layers, batch_size, self.hidden_size)
        return (torch.zeros(shape, device=device), torch.zeros(shape, device=device))


def build_model(config, vocab_size):
    """The model with the config's initialisation (see the `init` key)."""
    model = LanguageModel(vocab_size, config["hidden_size"], config["num_layers"],
                          config["keep_prob"])
    scale = config["init_scale"]
    if config["init"] == "tf":
        # TF's uniform initializer covers every variable of the tutorial's model.
        for parameter in model.parameters():
            parameter.data.uniform_(-scale, scale)
    else:
        # Kuchaiev's init_weights(): embedding and softmax only; the LSTM keeps
        # torch's default U(-1/sqrt(H), 1/sqrt(H)).
        model.embedding.weight.data.uniform_(-scale, scale)
        model.decoder.weight.data.uniform_(-scale, scale)
        model.decoder.bias.data.zero_()
    return model


def batchify(ids, batch_size, device):
    """Cut a split's token stream into batch_size contiguous rows, time-major.

    The tail that does not fill a row is dropped; there is no shuffling.
    For the stream a b c ... x (24 tokens) and batch_size 4:

        a g m s
        b h n t      (len // B, B): column j is the j-th contiguous quarter of the
        c i o u      stream, so in the next window each column continues where it
        d j p v      stopped, and the hidden state of column j can be carried over.
        e k q w
        f l r x
    """
    rows = len(ids) // batch_size
    data = torch.tensor(ids[:rows * batch_size], dtype=torch.long)
    # (rows*B,) -> (B, rows): row b is the b-th contiguous piece -> (rows, B) time-major
    return data.view(batch_size, rows).t().contiguous().to(device)


def windows(data, num_steps, limit):
    """Yield (inputs, targets), each (T, B), targets one token later; at most ``limit``.

    With num_steps 2 on the layout of batchify, the first window is

        inputs  a g m s     targets  b h n t
                b h n t              c i o u

    The last token of a column has no successor, so it can only be a target:
    hence ((len // B) - 1) // T windows per pass.
    """
    steps = (data.size(0) - 1) // num_steps
    if limit is not None:
        steps = min(steps, limit)
    for step in range(steps):
        start = step * num_steps
        yield data[start:start + num_steps], data[start + 1:start + 1 + num_steps]


def detach_hidden(hidden):
    """Cut the graph at the batch boundary but keep the values (truncated BPTT)."""
    return tuple(h.detach() for h in hidden)


# Training steps in a row whose loss is above the bound's before the trial stops early: one
# spike is not a divergence, a run of them is.
DIVERGED_STEPS = 5


def perplexity_bound(vocab_size):
    """The perplexity beyond which a trial counts as diverged."""
    return float(DIVERGED_FACTOR * vocab_size)


def _advice(config):
    return "lower learning_rate (%g) or clip_norm (%g)" % (config["learning_rate"],
                                                            config["clip_norm"])


def _perplexity(total_loss, steps, what, config, bound):
    """exp(mean per-token cross-entropy), from the sum of the per-window mean losses.

    A finite float32 loss can still be far too large for exp (an exploded softmax
    layer with a saturated LSTM gives losses of 1e6 nats), or give a perplexity no model
    reaches: past ``bound``, that run has diverged too.
    """
    mean = total_loss / steps
    if mean > math.log(bound):
        raise Diverged("%s perplexity %s is beyond the bound %.4g (%d x the vocabulary: "
                       "worse than guessing); %s"
                       % (what, _shown(mean), bound, DIVERGED_FACTOR, _advice(config)))
    return math.exp(mean)


def _shown(mean_loss):
    """A perplexity for a message, also one too large for a float: 'exp(1.2e+07)'."""
    try:
        return "%.4g" % math.exp(mean_loss)
    except OverflowError:
        return "exp(%.4g)" % mean_loss


def _check_finite(value, what, config):
    if math.isnan(value) or math.isinf(value):
        raise Diverged("%s loss became %s; %s" % (what, value, _advice(config)))


def train_epoch(model, data, config, rate, device, epoch=1, bound=float("inf")):
    """One training pass (``epoch`` is 1-based, for messages); returns (perplexity, words/s).

    Stops early (Diverged) once DIVERGED_STEPS training steps in a row have a loss beyond
    ``bound``'s, and at the end if the epoch's perplexity is beyond it.
    """
    model.train()
    num_steps = config["num_steps"]
    batch_size = data.size(1)
    hidden = model.initial_hidden(batch_size, device)
    total_loss, steps = 0.0, 0
    log_bound, above = math.log(bound), 0
    synchronize(device)
    start = clock()
    for inputs, targets in windows(data, num_steps, config["max_steps_per_epoch"]):
        hidden = detach_hidden(hidden)
        model.zero_grad()
        logits, hidden = model(inputs, hidden)
        # targets (T, B) -> (T*B,), the order of the logits' rows
        mean_loss = F.cross_entropy(logits, targets.contiguous().view(-1))
        # TF's cost sums the per-step batch means over the window: T times the mean.
        loss = mean_loss * num_steps if config["loss"] == "sum_steps" else mean_loss
        loss.backward()
        value = mean_loss.item()  # reads the device, like the seed's loss.data[0]
        _check_finite(value, "epoch %d step %d: training" % (epoch, steps + 1), config)
        above = above + 1 if value > log_bound else 0
        if above >= DIVERGED_STEPS:
            raise Diverged("epoch %d step %d: training perplexity beyond the bound %.4g (%d x "
                           "the vocabulary) for %d steps in a row (now %s); %s"
                           % (epoch, steps + 1, bound, DIVERGED_FACTOR, above, _shown(value),
                              _advice(config)))
        _clip_grad_norm(model.parameters(), config["clip_norm"])
        for parameter in model.parameters():
            # p -= lr * grad: a form every torch version accepts.
            parameter.data.sub_(rate * parameter.grad.data)
        total_loss += value
        steps += 1
    synchronize(device)
    seconds = clock() - start
    words_per_second = steps * num_steps * batch_size / seconds
    return (_perplexity(total_loss, steps, "epoch %d: training" % epoch, config, bound),
            words_per_second)


def evaluate(model, data, num_steps, config, device, what, bound=float("inf")):
    """Perplexity over a split without dropout and without gradients."""
    model.eval()
    hidden = model.initial_hidden(data.size(1), device)
    total_loss, steps = 0.0, 0
    with torch.no_grad():
        for inputs, targets in windows(data, num_steps, config["max_eval_steps"]):
            logits, hidden = model(inputs, hidden)
            value = F.cross_entropy(logits, targets.contiguous().view(-1)).item()
            _check_finite(value, what, config)
            total_loss += value
            steps += 1
    return _perplexity(total_loss, steps, what, config, bound)


def _describe(corpus, split):
    if corpus.synthetic:
        return "the synthetic %s split" % split
    return os.path.join(corpus.source, FILE_NAMES[split])


def _check_sizes(corpus, config):
    """Each split must give at least one window for its batch layout (DataError otherwise)."""
    layouts = {"train": (config["batch_size"], config["num_steps"]),
               "valid": (config["batch_size"], config["num_steps"]),
               "test": (config["test_batch_size"], config["test_num_steps"])}
    for split in SPLITS:
        batch_size, num_steps = layouts[split]
        tokens = len(corpus.split(split))
        if epoch_size(tokens, batch_size, num_steps) < 1:
            hint = "raise synthetic_words or " if corpus.synthetic else ""
            raise DataError("%s has %d tokens: too few for batch size %d x %d steps (needs "
                            "at least %d); %slower the batch size or steps"
                            % (_describe(corpus, split), tokens, batch_size, num_steps,
                               batch_size * (num_steps + 1), hint))


def env_extras(config):
    """The data source for the env event; a real directory is identified by blob ids."""
    extras = {"reference_perplexity": PUBLISHED_PERPLEXITY.get(config["preset"])}
    if config["data_dir"] is None:
        extras["data"] = {"synthetic": True,
                          "source": synthetic_source(config["synthetic_words"],
                                                     config["synthetic_vocab"])}
        return extras
    found = blob_ids(config["data_dir"])
    extras["data"] = {
        "synthetic": False,
        "source": config["data_dir"],
        "git_blob_sha1": found,
        # True only when all three files are the canonical Mikolov PTB files.
        "canonical_ptb": all(found[name] == CANONICAL_BLOB_IDS[name] for name in found),
    }
    return extras


def run(config, device, emitter):
    corpus = load_corpus(config)
    _check_sizes(corpus, config)
    train_data = batchify(corpus.train, config["batch_size"], device)
    valid_data = batchify(corpus.valid, config["batch_size"], device)
    test_data = batchify(corpus.test, config["test_batch_size"], device)
    model = build_model(config, corpus.vocab_size).to(device)
    bound = perplexity_bound(corpus.vocab_size)

    epochs = config["epochs"]
    if config["max_epochs"] is not None:
        epochs = min(epochs, config["max_epochs"])
    best_valid = float("inf")
    speeds = []
    train_perplexity = valid_perplexity = float("nan")
    for epoch in range(epochs):
        rate = learning_rate(config, epoch)
        start = clock()
        train_perplexity, words_per_second = train_epoch(model, train_data, config, rate,
                                                         device, epoch + 1, bound)
        valid_perplexity = evaluate(model, valid_data, config["num_steps"], config, device,
                                    "epoch %d: validation" % (epoch + 1), bound)
        synchronize(device)
        best_valid = min(best_valid, valid_perplexity)
        speeds.append(words_per_second)
        emitter.metric(epoch + 1, {
            "train_perplexity": train_perplexity,
            "valid_perplexity": valid_perplexity,
            "words_per_second": words_per_second,
            "learning_rate": rate,
            # the training and the validation pass of this epoch
            "epoch_seconds": clock() - start,
            "perplexity_bound": bound,
        })

    test_perplexity = evaluate(model, test_data, config["test_num_steps"], config, device,
                               "test", bound)
    emitter.result({
        "test_perplexity": test_perplexity,
        "best_valid_perplexity": best_valid,
        "train_perplexity": train_perplexity,
        "valid_perplexity": valid_perplexity,
        "words_per_second": sum(speeds) / len(speeds),
        "epochs_run": epochs,
        "vocab_size": corpus.vocab_size,
        "perplexity_bound": bound,
    })
