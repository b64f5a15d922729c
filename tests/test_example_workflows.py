"""Every example workflow runs with the pack's nodes on the committed example inputs."""
import json
import shutil
import subprocess
import sys

import pytest
from packloader import PACK_ROOT, load_pack, pack_import
from workflow_runner import NOTE_NODES, run_workflow, validate_workflow

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


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_on_a_fresh_install_a_template_runs_or_its_loaders_name_each_missing_file(path, tmp_path, monkeypatch):
    """Nothing in ComfyUI/models/ but what ships with the pack: the template runs, or ComfyUI's validation
    stops it at its loaders, each naming the file, its folder and where it comes from, and the
    template's Note names the same file."""
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("TALKINGFACE_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setenv("TALKINGFACE_OUTPUT_DIR", str(tmp_path / "output"))
    shutil.copytree(ASSETS, tmp_path / "input")
    workflow = json.loads(path.read_text())
    nodes = {node["id"]: node for node in workflow["nodes"]}
    notes = " ".join(node["widgets_values"][0] for node in workflow["nodes"] if node["type"] in NOTE_NODES)
    problems = validate_workflow(path, pack.NODE_CLASS_MAPPINGS)
    for node_id, message in problems.items():
        node = nodes[node_id]
        display = pack.NODE_DISPLAY_NAME_MAPPINGS[node["type"]]
        assert node["type"].startswith("TalkingFaceLoad") and message.startswith(f"{display}: "), message
        named = next(value for value in node["widgets_values"] if isinstance(value, str) and f"'{value}'" in message)
        assert "ComfyUI/models/" in message and str(tmp_path) not in message, message
        assert named.split("/")[0] in notes, f"the Note of {path.name} should say where {named} comes from"
    if not problems:
        assert run_workflow(path, pack.NODE_CLASS_MAPPINGS)
    needs_files = "Files that do not ship" in notes
    assert needs_files == bool(problems), f"{path.name}'s Note says it needs {'' if needs_files else 'no '}files"


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
