import os
import shutil
import subprocess
import sys

import pytest
from packloader import PACK_ROOT


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    """A ComfyUI-style models/ folder written by the same command users and the real-host run use."""
    root = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, "-m", "scripts.tiny_models", str(root)], cwd=PACK_ROOT, check=True,
                   capture_output=True, text=True)
    return root


@pytest.fixture
def host_dirs(tmp_path, monkeypatch, tiny_models_dir):
    """Point the node layer's model, input and output folders at temporary ones (no ComfyUI here). The
    models/ folder is this test's own (hard links to the session's tiny models), so a node that writes
    a model there (Train Generator) leaves the other tests' folder as it was."""
    models = tmp_path / "host_models"  # tests make a "models" folder of their own beside it
    shutil.copytree(tiny_models_dir, models, copy_function=os.link)
    dirs = {"models": models, "input": tmp_path / "input", "output": tmp_path / "output"}
    dirs["input"].mkdir()
    dirs["output"].mkdir()
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(dirs["models"]))
    monkeypatch.setenv("TALKINGFACE_INPUT_DIR", str(dirs["input"]))
    monkeypatch.setenv("TALKINGFACE_OUTPUT_DIR", str(dirs["output"]))
    return dirs
