"""Runtime backends, one package per runtime, each with its capability table.

Installed as ``onnxq.backends`` (see pyproject's package-dir mapping).
"""
