"""Every example workflow runs with the pack's nodes on the committed example inputs."""
import shutil
import subprocess
import sys

import pytest
from packloader import PACK_ROOT, load_pack, pack_import
from workflow_runner import run_workflow

pack = load_pack()
WORKFLOWS = sorted((PACK_ROOT / "example_workflows").glob("*.json"))
ASSETS = PACK_ROOT / "tests" / "assets"


def test_there_are_example_workflows():
    assert WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs(path, host_dirs):
    for asset in ASSETS.iterdir():
        shutil.copy(asset, host_dirs["input"])
    recorded = run_workflow(path, pack.NODE_CLASS_MAPPINGS)
    assert recorded, "the workflow has no output node"
    for outputs in recorded.values():
        if "ui" in outputs:  # the pack's own output nodes report what they wrote
            assert outputs["ui"]["text"]
        elif "model_file" in outputs:  # Preview3D shows a file from the output folder
            assert (host_dirs["output"] / outputs["model_file"]).is_file()
        else:
            assert outputs["images"].shape[0] >= 1


def test_committed_example_assets_are_what_the_script_writes(tmp_path):
    subprocess.run([sys.executable, "-m", "scripts.example_assets", str(tmp_path)], cwd=PACK_ROOT, check=True)
    for written in tmp_path.iterdir():
        committed = ASSETS / written.name
        assert committed.is_file(), f"tests/assets/{written.name} is missing: run python -m scripts.example_assets"
        coefficients = pack_import("pipelines.morphable.coefficients")
        fresh = coefficients.FaceCoefficients.load(written)
        kept = coefficients.FaceCoefficients.load(committed)
        assert all(
            (getattr(fresh, name) - getattr(kept, name)).abs().max() < 1e-6 for name in coefficients.ALL_FIELDS
        ), f"tests/assets/{written.name} is stale: run python -m scripts.example_assets"
