"""Per-emotion expression directions: the demo face's recipes, the fitted table (BFM) and its
script, adding an emotion to a coefficient sequence."""
import csv
import sys

import pytest
import torch
from packloader import PACK_ROOT, pack_import

directions_module = pack_import("pipelines.emotion.directions")
emotion = pack_import("pipelines.emotion.emotion")
coefficients_module = pack_import("pipelines.morphable.coefficients")
demo_model = pack_import("pipelines.morphable.demo_model")
model_module = pack_import("pipelines.morphable.model")
errors = pack_import("pipelines.errors")
FaceCoefficients = coefficients_module.FaceCoefficients
MEAD = emotion.MEAD_EMOTIONS


@pytest.fixture(scope="module")
def demo():
    return demo_model.demo_face_model(resolution=12)


@pytest.fixture(scope="module")
def unnamed_model():
    """A model without named expressions, as BFM_model_front.mat is."""
    arrays = demo_model.build_demo_face_arrays(resolution=12)
    del arrays["exNames"]
    return model_module.MorphableModel.from_mat_arrays(arrays, name="BFM_model_front")


def one_hot(name, intensity=1.0):
    weights = torch.zeros(len(MEAD))
    weights[MEAD.index(name)] = 1.0
    return emotion.TextEmotion(torch.zeros(4), weights, intensity, name, "test:4")


def landmarks(model, expression):
    vertices = model.shape(torch.zeros(1, model.dims.identity), expression.view(1, -1))
    return vertices[0, model.landmark_ids]


def test_demo_recipes_use_the_named_blendshapes(demo):
    table = directions_module.demo_emotion_directions(demo)
    assert table.directions.shape == (8, 64) and not table.directions[0].any()
    happy = table.directions[MEAD.index("happy")]
    assert happy[demo.expression_index("smile")] == pytest.approx(0.9)
    assert set(directions_module.DEMO_EMOTION_BLENDSHAPES) == set(MEAD)
    names = {name for recipe in directions_module.DEMO_EMOTION_BLENDSHAPES.values() for name in recipe}
    assert names <= set(demo_model.SEMANTIC_EXPRESSIONS)


def test_demo_emotions_move_the_face_as_named(demo):
    table = directions_module.demo_emotion_directions(demo)
    neutral = landmarks(demo, table.neutral)
    happy = landmarks(demo, table.expression(one_hot("happy")))
    # iBUG 48/54 are the mouth corners: a smile lifts them.
    assert (happy[[48, 54], 1] - neutral[[48, 54], 1]).min() > 0.01
    surprised = landmarks(demo, table.expression(one_hot("surprised")))
    mouth_gap = lambda points: float(points[62, 1] - points[66, 1])  # noqa: E731 (inner upper − lower lip)
    brow_height = lambda points: float(points[17:27, 1].mean())  # noqa: E731
    assert mouth_gap(surprised) > mouth_gap(neutral) + 0.02
    assert brow_height(surprised) > brow_height(neutral) + 0.01
    sad = landmarks(demo, table.expression(one_hot("sad")))
    assert (sad[[48, 54], 1] - neutral[[48, 54], 1]).max() < 0  # corners down


def test_intensity_zero_and_neutral_weights_give_the_neutral_expression(demo):
    table = directions_module.demo_emotion_directions(demo)
    assert torch.equal(table.expression(one_hot("angry", intensity=0.0)), table.neutral)
    assert torch.equal(table.offset(one_hot("neutral")), torch.zeros(64))
    mixed = emotion.TextEmotion(torch.zeros(4), torch.full((8,), 1 / 8), 1.0, "mix", "test:4")
    assert torch.allclose(table.offset(mixed), table.directions.sum(0) / 8)
    assert torch.allclose(table.offset(one_hot("fear", 2.0)), 2 * table.offset(one_hot("fear", 1.0)))


def test_apply_emotion_adds_to_every_frame_with_a_ramp(demo):
    table = directions_module.demo_emotion_directions(demo)
    base = FaceCoefficients.neutral(10)
    base = base.replace(expression=torch.randn(10, 64), rotation=torch.randn(10, 3))
    happy = one_hot("happy")
    result = directions_module.apply_emotion(base, happy, table)
    assert torch.allclose(result.expression - base.expression, table.offset(happy).expand(10, -1))
    assert torch.equal(result.rotation, base.rotation) and torch.equal(result.identity, base.identity)
    ramped = directions_module.apply_emotion(base, happy, table, ramp_in_frames=4)
    change = (ramped.expression - base.expression).norm(dim=1)
    assert change[0] == 0 and torch.all(change[1:5].diff() > 0)
    assert torch.allclose(change[4:], change[9].expand(6))
    with pytest.raises(errors.TalkingFaceError, match="same face model"):
        directions_module.apply_emotion(FaceCoefficients.neutral(2, coefficients_module.CoefficientDims(80, 10, 80)), happy, table)


