"""Silero VAD v5's network, computed with numpy from the weights in the packaged ONNX file.

onnxruntime runs this graph's 1-D convolutions one batch item at a time (a GEMM with four
output columns each), so batching sessions barely helped: ~45 us per frame in batches of 22.
The same arithmetic as a few batch-wide GEMMs, and the STFT (a Hann-windowed DFT, 35% of the
graph's multiply-adds) as an FFT, costs ~21 us per frame at that batch and ~70 us for a
single frame (onnxruntime: ~112 us). Outputs match onnxruntime's to ~1e-5
(tests/test_vad.py runs both on real speech, frame by frame).

The graph (silero-vad v5, `utils_vad.py` upstream) per frame of 512 samples at 16 kHz (256 at
8 kHz) plus 64 (32) samples of context: reflect-pad the right edge by a quarter filter, STFT
magnitude (filter 256, hop 128; 128/64 at 8 kHz) -> four conv1d(k=3, pad=1) + ReLU blocks with
strides 1, 2, 2, 1 (down to one time step) -> an LSTM cell over the session's state -> ReLU,
1x1 conv, sigmoid. The two rates are two branches of one `If` with their own weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gateway.audio import onnx_wire as wire

FILTER_LENGTH = {16000: 256, 8000: 128}
WINDOW_SAMPLES = {16000: 512 + 64, 8000: 256 + 32}
"""A frame with its context: the length of one row of the network's input."""
BRANCH = {16000: "then_branch", 8000: "else_branch"}
"""Which arm of the graph's `If (sr == 16000)` holds a rate's weights."""
HIDDEN = 128


class SileroModelError(Exception):
    """The packaged ONNX file is not the silero v5 graph this module computes."""


