"""The networks of rnn_bench: one recurrent stack in four implementations, then a classifier.

    basic     a hand-written cell (two linears + pointwise gates) in a Python loop over time
    compiled  the same hand-written step function through torch.compile (torch >= 2.0)
    fused     nn.LSTMCell / nn.GRUCell / nn.RNNCell in a Python loop over time
    cudnn     nn.LSTM / nn.GRU / nn.RNN (cuDNN on a GPU, torch's own kernel on the CPU)

Every implementation holds the same tensors under the same names (nn.LSTM's:
``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), so ``copy_weights`` can load one
set of weights into all of them and the correctness gate can compare gradients
by name. All of them are time-major: input (T, N, C), output (T, N, H * dirs).

The loop implementations do what none of the seed's frameworks could: run the
bidirectional, multi-layer and variable-length cases, one loop per direction and
layer. The reverse direction starts at each sequence's own end ("reverse within
length"), so on valid frames it computes what nn.LSTM computes on a packed batch.
"""
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .protocol import Unsupported

# Gate blocks per cell: the weight matrices are (GATES * hidden, in).
GATES = {"lstm": 4, "gru": 3, "rnn": 1}

# The parameter names every cell has, in nn.LSTMCell's spelling.
CELL_PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


# ---------------------------------------------------------------------------------------------
# Step functions of the hand-written cells. They follow nn.*Cell's calling convention:
# LSTM takes and returns (h, c); GRU and RNN take and return h. Each is two linears and
# pointwise gates, the unfused pure-autograd path of the seed's LSTMCell-basic.

def lstm_step(x, state, weight_ih, weight_hh, bias_ih, bias_hh):
    """One LSTM step: x (N, C), h and c (N, H) -> new (h, c)."""
    h, c = state
    # (N, C) x (4H, C)^T + (N, H) x (4H, H)^T -> (N, 4H)
    gates = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)
    # (N, 4H) -> 4 x (N, H), in nn.LSTMCell's order: input, forget, cell, output
    ingate, forgetgate, cellgate, outgate = gates.chunk(4, 1)
    ingate = torch.sigmoid(ingate)
    forgetgate = torch.sigmoid(forgetgate)
    cellgate = torch.tanh(cellgate)
    outgate = torch.sigmoid(outgate)
    c_next = forgetgate * c + ingate * cellgate
    h_next = outgate * torch.tanh(c_next)
    return h_next, c_next


def gru_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh):
    """One GRU step: x (N, C), h (N, H) -> new h (nn.GRUCell's equations)."""
    # (N, C) -> (N, 3H) and (N, H) -> (N, 3H), each split into reset, update, new
    input_reset, input_update, input_new = F.linear(x, weight_ih, bias_ih).chunk(3, 1)
    hidden_reset, hidden_update, hidden_new = F.linear(h, weight_hh, bias_hh).chunk(3, 1)
    reset = torch.sigmoid(input_reset + hidden_reset)
    update = torch.sigmoid(input_update + hidden_update)
    # The reset gate scales the recurrent part only, after its bias, as nn.GRU does.
    new = torch.tanh(input_new + reset * hidden_new)
    return (1 - update) * new + update * h


def rnn_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh):
    """One tanh RNN step: x (N, C), h (N, H) -> new h."""
    # (N, C) x (H, C)^T + (N, H) x (H, H)^T -> (N, H)
    return torch.tanh(F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh))


STEPS = {"lstm": lstm_step, "gru": gru_step, "rnn": rnn_step}

FUSED_CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}
CUDNN_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def compiled_step(cell):
    """The hand-written step of ``cell`` through torch.compile, or Unsupported without it."""
    if not hasattr(torch, "compile"):
        raise Unsupported("torch.compile needs torch>=2.0")
    # Only the step is compiled: the loop over time stays Python, as in `basic`,
    # so the two differ by the compiler alone. dynamic=True: one graph for every batch
    # size and layer width (the gate's slice, the timed batch, layer 0 and the rest);
    # otherwise each shape recompiles, and past Dynamo's recompile limit (8) the step
    # would silently run uncompiled.
    return torch.compile(STEPS[cell], dynamic=True)


