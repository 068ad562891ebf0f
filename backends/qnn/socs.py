"""Snapdragon SoCs and their HTP (Hexagon) architectures, and the parsing of ``qnn:<soc>`` targets.

QNN's ``soc_model`` is an integer id (QnnTypes.h ``QNN_SOC_MODEL_*``); the HTP compiler picks the
architecture from it. The runtime silently falls back to v68 on an id or arch it does not know, so every
target is validated here first, and an unknown one is an error that lists the known ones.

The default SoC of each arch is the one the probe (``tools/qnn_probe.py``) compiles with; the probe also
checks that its context binaries equal those built with ``htp_arch`` for the same arch.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxq.errors import UnknownNameError


@dataclass(frozen=True)
class Soc:
    name: str  # lower-case part number, e.g. "sm8550"
    soc_model: int
    arch: str  # "v73"
    marketing: str


SOCS: tuple[Soc, ...] = (
    Soc("sm8350", 30, "v68", "Snapdragon 888"),
    Soc("sa8295", 39, "v68", "SA8295P (automotive)"),
    Soc("sm8450", 36, "v69", "Snapdragon 8 Gen 1"),
    Soc("sm8475", 42, "v69", "Snapdragon 8+ Gen 1"),
    Soc("sm8550", 43, "v73", "Snapdragon 8 Gen 2"),
    Soc("sm8635", 68, "v73", "Snapdragon 8s Gen 3"),
    Soc("sm8650", 57, "v75", "Snapdragon 8 Gen 3"),
    Soc("sm8750", 69, "v79", "Snapdragon 8 Elite"),
    Soc("sm8735", 85, "v79", "Snapdragon 8s Gen 4"),
    Soc("sm8850", 87, "v81", "Snapdragon 8 Elite Gen 5"),
)

#: HTP arch -> the SoC a bare ``qnn:v73`` means
DEFAULT_SOC = {"v68": "sm8350", "v69": "sm8450", "v73": "sm8550", "v75": "sm8650", "v79": "sm8750",
               "v81": "sm8850"}
ARCHS = tuple(DEFAULT_SOC)
DEFAULT_TARGET = "sm8550"

_BY_NAME = {soc.name: soc for soc in SOCS}
_BY_ID = {str(soc.soc_model): soc for soc in SOCS}


def parse_soc(text: str) -> Soc:
    """``sm8550`` / ``SM8550`` / ``43`` (a soc_model id) / ``v73`` (an arch: its default SoC); "" is the default.

    A bare number is always a soc_model id (68 is the SM8635, not arch v68): archs are written ``vNN``.
    """
    key = (text or DEFAULT_TARGET).strip().lower()
    if key in _BY_NAME:
        return _BY_NAME[key]
    if key in _BY_ID:
        return _BY_ID[key]
    if key in DEFAULT_SOC:
        return _BY_NAME[DEFAULT_SOC[key]]
    choices = [f"{s.name} ({s.soc_model}, {s.arch})" for s in SOCS] + list(ARCHS)
    raise UnknownNameError("qnn SoC or HTP arch", text, choices)


def variants() -> dict[str, str]:
    """Variant name -> description, default first (for ``onnxq targets``)."""
    ordered = [_BY_NAME[DEFAULT_TARGET]] + [s for s in SOCS if s.name != DEFAULT_TARGET]
    return {s.name: f"{s.marketing}, HTP {s.arch}, soc_model {s.soc_model}" for s in ordered}
