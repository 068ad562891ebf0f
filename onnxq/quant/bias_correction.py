"""Bias correction: fold the mean output shift that rounding a layer's weights causes back into its bias.

Rounding weights to a grid changes a layer's response to the *mean* of its input, not only its noise:
for an output channel ``c`` the expected error is ``E[y_q - y]_c = Σ_i ΔW[c, i] · μ_i`` (summed over the
kernel taps too), where ``ΔW = dequantize(quantize(W)) - W`` and ``μ_i`` is the mean of input channel ``i``
over the calibration data (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and
Bias Correction", the analytic form with measured means). That shift is systematic, so it survives
averaging and every later layer amplifies it. It bites hardest on edge-detector-like depthwise kernels
whose taps nearly cancel: EfficientNet-Lite0's first depthwise Conv has a channel with taps up to ±8
summing to -0.015, which int8 rounding moves to +0.063; with the post-ReLU input mean of that channel
this one layer alone costs 12% output error. Subtracting the shift from the bias removes it:
per-channel int8 weights over all of EfficientNet-Lite0's Convs, output error 0.108 → 0.040; YOLOv8n
0.011 → 0.004; a MobileNetV2-style net 0.022 → 0.012 (weights-only runs on the zoo's eval data).

Corrected here: Conv (any group, stride, dilation; exact for output pixels away from padded borders) and
Gemm with ``transA = 0`` (alpha and beta taken into account). Their input's channels are axis 1 in both
cases, which is what calibration records (``channel_axis``). ConvTranspose is not corrected: with a
stride, each output pixel sees only some of the taps, so there is no single per-channel shift.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxq.quant import qparams

#: The axis of a corrected layer's input whose per-channel mean calibration keeps.
CHANNEL_AXIS = 1
#: Elements of a block of output channels whose float64 weight difference is formed at once: the working
#: block weight quantization uses too (2 MiB).
CHUNK_ELEMENTS = qparams.CHUNK_ELEMENTS


def mean_requests(plan) -> dict[str, int]:
    """Activation name → channel axis, for every input whose layer in ``plan`` bias correction handles."""
    return {use.activation: CHANNEL_AXIS for use in plan.biases() if corrects(use.node, use.weight_index)}


def corrects(node: ir.Node, weight_index: int) -> bool:
    """Whether ``node``'s weight at ``weight_index`` has a per-channel mean shift this module computes."""
    if weight_index != 1:
        return False
    if node.op_type == "Conv":
        return True
    if node.op_type == "Gemm":
        return _int_attr(node, "transA", 0) == 0
    return False


def output_shift(node: ir.Node, weight: np.ndarray, rounded: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """``E[y_q - y]`` per output channel, as seen through the bias term (so ``bias - shift`` corrects it).

    ``weight`` and ``rounded`` are the float and dequantized weights; ``mean`` the input's per-channel mean.
    None where the shapes do not line up (the correction is then skipped, never guessed). The float64
    difference is formed a block of output channels at a time (``CHUNK_ELEMENTS``): whole, it cost three
    float64 copies of the weight at once (EfficientNet-Lite0's classifier: +30 MiB, a quantize peak).
    """
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    if node.op_type == "Conv":
        return _conv_shift(weight, rounded, mean, _int_attr(node, "group", 1))
    if node.op_type == "Gemm":
        if np.ndim(weight) != 2:
            return None
        # [N, K]: one row per output channel
        by_output = (weight, rounded) if _int_attr(node, "transB", 0) else (weight.T, rounded.T)
        if by_output[0].shape[1] != mean.size:
            return None
        alpha, beta = _float_attr(node, "alpha", 1.0), _float_attr(node, "beta", 1.0)
        if beta == 0.0:
            return None
        blocks = qparams.row_blocks(by_output[0], CHUNK_ELEMENTS)
        shift = np.concatenate([_delta(*by_output, rows) @ mean for rows in blocks])
        return alpha / beta * shift
    return None


def _delta(weight: np.ndarray, rounded: np.ndarray, rows: slice) -> np.ndarray:
    return rounded[rows].astype(np.float64) - weight[rows].astype(np.float64)


def _conv_shift(weight: np.ndarray, rounded: np.ndarray, mean: np.ndarray, groups: int) -> np.ndarray | None:
    if weight.ndim < 2 or groups < 1 or weight.shape[0] % groups:
        return None
    outputs, per_group = weight.shape[0], weight.shape[1]
    if per_group * groups != mean.size:
        return None
    group_of = np.arange(outputs) // (outputs // groups)
    group_means = mean.reshape(groups, per_group)[group_of]  # [M, C/g]: each output's group's channel means
    taps = int(np.prod(weight.shape[2:], dtype=int))
    shifts = []
    for rows in qparams.row_blocks(weight, CHUNK_ELEMENTS):
        # [rows, C/g]: the response to a constant input
        tap_sums = _delta(weight, rounded, rows).reshape(-1, per_group, taps).sum(axis=2)
        shifts.append((tap_sums * group_means[rows]).sum(axis=1))
    return np.concatenate(shifts)


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attribute = node.attributes.get(name)
    return default if attribute is None else int(attribute.value)


def _float_attr(node: ir.Node, name: str, default: float) -> float:
    attribute = node.attributes.get(name)
    return default if attribute is None else float(attribute.value)
