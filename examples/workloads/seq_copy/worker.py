"""seq_copy's worker half: a recurrent network learns to repeat a random sequence.

It runs inside every image and venv versweep uses: Python 3.6 syntax, standard library
and torch only, and only torch APIs that torch 0.4.1 has. versweep has already resolved
the config (config.py) and chosen the device; ``run`` emits `metric` events while it
trains and exactly one `result` at the end (workers/protocol.py).
"""
import math

import torch
import torch.nn as nn

from workers.protocol import Diverged
from workers.runtime import clock, synchronize


class Copier(nn.Module):
    def __init__(self, cell, vocab, hidden_size):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden_size)
        recurrent = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = recurrent(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, vocab)

    def forward(self, tokens):  # (time, batch) -> (time, batch, vocab)
        output, _ = self.rnn(self.embed(tokens))
        return self.out(output)


def batch(config, generator):
    """Input: the sequence, then the marker 0 repeated; target: the sequence again."""
    shape = (config["seq_len"], config["batch_size"])
    sequence = torch.randint(1, config["vocab"], shape, generator=generator).long()
    tokens = torch.cat([sequence, torch.zeros(shape).long()], 0)
    return tokens, sequence


def run(config, device, emitter):
    generator = torch.Generator()
    generator.manual_seed(config["seed"])
    model = Copier(config["cell"], config["vocab"], config["hidden_size"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    loss_of = nn.CrossEntropyLoss()
    length = config["seq_len"]
    seconds = []
    for step in range(1, config["steps"] + 1):
        tokens, target = batch(config, generator)
        tokens, target = tokens.to(device), target.to(device)
        synchronize(device)
        start = clock()
        optimizer.zero_grad()
        logits = model(tokens)[length:]
        loss = loss_of(logits.reshape(-1, config["vocab"]), target.reshape(-1))
        loss.backward()
        optimizer.step()
        synchronize(device)
        seconds.append(clock() - start)
        value = float(loss.item())
        if not math.isfinite(value):
            raise Diverged("loss is %r at step %d" % (value, step))
        if step % config["report_every"] == 0:
            accuracy = float((logits.argmax(-1) == target).float().mean().item())
            emitter.metric(step, {"loss": value, "accuracy": accuracy})
    timed = sorted(seconds[len(seconds) // 10:])  # the first tenth is warm-up
    emitter.result({"loss": value, "accuracy": accuracy,
                    "ms_per_step_median": 1000.0 * timed[len(timed) // 2]})