def test_model_without_names_needs_a_table(unnamed_model):
    with pytest.raises(errors.TalkingFaceError, match=r"BFM_model_front has no named expressions.*scripts.fit_emotion_directions.*models/talkingface"):
        directions_module.emotion_directions_for(unnamed_model)


def synthetic_labelled(count_per_emotion=40, noise=0.05, seed=0):
    """Expressions ``neutral + s · d_k + noise`` with known directions and intensities."""
    generator = torch.Generator().manual_seed(seed)
    truth = torch.randn(8, 64, generator=generator)
    truth[0] = 0
    neutral = 0.3 * torch.randn(64, generator=generator)
    labels, rows, scales = [], [], []
    for k, name in enumerate(MEAD):
        s = torch.tensor([1 / 3, 2 / 3, 1.0])[torch.randint(0, 3, (count_per_emotion,), generator=generator)]
        rows.append(neutral + s[:, None] * truth[k] + noise * torch.randn(count_per_emotion, 64, generator=generator))
        labels += [name] * count_per_emotion
        scales.append(s)
    return labels, torch.cat(rows), torch.cat(scales), truth, neutral


def test_fitter_recovers_directions_from_labelled_data():
    labels, expressions, scales, truth, neutral = synthetic_labelled()
    table, counts = directions_module.fit_emotion_directions(labels, expressions, scales)
    assert counts == [40] * 8
    assert (table.neutral - neutral).abs().max() < 0.05
    error = (table.directions - truth).norm(dim=1)[1:] / truth[1:].norm(dim=1)
    assert error.max() < 0.03
    # Ignoring the intensity labels biases the directions (MEAD's levels matter).
    unscaled, _ = directions_module.fit_emotion_directions(labels, expressions)
    assert ((unscaled.directions - truth).norm(dim=1)[1:] / truth[1:].norm(dim=1)).min() > 0.1


def test_fitter_rejects_bad_labels():
    labels, expressions, *_ = synthetic_labelled(count_per_emotion=2)
    with pytest.raises(errors.TalkingFaceError, match="unknown emotion labels"):
        directions_module.fit_emotion_directions(["joy"] + labels[1:], expressions)
    keep = [i for i, label in enumerate(labels) if label != "contempt"]
    with pytest.raises(errors.TalkingFaceError, match=r"no samples labelled \['contempt'\]"):
        directions_module.fit_emotion_directions([labels[i] for i in keep], expressions[keep])


def test_table_file_round_trip_and_checks(tmp_path, unnamed_model):
    labels, expressions, scales, *_ = synthetic_labelled(count_per_emotion=3)
    table, counts = directions_module.fit_emotion_directions(labels, expressions, scales)
    path = tmp_path / "emotion_directions_bfm.safetensors"
    table.save(path, face_model="BFM_model_front", samples=counts)
    loaded = directions_module.emotion_directions_for(unnamed_model, path)
    assert torch.equal(loaded.directions, table.directions) and torch.equal(loaded.neutral, table.neutral)
    small = directions_module.EmotionDirections(torch.zeros(8, 10), torch.zeros(10), "small")
    small.save(tmp_path / "small.safetensors", face_model="other")
    with pytest.raises(errors.ModelFileError, match="10 expression coefficients but BFM_model_front has 64"):
        directions_module.emotion_directions_for(unnamed_model, tmp_path / "small.safetensors")
    FaceCoefficients.neutral(2).save(tmp_path / "coeffs.safetensors")
    with pytest.raises(errors.ModelFileError, match="not an emotion direction table"):
        directions_module.EmotionDirections.load(tmp_path / "coeffs.safetensors")


def test_fit_script_on_labelled_coefficient_files(tmp_path, capsys):
    labels, expressions, scales, truth, _ = synthetic_labelled(count_per_emotion=30, noise=0.02)
    (tmp_path / "clips").mkdir()
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "emotion", "intensity"])
        for name in MEAD:  # one clip per (emotion, level), as MEAD is organised
            for level in (1 / 3, 2 / 3, 1.0):
                rows = [i for i in range(len(labels)) if labels[i] == name and abs(scales[i] - level) < 1e-6]
                clip = FaceCoefficients.neutral(len(rows)).replace(expression=expressions[rows])
                clip.save(tmp_path / "clips" / f"{name}_{level:.2f}.safetensors")
                writer.writerow([f"clips/{name}_{level:.2f}.safetensors", name, f"{level:.6f}"])
    output = tmp_path / "emotion_directions_bfm.safetensors"
    sys.path.insert(0, str(PACK_ROOT))
    try:
        from scripts.fit_emotion_directions import main
    finally:
        sys.path.remove(str(PACK_ROOT))
    arguments = ["--labels", str(tmp_path / "labels.csv"), "--output", str(output)]
    assert main(arguments) == output
    table = directions_module.EmotionDirections.load(output)
    assert ((table.directions - truth).norm(dim=1)[1:] / truth[1:].norm(dim=1)).max() < 0.03
    with pytest.raises(SystemExit):
        main(arguments)
    assert "exists" in capsys.readouterr().err
