"""Graph passes, one per file; importing this package registers all of them (``onnxq passes`` lists them).

Installed as ``onnxq.passes`` (see pyproject's package-dir mapping).
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_module}")
