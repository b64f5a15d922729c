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


def load_pack() -> ModuleType:
    """The pack's top-level module, executed once per test session exactly as ComfyUI would."""
    if PACK_MODULE_NAME in sys.modules:
        return sys.modules[PACK_MODULE_NAME]
    spec = importlib.util.spec_from_file_location(PACK_MODULE_NAME, PACK_ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACK_MODULE_NAME]
        raise
    return module


def pack_import(relative_name: str) -> ModuleType:
    """A submodule of the pack, e.g. ``pack_import("pipelines.render.camera")``."""
    load_pack()
    return importlib.import_module(f"{PACK_MODULE_NAME}.{relative_name}")
