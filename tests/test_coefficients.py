import pytest
import torch
from packloader import pack_import

coefficients = pack_import("pipelines.morphable.coefficients")
errors = pack_import("pipelines.errors")
FaceCoefficients = coefficients.FaceCoefficients


def random_sequence(frames: int, seed: int = 0) -> "FaceCoefficients":
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randn(frames, 257, generator=generator)
    return FaceCoefficients.from_flat(flat, gaze=torch.randn(frames, 2, generator=generator))


def test_flat_layout_is_deep3dfacerecon_order():
    flat = torch.arange(257, dtype=torch.float32).unsqueeze(0)
    coeffs = FaceCoefficients.from_flat(flat)
    assert coeffs.identity[0, 0] == 0 and coeffs.identity.shape == (1, 80)
    assert coeffs.expression[0, 0] == 80 and coeffs.expression.shape == (1, 64)
    assert coeffs.texture[0, 0] == 144 and coeffs.texture.shape == (1, 80)
    assert coeffs.rotation.tolist() == [[224, 225, 226]]
    assert coeffs.lighting[0, 0] == 227 and coeffs.lighting.shape == (1, 27)
    assert coeffs.translation.tolist() == [[254, 255, 256]]
    assert torch.equal(coeffs.to_flat(), flat)
    assert torch.equal(coeffs.gaze, torch.zeros(1, 2))


def test_slicing_indexing_and_concatenation_over_time():
    seq = random_sequence(5)
    assert seq[1:3].frames == 2
    assert torch.equal(seq[2].to_flat(), seq.to_flat()[2:3])
    assert torch.equal(seq[-1].to_flat(), seq.to_flat()[4:5])
    joined = FaceCoefficients.concat([seq[:2], seq[2:]])
    assert torch.equal(joined.to_flat(), seq.to_flat())
    assert torch.equal(joined.gaze, seq.gaze)
    stretched = seq[0].repeat_to(4)
    assert stretched.frames == 4 and torch.equal(stretched.expression[3], seq.expression[0])


def test_save_load_round_trip(tmp_path):
    seq = random_sequence(7)
    path = tmp_path / "seq.safetensors"
    seq.save(path)
    loaded = FaceCoefficients.load(path)
    for name, value in seq.fields().items():
        assert torch.equal(getattr(loaded, name), value), name


def test_bad_sequences_and_files_give_clear_errors(tmp_path):
    with pytest.raises(errors.TalkingFaceError, match="'rotation' must have 3 values"):
        FaceCoefficients.neutral(2).replace(rotation=torch.zeros(2, 4))
    with pytest.raises(errors.TalkingFaceError, match="has 3 frames but 'identity' has 2"):
        FaceCoefficients.neutral(2).replace(gaze=torch.zeros(3, 2))
    with pytest.raises(errors.TalkingFaceError, match=r"\[frames, 257\]"):
        FaceCoefficients.from_flat(torch.zeros(2, 256))
    with pytest.raises(errors.TalkingFaceError, match="different face models"):
        small = FaceCoefficients.neutral(1, coefficients.CoefficientDims(10, 10, 10))
        FaceCoefficients.concat([small, FaceCoefficients.neutral(1)])
    with pytest.raises(errors.TalkingFaceError, match="cannot stretch a 2-frame"):
        FaceCoefficients.neutral(2).repeat_to(3)

    with pytest.raises(errors.ModelFileError, match="not found"):
        FaceCoefficients.load(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(errors.ModelFileError, match="could not be read as safetensors"):
        FaceCoefficients.load(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(errors.ModelFileError, match="is not a coefficient file"):
        FaceCoefficients.load(foreign)
