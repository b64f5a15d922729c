"""The README's demo command runs on a fresh clone: committed checkpoint, project-made inputs, mp4 + panel."""
import json
import subprocess
import sys

from packloader import PACK_ROOT


def test_demo_writes_a_video_and_a_panel(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--out", str(tmp_path), "--frames", "3", "--steps", "1",
         "--display-size", "64"],
        cwd=PACK_ROOT, capture_output=True, text=True, check=True,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 3
    import av

    with av.open(str(tmp_path / "demo.mp4")) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(frames) == 3 and frames[0].shape == (64, 4 * 64, 3), "source | I_3d | textured | generated"
    assert (tmp_path / "demo_panel.png").stat().st_size > 1000


def test_demo_names_the_training_command_when_the_checkpoint_is_missing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "none.safetensors")],
        cwd=PACK_ROOT, capture_output=True, text=True,
    )
    assert result.returncode != 0 and "python -m scripts.train_tgdm" in result.stderr
