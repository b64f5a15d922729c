"""Load Generator and TGDM Sampler run the way ComfyUI runs them, on the tiny generator checkpoint."""
import json
import subprocess
import sys

import pytest
import torch
from packloader import PACK_ROOT, load_pack, pack_import
from safetensors.torch import save_file
from workflow_runner import run_workflow

pack = load_pack()
generator_nodes = pack_import("nodes.generator")
render_nodes = pack_import("nodes.render")
morphable_nodes = pack_import("nodes.morphable")
nodes_base = pack_import("nodes.base")
coefficients = pack_import("pipelines.morphable.coefficients")
TINY_FILE = "tgdm_tiny_32px.safetensors"
WORKFLOW = PACK_ROOT / "example_workflows" / "tgdm_demo_generator.json"


@pytest.fixture(scope="module")
def generator_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for script in ("scripts.tiny_models", "scripts.tiny_generator"):
        subprocess.run([sys.executable, "-m", script, str(root)], cwd=PACK_ROOT, check=True, capture_output=True)
    return root


@pytest.fixture
def models(generator_models, monkeypatch, tmp_path):
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(generator_models))
    for name in ("input", "output"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(f"TALKINGFACE_{name.upper()}_DIR", str(tmp_path / name))
    return generator_models


def load(checkpoint=TINY_FILE):
    return generator_nodes.LoadGenerator().execute(checkpoint=checkpoint, precision="auto")[0]


def sample(generator, **changes):
    frames = 3
    coeffs = coefficients.FaceCoefficients.neutral(frames)
    coeffs.rotation[:, 1] = torch.tensor([0.0, 0.2, -0.2])
    inputs = dict(
        generator=generator, source_image=torch.rand(1, 40, 40, 3), render=torch.rand(frames, 64, 64, 3),
        coefficients=coeffs, sampler="ddim", steps=2, seed=3, texture_guidance=1.5, geometry_guidance=1.0,
        batch_size=2, chunk_size=2, same_noise=True, target_surface=torch.rand(frames, 64, 64, 3),
        warped_source=torch.rand(frames, 64, 64, 3), warp_mask=(torch.rand(frames, 64, 64) > 0.3).float(),
    )
    inputs.update(changes)
    return generator_nodes.TGDMSampler().execute(**inputs)[0]


def test_every_input_has_a_tooltip_and_the_loader_lists_the_folder(models):
    for node in (generator_nodes.LoadGenerator, generator_nodes.TGDMSampler):
        spec = node.INPUT_TYPES()
        for section in spec.values():
            for name, entry in section.items():
                assert entry[1].get("tooltip"), f"{node.__name__}.{name} has no tooltip"
        assert len(node.OUTPUT_TOOLTIPS) == len(node.RETURN_TYPES) and node.CATEGORY.startswith("TalkingFace")
    assert TINY_FILE in generator_nodes.LoadGenerator.INPUT_TYPES()["required"]["checkpoint"][0]


def test_sampler_node_outputs_comfyui_images_at_the_generator_size(models):
    generator = load()
    assert generator.dtype == torch.float32 and generator.model.config.image_size == 32
    images = sample(generator)
    assert images.shape == (3, 32, 32, 3) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    rgba = sample(generator, source_image=torch.rand(1, 40, 40, 4))
    assert rgba.shape == images.shape
    one_row = sample(generator, coefficients=coefficients.FaceCoefficients.neutral(1))
    assert one_row.shape == images.shape


def test_sampler_node_errors_name_the_node_and_the_fix(models):
    generator = load()
    with pytest.raises(nodes_base.NodeInputError, match=r"^TGDM Sampler: 2 coefficient rows for 3 renders"):
        sample(generator, coefficients=coefficients.FaceCoefficients.neutral(2))
    with pytest.raises(nodes_base.NodeInputError, match=r"^TGDM Sampler: 2 source images for 3 renders"):
        sample(generator, source_image=torch.rand(2, 32, 32, 3))
    with pytest.raises(nodes_base.NodeInputError, match=r"^TGDM Sampler: .*trained on 259.*3DMM the generator was trained with"):
        sample(generator, coefficients=coefficients.FaceCoefficients.neutral(3, coefficients.CoefficientDims(10, 10, 10)))
    with pytest.raises(nodes_base.NodeInputError, match=r"^TGDM Sampler: source_image has 2 channels"):
        sample(generator, source_image=torch.rand(1, 32, 32, 2))
    with pytest.raises(nodes_base.NodeInputError, match=r"^TGDM Sampler: .*add a Render Textured Target node"):
        sample(generator, warped_source=None, warp_mask=None)
    with pytest.raises(nodes_base.NodeInputError, match=r"^TGDM Sampler: 3 warped_source and 2 warp_mask frames for 3 renders"):
        sample(generator, warp_mask=torch.ones(2, 64, 64))


def test_interruption_reaches_the_sampler(models, monkeypatch):
    host = pack_import("nodes.host")

    class Cancelled(Exception):
        pass

    def cancel():
        raise Cancelled

    monkeypatch.setattr(host, "throw_if_interrupted", cancel)
    with pytest.raises(Cancelled):
        sample(load())


def test_sampler_node_runs_a_distilled_student_only_with_the_distilled_sampler(models):
    checkpoint = pack_import("pipelines.generator.checkpoint")
    distilled = pack_import("pipelines.generator.distilled")
    student = checkpoint.load_tgdm(models / "talkingface" / TINY_FILE)
    student.distillation = distilled.Distillation(4, 1.5, 1.5, 12, TINY_FILE)
    checkpoint.save_tgdm(student, models / "talkingface" / "tgdm_tiny_student.safetensors")
    assert "distilled" in generator_nodes.TGDMSampler.INPUT_TYPES()["required"]["sampler"][0]
    loaded = load("tgdm_tiny_student.safetensors")
    assert loaded.model.distillation == student.distillation
    for steps in (1, 4):
        images = sample(loaded, sampler="distilled", steps=steps, texture_guidance=1.0)
        assert images.shape == (3, 32, 32, 3) and 0 <= images.min() and images.max() <= 1
    with pytest.raises(nodes_base.NodeInputError, match=r"^TGDM Sampler: this generator is a 1-4 step student .*pick the 'distilled' sampler"):
        sample(loaded, texture_guidance=1.0)
    with pytest.raises(nodes_base.NodeInputError, match=r"^TGDM Sampler: .*set texture_guidance and geometry_guidance to 1"):
        sample(loaded, sampler="distilled")
    with pytest.raises(nodes_base.NodeInputError, match=r"^TGDM Sampler: the 'distilled' sampler runs few-step students"):
        sample(load(), sampler="distilled", texture_guidance=1.0)


def test_load_generator_errors_name_the_file_and_folder(models):
    with pytest.raises(nodes_base.NodeInputError, match=r"^Load Generator: .*'absent.safetensors' not found.*ComfyUI/models/talkingface/"):
        load("absent.safetensors")
    other = models / "talkingface" / "lora.safetensors"
    save_file({"w": torch.zeros(1)}, str(other), metadata={"format": "lora"})
    try:
        with pytest.raises(nodes_base.NodeInputError, match="^Load Generator: lora.safetensors is not a TGDM"):
            load("lora.safetensors")
    finally:
        other.unlink()


def test_example_workflow_runs_on_the_demo_generator(models, tmp_path):
    import shutil

    for asset in (PACK_ROOT / "tests" / "assets").iterdir():
        shutil.copy(asset, tmp_path / "input")
    workflow = json.loads(WORKFLOW.read_text())
    assert {node["type"] for node in workflow["nodes"]} <= set(pack.NODE_CLASS_MAPPINGS) | {
        "TalkingFaceLoadGenerator", "TalkingFaceTGDMSampler", "SaveImage", "PreviewImage", "Note"}
    mappings = {**pack.NODE_CLASS_MAPPINGS, "TalkingFaceLoadGenerator": generator_nodes.LoadGenerator,
                "TalkingFaceTGDMSampler": generator_nodes.TGDMSampler}
    recorded = run_workflow(WORKFLOW, mappings)
    images = [outputs["images"] for outputs in recorded.values()]
    assert any(image.shape[1:] == (64, 64, 3) and image.shape[0] == 8 for image in images)


def test_load_generator_offers_the_demo_generator_that_ships_with_an_empty_models_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(tmp_path / "models"))
    demo = generator_nodes.DEMO_GENERATOR
    assert (PACK_ROOT / "assets" / demo).is_file()
    assert generator_nodes.LoadGenerator.INPUT_TYPES()["required"]["checkpoint"][0] == [demo]
    assert generator_nodes.LoadGenerator.VALIDATE_INPUTS(checkpoint=demo) is True
    assert load(demo).model.config.image_size == 64
    missing = generator_nodes.LoadGenerator.VALIDATE_INPUTS(checkpoint="mine.safetensors")
    assert missing.startswith("Load Generator: checkpoint: ") and "'mine.safetensors' not found" in missing
    assert "ComfyUI/models/talkingface/" in missing and demo in missing