class SileroNetwork:
    """One rate's weights; `run` is a pure function of a batch of windows and states."""

    def __init__(self, path: Path, sample_rate: int) -> None:
        constants = _branch_constants(path.read_bytes(), BRANCH[sample_rate])
        try:
            filter_length = FILTER_LENGTH[sample_rate]
            self._hop = filter_length // 2
            self._pad = filter_length // 4
            n = np.arange(filter_length)
            self._window = (0.5 - 0.5 * np.cos(2 * np.pi * n / filter_length)).astype(np.float32)
            # STFT frames of a padded window (4 at either rate), then each layer's output steps.
            steps = (WINDOW_SAMPLES[sample_rate] + self._pad) // self._hop - 1
            self._encoder = []
            for i, stride in enumerate((1, 2, 2, 1)):
                conv = _Conv(
                    constants[f"encoder.{i}.reparam_conv.weight"],
                    constants[f"encoder.{i}.reparam_conv.bias"],
                    stride,
                    steps,
                )
                self._encoder.append(conv)
                steps = conv.out_steps
            w_ih, w_hh = constants["decoder.rnn.weight_ih"], constants["decoder.rnn.weight_hh"]
            bias = constants["decoder.rnn.bias_ih"] + constants["decoder.rnn.bias_hh"]
            head = constants["decoder.decoder.2.weight"]
            self._head_bias = float(constants["decoder.decoder.2.bias"][0])
        except KeyError as e:
            raise SileroModelError(f"{path} has no {e} in its {sample_rate} Hz branch") from e
        # Gates reordered from torch's (input, forget, cell, output) to (input, forget, output,
        # cell), and the first three halved: sigmoid(x) = tanh(x / 2) / 2 + 1/2, so one tanh
        # over all four gives the sigmoids (after a scale and shift) and the cell's tanh.
        order = np.r_[0 : 2 * HIDDEN, 3 * HIDDEN : 4 * HIDDEN, 2 * HIDDEN : 3 * HIDDEN]
        scale = np.r_[np.full(3 * HIDDEN, 0.5), np.ones(HIDDEN)].astype(np.float32)
        self._input_weights = np.ascontiguousarray(w_ih[order].T * scale)
        self._state_weights = np.ascontiguousarray(w_hh[order].T * scale)
        self._lstm_bias = bias[order] * scale
        self._head = np.ascontiguousarray(head.reshape(HIDDEN))

    def run(
        self, windows: np.ndarray, lengths: Sequence[int], state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Speech probabilities (one per window) and the next states (2, sequences, 128).

        `windows` (float32, in [-1, 1]) holds consecutive frames of several sequences (each
        frame with its context, as the ONNX model's `input` row): `lengths[i]` rows of sequence
        i, then the next sequence's; `state` is the sequences' states (`stateN` of their last
        frames). Only the LSTM carries anything from one frame to the next, so everything
        before it runs on every window at once, and the LSTM steps through the frames of all
        sequences together, one frame position at a time.
        """
        # The input's share of every gate, for all frames at once; the state's, step by step.
        inputs = self._features(windows) @ self._input_weights
        inputs += self._lstm_bias
        hidden, cell = state[0].copy(), state[1].copy()
        outputs = np.empty((len(windows), HIDDEN), dtype=np.float32)
        if min(lengths, default=0) == max(lengths, default=0):
            # Sequences as long as each other (one session's chunk, or sessions sending equal
            # chunks): frame `step` of every sequence is a strided slice, nothing to gather.
            steps = lengths[0] if lengths else 0
            by_step = inputs.reshape(len(lengths), steps, -1)
            for step in range(steps):
                hidden, cell = self._lstm_step(by_step[:, step], hidden, cell)
                outputs[step::steps] = hidden
        else:
            counts = np.asarray(lengths)
            starts = np.cumsum(counts) - counts
            longest_first = np.argsort(-counts, kind="stable")
            for step in range(int(counts.max())):
                active = longest_first[: np.count_nonzero(counts > step)]
                rows = starts[active] + step
                hidden[active], cell[active] = self._lstm_step(
                    inputs[rows], hidden[active], cell[active]
                )
                outputs[rows] = hidden[active]
        logit = np.maximum(outputs, 0) @ self._head + self._head_bias
        return _sigmoid(logit), np.stack([hidden, cell])

    def _features(self, windows: np.ndarray) -> np.ndarray:
        """(windows, 128): STFT magnitudes through the convolutional encoder."""
        padded = np.concatenate([windows, windows[:, -2 : -2 - self._pad : -1]], axis=1)
        # The STFT's frames overlap by half (hop = filter / 2), and a padded window is a whole
        # number of hops (640 = 5 x 128 at 16 kHz, 320 = 5 x 64 at 8 kHz): each frame is two
        # neighbouring hops (cheaper than numpy's `as_strided` view by ~5-10 us a call).
        hops = padded.reshape(len(padded), -1, self._hop)
        frames = np.concatenate([hops[:, :-1], hops[:, 1:]], axis=2)
        x = np.abs(np.fft.rfft(frames * self._window, axis=-1)).astype(np.float32, copy=False)
        for conv in self._encoder:
            x = conv(x)
        return x.reshape(windows.shape[0], HIDDEN)

    def _lstm_step(
        self, inputs: np.ndarray, hidden: np.ndarray, cell: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        gates = hidden @ self._state_weights
        gates += inputs
        np.tanh(gates, out=gates)
        sigmoids = gates[:, : 3 * HIDDEN]
        sigmoids *= 0.5
        sigmoids += 0.5
        cell = sigmoids[:, HIDDEN : 2 * HIDDEN] * cell
        cell += sigmoids[:, :HIDDEN] * gates[:, 3 * HIDDEN :]
        return sigmoids[:, 2 * HIDDEN :] * np.tanh(cell), cell


class _Conv:
    """conv1d(kernel 3, padding 1) + ReLU over (batch, steps, channels) for a fixed number of
    input steps, as one GEMM: each output step's inputs side by side (im2col) times the taps.

    Only what the output needs is computed: a strided layer's kept steps, and only the taps
    that reach an input step for some output step (the last two layers, 2 -> 1 and 1 -> 1
    steps, use two and one of their three taps; the others would multiply the zero padding).
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray, stride: int, steps: int) -> None:
        out_channels = weight.shape[0]
        centres = range(0, steps, stride)
        self._taps = [k for k in range(3) if any(0 <= c - 1 + k < steps for c in centres)]
        self._padded = any(not 0 <= c - 1 + k < steps for c in centres for k in self._taps)
        # (out, in, tap) -> (taps x in, out), the used taps' blocks one under the other.
        self._weight = np.ascontiguousarray(
            np.concatenate([weight[:, :, k].T for k in self._taps], axis=0)
        )
        self._bias = bias
        self._stride = stride
        self.out_steps = len(centres)
        self._out = out_channels

    def __call__(self, x: np.ndarray) -> np.ndarray:
        batch, steps, channels = x.shape
        if self._padded:  # input step i at i + 1, zeros either side
            source = np.zeros((batch, steps + 2, channels), np.float32)
            source[:, 1:-1] = x
            offset = 0
        else:  # every tap stays inside: tap k of output step c reads step c - 1 + k
            source, offset = x, -1
        columns = [source[:, k + offset : k + offset + steps : self._stride] for k in self._taps]
        stacked = columns[0] if len(columns) == 1 else np.concatenate(columns, axis=2)
        y: np.ndarray = stacked.reshape(batch * self.out_steps, -1) @ self._weight
        y += self._bias
        np.maximum(y, 0, out=y)
        return y.reshape(batch, self.out_steps, self._out)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.tanh(x * 0.5) * 0.5 + 0.5


def _branch_constants(model: bytes, branch: str) -> dict[str, np.ndarray]:
    """The float32 `Constant` tensors of one arm of the graph's top-level `If`, by the PyTorch
    parameter names the export gave them ("If_0_then_branch__Inline_0__encoder.0....").

    Read straight from the protobuf wire format (`gateway.audio.onnx_wire`)."""
    marker = f"If_0_{branch}__Inline_0__"
    found: dict[str, np.ndarray] = {}
    for node in wire.nodes(wire.field(memoryview(model), wire.MODEL_GRAPH)):
        if wire.string(node, wire.NODE_OP_TYPE) != "Constant":
            continue
        output = wire.string(node, wire.NODE_OUTPUT)
        if not output.startswith(marker):
            continue
        for attribute in wire.repeated(node, wire.NODE_ATTRIBUTE):
            tensor = wire.field(attribute, wire.ATTRIBUTE_TENSOR)
            if wire.varint_field(tensor, wire.TENSOR_DATA_TYPE) == wire.FLOAT:
                dims = list(wire.varints(tensor, wire.TENSOR_DIMS))
                raw = np.frombuffer(wire.field(tensor, wire.TENSOR_RAW_DATA), dtype="<f4")
                found[output.removeprefix(marker)] = raw.reshape(dims).astype(np.float32)
    return found
