"""silero_vad*: the Silero VAD v6 ONNX files shipped in the ``silero-vad`` wheel, as is.

Why they exist: small recurrent audio models written by three different exporters, each a test of what a
quantizer meets in the wild:

* ``silero_vad.onnx``: written with spox, opset 16; the whole network sits in the branches of an ``If`` on
  the sample-rate input (8 kHz / 16 kHz), so every pass must recurse into subgraphs;
* ``silero_vad_16k_op15.onnx``: torch 2.3 TorchScript export, opset 15, 16 kHz only;
* ``silero_vad_op18_ifless.onnx``: torch 2.9 dynamo export, opset 18, IR 10.

Inputs: ``input`` [batch, 576] = 64 samples of context + a 512-sample chunk at 16 kHz; ``state``
[2, batch, 128] (the LSTM's h and c, batch on axis 1); ``sr`` a scalar int64. Outputs: speech probability
[batch, 1] and the next ``stateN``. The state must be *real*: every sample here is taken from a sequential
run of the shipped model over a synthetic speech stream (``models.datasets.speech``), so each stored
(input, state) pair is one the model meets in service. Eval chunks are contiguous and in order, so a
quantized model can also be run sequentially on its own state; ``label`` says whether each chunk is speech.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np

from models.artifacts import stack_samples
from models.datasets.speech import SAMPLE_RATE, speech_stream
from models.registry import BuildContext, BuiltModel, ZooError
from models.wheels import WheelFile, WheelUnavailableError, fetch

logger = logging.getLogger(__name__)

_WHEEL = ("silero-vad", "6.2.3")
FILES = {
    "silero_vad.onnx": "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    "silero_vad_16k_op15.onnx": "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
    "silero_vad_op18_ifless.onnx": "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
}
CHUNK, CONTEXT = 512, 64
CALIB_SECONDS, EVAL_SECONDS, CALIBRATION_SAMPLES = 20.0, 10.0, 128
BATCH_AXES = {"input": 0, "state": 1, "sr": None}


def run_stream(session, audio: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Run the model chunk by chunk as silero's own wrapper does; keep every step's inputs and outputs."""
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros((1, CONTEXT), dtype=np.float32)
    sr = np.array(SAMPLE_RATE, dtype=np.int64)
    steps: dict[str, list] = {"input": [], "state": [], "output": [], "label": []}
    for start in range(0, len(audio) - CHUNK + 1, CHUNK):
        window = np.concatenate([context, audio[None, start : start + CHUNK]], axis=1)
        output, next_state = session.run(["output", "stateN"], {"input": window, "state": state, "sr": sr})
        steps["input"].append(window)
        steps["state"].append(state)
        steps["output"].append(output)
        steps["label"].append(labels[start : start + CHUNK].mean() > 0.5)
        state, context = next_state, window[:, -CONTEXT:]
    return {
        "input": stack_samples(steps["input"], 0),
        "state": stack_samples(steps["state"], 1),
        "sr": np.full(len(steps["input"]), SAMPLE_RATE, dtype=np.int64),
        "output": np.concatenate(steps["output"]),
        "label": np.array(steps["label"], dtype=np.int64),
    }


def build(context: BuildContext, variant: str = "silero_vad.onnx") -> BuiltModel:
    import onnxruntime as ort

    if variant not in FILES:
        raise ZooError(f"unknown silero-vad file '{variant}'; known: {', '.join(FILES)}")
    model = WheelFile(*_WHEEL, f"silero_vad/data/{variant}", FILES[variant])
    try:
        source = fetch(model, context.cache_dir)
    except WheelUnavailableError as exc:
        raise ZooError(f"{context.name}: {exc}") from None
    shutil.copyfile(source, context.onnx_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(context.onnx_path), options, providers=["CPUExecutionProvider"])
    calib_run = run_stream(session, *speech_stream(CALIB_SECONDS, seed=100 + context.seed))
    picks = np.linspace(0, len(calib_run["input"]) - 1, CALIBRATION_SAMPLES).astype(int)
    eval_run = run_stream(session, *speech_stream(EVAL_SECONDS, seed=200 + context.seed))
    probability, labels = eval_run["output"][:, 0], eval_run["label"]
    names = ("input", "state", "sr")
    return BuiltModel(
        calib={name: calib_run[name][picks] for name in names},
        eval_inputs={name: eval_run[name] for name in names},
        labels=labels,
        batch_axes=BATCH_AXES,
        output_batch_axes={"output": 0, "stateN": 1},
        exporter=_EXPORTERS[variant],
        source=model.describe() | {"data": "synthetic source-filter speech, 16 kHz (models.datasets.speech)"},
        metrics={
            "fp32_chunk_accuracy": round(float(((probability > 0.5) == labels).mean()), 4),
            "fp32_mean_probability_speech": round(float(probability[labels == 1].mean()), 4),
            "fp32_mean_probability_silence": round(float(probability[labels == 0].mean()), 4),
            "eval_speech_fraction": round(float(labels.mean()), 4),
        },
        extra_eval={"reference:output": eval_run["output"]},
        notes=[
            "state batch axis is 1: stored as [samples, 2, 128]; models.artifacts.batches moves it back",
            "sr has no batch axis: all samples 16000; the 8 kHz path is not exercised",
            "eval chunks are contiguous: feed stateN back to run the stream sequentially",
        ],
    )


_EXPORTERS = {
    "silero_vad.onnx": "spox (third-party file, used as shipped)",
    "silero_vad_16k_op15.onnx": "torch 2.3.1 TorchScript exporter (third-party file, used as shipped)",
    "silero_vad_op18_ifless.onnx": "torch 2.9 dynamo exporter (third-party file, used as shipped)",
}