class BasicCell(nn.Module):
    """A hand-written cell: nn.*Cell's parameters, ``step`` computing one time step."""

    def __init__(self, cell, input_size, hidden_size, step):
        super(BasicCell, self).__init__()
        rows = GATES[cell] * hidden_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.Tensor(rows, input_size))
        self.weight_hh = nn.Parameter(torch.Tensor(rows, hidden_size))
        self.bias_ih = nn.Parameter(torch.Tensor(rows))
        self.bias_hh = nn.Parameter(torch.Tensor(rows))
        self.step = step
        self.reset_parameters()

    def reset_parameters(self):
        # nn.*Cell's initialisation, U(-1/sqrt(H), 1/sqrt(H)), so a BasicCell built
        # alone trains like the fused one.
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            weight.data.uniform_(-bound, bound)

    def forward(self, x, state):
        return self.step(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


def reverse_within_length(x, lengths):
    """Reverse each sequence's first ``lengths[n]`` steps in time; padding stays in place.

    x: (T, N, ...). Reversing twice gives x back, so the same call turns the
    reverse direction's output back into time order.
    """
    steps, batch = x.size(0), x.size(1)
    if lengths is None:
        # Every sequence is full length: a plain flip over time.
        order = torch.arange(steps - 1, -1, -1, dtype=torch.long, device=x.device)
        return x.index_select(0, order)
    # index[t, n] = lengths[n] - 1 - t for t < lengths[n], else t (padding stays put)
    time = torch.arange(steps, dtype=torch.long, device=x.device).view(steps, 1)  # (T, 1)
    length = torch.tensor(lengths, dtype=torch.long).to(x.device).view(1, batch)  # (1, N)
    index = torch.where(time < length, length - 1 - time, time.expand(steps, batch))  # (T, N)
    # (T, N) -> (T, N, 1, ...) -> expanded like x, to gather along time
    index = index.view(steps, batch, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)


class LoopRNN(nn.Module):
    """A stack of cells run by a Python loop over time, per layer and direction."""

    def __init__(self, cell, input_size, hidden_size, num_layers, bidirectional, make_cell):
        super(LoopRNN, self).__init__()
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.directions = 2 if bidirectional else 1
        cells = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.directions
            for _ in range(self.directions):
                cells.append(make_cell(layer_input, hidden_size))
        # Ordered layer-major, direction-minor: cells[layer * directions + direction].
        self.cells = nn.ModuleList(cells)

    def named_rnn_parameters(self):
        """(name, parameter) pairs under nn.LSTM's names, e.g. weight_hh_l2_reverse."""
        for layer in range(self.num_layers):
            for direction in range(self.directions):
                cell = self.cells[layer * self.directions + direction]
                suffix = "_l%d%s" % (layer, "_reverse" if direction else "")
                for name in CELL_PARAMETERS:
                    yield name + suffix, getattr(cell, name)

    def _run_direction(self, cell, x):
        """Run one cell over time: x (T, N, C) -> hidden states (T, N, H)."""
        h = x.new_zeros(x.size(1), self.hidden_size)  # (N, H)
        state = (h, h) if self.cell == "lstm" else h
        outputs = []
        for step in range(x.size(0)):
            state = cell(x[step], state)  # x[step]: (N, C)
            outputs.append(state[0] if self.cell == "lstm" else state)
        # T x (N, H) -> (T, N, H)
        return torch.stack(outputs)

    def forward(self, x, lengths=None):
        """x (T, N, C) -> (T', N, H * dirs), T' = max(lengths) (or T), like nn.LSTM's output.

        With lengths, frames past a sequence's end hold values nothing reads:
        the valid frames never depend on them (see reverse_within_length).
        """
        layer_input = x
        for layer in range(self.num_layers):
            forward_cell = self.cells[layer * self.directions]
            outputs = [self._run_direction(forward_cell, layer_input)]
            if self.directions == 2:
                backward_cell = self.cells[layer * self.directions + 1]
                reversed_input = reverse_within_length(layer_input, lengths)
                reversed_output = self._run_direction(backward_cell, reversed_input)
                outputs.append(reverse_within_length(reversed_output, lengths))
            # dirs x (T, N, H) -> (T, N, H * dirs), forward first as in nn.LSTM
            layer_input = torch.cat(outputs, 2) if len(outputs) == 2 else outputs[0]
        if lengths is not None:
            layer_input = layer_input[:max(lengths)]
        return layer_input


def pack_accepts_enforce_sorted():
    """Whether pack_padded_sequence sorts for us (enforce_sorted=False, torch >= 1.1)."""
    try:
        return "enforce_sorted" in inspect.signature(pack_padded_sequence).parameters
    except (TypeError, ValueError):  # no introspectable signature: assume the old API
        return False


def run_packed(rnn, x, lengths, sort_yourself):
    """Run nn.LSTM-like ``rnn`` on a variable-length batch as a PackedSequence.

    x: (T, N, C) padded, in any length order; returns (max(lengths), N, H * dirs)
    in x's order. Old torch (< 1.1) packs only batches sorted by descending length,
    so with ``sort_yourself`` the batch is sorted here and unsorted afterwards.
    """
    if not sort_yourself:
        packed = pack_padded_sequence(x, list(lengths), enforce_sorted=False)
        output, _ = rnn(packed)
        padded, _ = pad_packed_sequence(output)
        return padded
    # A stable sort, longest first.
    order = sorted(range(len(lengths)), key=lambda n: -lengths[n])
    unsort = [0] * len(order)
    for position, n in enumerate(order):
        unsort[n] = position
    order_index = torch.tensor(order, dtype=torch.long).to(x.device)
    unsort_index = torch.tensor(unsort, dtype=torch.long).to(x.device)
    # (T, N, C) with columns reordered longest first
    packed = pack_padded_sequence(x.index_select(1, order_index), [lengths[n] for n in order])
    output, _ = rnn(packed)
    padded, _ = pad_packed_sequence(output)  # (max(lengths), N, H * dirs), sorted order
    return padded.index_select(1, unsort_index)


class CudnnRNN(nn.Module):
    """nn.LSTM / nn.GRU / nn.RNN, packed when the sequences have different lengths.

    On a GPU cuDNN takes the packed batch as it is. On the CPU (torch 2.13 measured)
    torch's packed backward zero-fills a full-size gradient per time step, so its cost
    grows with T^2: its backward took 6.5x the unpacked one at 8 x 250, and
    4x320-ctc-long at full size takes minutes per batch. That is torch's CPU path.
    """

    def __init__(self, cell, input_size, hidden_size, num_layers, bidirectional):
        super(CudnnRNN, self).__init__()
        self.rnn = CUDNN_LAYERS[cell](input_size, hidden_size, num_layers=num_layers,
                                      bidirectional=bidirectional)
        self.sort_yourself = not pack_accepts_enforce_sorted()

    def named_rnn_parameters(self):
        return self.rnn.named_parameters()

    def forward(self, x, lengths=None):
        if lengths is None:
            output, _ = self.rnn(x)  # (T, N, C) -> (T, N, H * dirs)
            return output
        return run_packed(self.rnn, x, lengths, self.sort_yourself)


class BenchNet(nn.Module):
    """The recurrent stack, then fc = Linear(H * dirs, classes, bias=False) as in the seed.

    CE reads the last time step, (N, classes); CTC classifies every step,
    (T', N, classes), where T' = max(lengths).
    """

    def __init__(self, rnn, features, classes, every_step):
        super(BenchNet, self).__init__()
        self.rnn = rnn
        self.fc = nn.Linear(features, classes, bias=False)
        self.every_step = every_step

    def named_shared_parameters(self):
        """Every parameter under a name that is the same in all implementations."""
        named = [("fc.weight", self.fc.weight)]
        named.extend(self.rnn.named_rnn_parameters())
        return named

    def forward(self, x, lengths=None):
        output = self.rnn(x, lengths)  # (T', N, H * dirs)
        if self.every_step:
            return self.fc(output)  # (T', N, H * dirs) -> (T', N, classes)
        return self.fc(output[-1])  # last step: (N, H * dirs) -> (N, classes)


def build_model(impl, cell, input_size, hidden_size, num_layers, bidirectional, classes,
                every_step):
    """A BenchNet of one implementation, on the CPU, with fresh (random) weights."""
    if impl == "cudnn":
        rnn = CudnnRNN(cell, input_size, hidden_size, num_layers, bidirectional)
    elif impl == "fused":
        rnn = LoopRNN(cell, input_size, hidden_size, num_layers, bidirectional,
                      FUSED_CELLS[cell])
    elif impl in ("basic", "compiled"):
        step = compiled_step(cell) if impl == "compiled" else STEPS[cell]
        rnn = LoopRNN(cell, input_size, hidden_size, num_layers, bidirectional,
                      lambda inputs, hidden: BasicCell(cell, inputs, hidden, step))
    else:  # the config schema admits no other value
        raise ValueError("unknown implementation %r" % impl)
    directions = 2 if bidirectional else 1
    return BenchNet(rnn, hidden_size * directions, classes, every_step)


def copy_weights(source, target):
    """Load ``source``'s weights into ``target`` (BenchNets of any implementations)."""
    source_parameters = dict(source.named_shared_parameters())
    target_parameters = dict(target.named_shared_parameters())
    if set(source_parameters) != set(target_parameters):
        raise ValueError("the two networks have different parameters: %s"
                         % sorted(set(source_parameters) ^ set(target_parameters)))
    for name, parameter in target_parameters.items():
        parameter.data.copy_(source_parameters[name].data)


def count_parameters(model):
    """Trainable scalars in a model (the seed's 'parameters' column)."""
    return sum(parameter.numel() for parameter in model.parameters())
