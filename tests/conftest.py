"""Shared fixtures: small models written the way third-party exporters write them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """Import a script from tools/ by file path (tools/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def demo_proto() -> onnx.ModelProto:
    return load_tool("make_demo_model").build()


@pytest.fixture
def demo_path(tmp_path: Path, demo_proto: onnx.ModelProto) -> Path:
    path = tmp_path / "demo.onnx"
    onnx.save(demo_proto, path)
    return path
