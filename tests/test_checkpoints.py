"""The one checkpoint layer every model file goes through: config JSON in the metadata, strict weights."""
from dataclasses import dataclass

import pytest
import torch
from packloader import pack_import
from torch import nn

checkpoints = pack_import("pipelines.checkpoints")
errors = pack_import("pipelines.errors")


@dataclass(frozen=True)
class TinyConfig(checkpoints.CheckpointConfig):
    DESCRIPTION = "tiny"
    LEGACY_DEFAULTS = {"bias": False}

    width: int = 3
    channels: tuple[int, ...] = (2, 4)
    bias: bool = True

    def __post_init__(self) -> None:
        if self.width < 1:
            raise errors.TalkingFaceError("width must be at least 1")


class Tiny(nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.layer = nn.Linear(config.width, config.channels[-1], bias=config.bias)


def save(tmp_path, model, name="tiny.safetensors"):
    path = tmp_path / name
    checkpoints.save_checkpoint(model, path, {"format": "test.tiny", "config": model.config.to_json()})
    return path


def load(path):
    metadata = checkpoints.read_checkpoint_metadata(path, "tiny checkpoint")
    model = Tiny(TinyConfig.from_metadata(metadata, path.name))
    checkpoints.load_weights_strictly(model, checkpoints.read_checkpoint_weights(path), path.name, "tiny")
    return model


def test_config_and_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Tiny(TinyConfig(width=5, channels=(3, 6)))
    loaded = load(save(tmp_path, model))
    assert loaded.config == model.config and isinstance(loaded.config.channels, tuple)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_fields_older_files_lack_take_their_legacy_value():
    assert TinyConfig.from_json('{"width": 2, "channels": [1, 2]}') == TinyConfig(width=2, channels=(1, 2), bias=False)


def test_config_errors_name_the_file(tmp_path):
    path = tmp_path / "future.safetensors"
    with pytest.raises(errors.ModelFileError, match=r"^future.safetensors: the tiny config has unknown settings .*\['wings'\]"):
        TinyConfig.from_metadata({"config": '{"width": 2, "wings": 2}'}, path.name)
    with pytest.raises(errors.ModelFileError, match=r"^future.safetensors has no 'config' in its metadata"):
        TinyConfig.from_metadata({"format": "test.tiny"}, path.name)
    with pytest.raises(errors.ModelFileError, match=r"^future.safetensors: the tiny config in the checkpoint is not valid JSON"):
        TinyConfig.from_metadata({"config": "{width"}, path.name)
    with pytest.raises(errors.ModelFileError, match=r"^future.safetensors: width must be at least 1"):
        TinyConfig.from_metadata({"config": '{"width": 0}'}, path.name)


def test_strict_loading_names_missing_unexpected_and_wrong_shape_keys(tmp_path):
    model = Tiny(TinyConfig())
    weights = dict(model.state_dict())
    without_bias = {k: v for k, v in weights.items() if k != "layer.bias"}
    with pytest.raises(errors.ModelFileError, match=r"^a.safetensors does not match its own tiny config: missing 1 weights, e.g. \['layer.bias'\]$"):
        checkpoints.load_weights_strictly(Tiny(TinyConfig()), without_bias, "a.safetensors", "tiny")
    with pytest.raises(errors.ModelFileError, match=r"1 weights the config does not use, e.g. \['spare'\]"):
        checkpoints.load_weights_strictly(Tiny(TinyConfig()), {**weights, "spare": torch.zeros(1)}, "a.safetensors", "tiny")
    with pytest.raises(errors.ModelFileError, match=r"'layer.weight' is \(4, 2\), the config needs \(4, 3\)"):
        checkpoints.load_weights_strictly(Tiny(TinyConfig()), {**weights, "layer.weight": torch.zeros(4, 2)}, "a.safetensors", "tiny")


def test_weight_mismatch_lists_each_kind():
    expected = {"a": torch.zeros(2), "b": torch.Size([3, 1]), "c": (4,)}
    mismatch = checkpoints.WeightMismatch.between(expected, {"a": torch.zeros(2), "b": torch.zeros(3, 2), "d": torch.zeros(1)})
    assert mismatch and mismatch.missing == ["c"] and mismatch.unexpected == ["d"]
    assert mismatch.shape_notes() == ["b (3, 2) (expected (3, 1))"]
    assert mismatch.labelled(", ".join) == ["missing c", "unexpected d", "wrong shape b (3, 2) (expected (3, 1))"]
    assert not checkpoints.WeightMismatch.between(expected, {"a": torch.zeros(2), "b": torch.zeros(3, 1), "c": torch.zeros(4)})
