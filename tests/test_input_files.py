"""Nodes that read a file the user names (Load Audio, Load Coefficients) read it from ComfyUI's input
folder only: ComfyUI skips its list check for inputs a node validates itself, so an API prompt could
otherwise name any file the server can read."""
import re
import shutil

import pytest
from packloader import PACK_ROOT, load_pack, pack_import

load_pack()
audio_nodes = pack_import("nodes.audio")
coefficient_nodes = pack_import("nodes.coefficients")
base = pack_import("nodes.base")
ASSETS = PACK_ROOT / "tests" / "assets"
READERS = {
    audio_nodes.LoadAudio: ("talkingface_audio_speech.wav", {"start_seconds": 0.0, "duration_seconds": 0.0}),
    coefficient_nodes.LoadCoefficients: ("talkingface_demo_coefficients.safetensors", {}),
}


@pytest.fixture
def outside(host_dirs, tmp_path):
    """Each reader's file both outside the input folder (beside it) and inside it."""
    secret = tmp_path / "secret"
    secret.mkdir()
    for name, _ in READERS.values():
        shutil.copy(ASSETS / name, secret / name)
        shutil.copy(ASSETS / name, host_dirs["input"] / name)
    return secret


def _names_that_leave(node, outside, host_dirs):
    name, _ = READERS[node]
    link = host_dirs["input"] / f"link_{name}"
    link.symlink_to(outside / name)
    return {
        "an absolute path": str(outside / name),
        "'..'": f"../secret/{name}",
        "a link that leaves the folder": link.name,
    }


@pytest.mark.parametrize("node", list(READERS), ids=lambda node: node.__name__)
def test_files_outside_the_input_folder_are_refused_before_and_at_run_time(node, outside, host_dirs):
    name, other_inputs = READERS[node]
    assert node.VALIDATE_INPUTS(file=name) is True
    node().execute(file=name, **other_inputs)
    for how, bad in _names_that_leave(node, outside, host_dirs).items():
        message = node.VALIDATE_INPUTS(file=bad)
        assert isinstance(message, str) and message.startswith(f"{node.DISPLAY_NAME}: file '{bad}'"), how
        assert "ComfyUI/input/" in message, how
        with pytest.raises(base.NodeInputError, match=f"^{re.escape(node.DISPLAY_NAME)}: file"):
            node().execute(file=bad, **other_inputs)
        assert node.IS_CHANGED(file=bad, **other_inputs) == ""


def test_links_inside_the_input_folder_and_subfolders_are_fine(outside, host_dirs):
    (host_dirs["input"] / "takes").mkdir()
    shutil.move(host_dirs["input"] / "talkingface_audio_speech.wav", host_dirs["input"] / "takes" / "speech.wav")
    (host_dirs["input"] / "speech_link.wav").symlink_to(host_dirs["input"] / "takes" / "speech.wav")
    for name in ("takes/speech.wav", "speech_link.wav"):
        assert audio_nodes.LoadAudio.VALIDATE_INPUTS(file=name) is True
        audio, _ = audio_nodes.LoadAudio().execute(file=name, start_seconds=0.0, duration_seconds=0.0)
        assert audio["sample_rate"] == 16000


def test_model_names_stay_inside_their_model_folder(host_dirs, tmp_path):
    host = pack_import("nodes.host")
    generator_nodes = pack_import("nodes.generator")
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"not a model")
    for bad in (str(outside), "../elsewhere.safetensors", "..\\elsewhere.safetensors"):
        assert host.find_model("talkingface", bad) is None
        message = generator_nodes.LoadGenerator.VALIDATE_INPUTS(checkpoint=bad)
        assert message.startswith("Load Generator: checkpoint: ") and "is not a file name inside ComfyUI/models/talkingface/" in message
        with pytest.raises(base.NodeInputError, match="^Load Generator: .*not a file name inside"):
            generator_nodes.LoadGenerator().execute(checkpoint=bad, precision="auto")
