"""Import the pack the way ComfyUI does: from its folder's ``__init__.py`` under a module name
derived from the folder path, so every import inside the pack must be relative."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_MODULE_NAME = str(PACK_ROOT).replace(".", "_x_")
_executed = False


def _package() -> ModuleType:
    """The pack's package registered under its ComfyUI name, its ``__init__`` not yet run."""
    if PACK_MODULE_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_MODULE_NAME, PACK_ROOT / "__init__.py")
        sys.modules[PACK_MODULE_NAME] = importlib.util.module_from_spec(spec)
    return sys.modules[PACK_MODULE_NAME]


def load_pack() -> ModuleType:
    """The pack's top-level module, executed once per test session exactly as ComfyUI would."""
    global _executed
    module = _package()
    if not _executed:
        module.__spec__.loader.exec_module(module)
        _executed = True
    return module


def pack_import(relative_name: str) -> ModuleType:
    """A submodule of the pack, e.g. ``pack_import("pipelines.morphable.camera")``; pipeline modules
    import without the node layer, as they must."""
    _package()
    return importlib.import_module(f"{PACK_MODULE_NAME}.{relative_name}")
