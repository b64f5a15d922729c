"""Execute an editor-format workflow with the pack's nodes, the way ComfyUI's executor would.

ComfyUI is not installable from PyPI, so the few core nodes the example workflows use are replaced
by stand-ins that check what they receive; the real-host run (shared/tools/comfyui_host) runs the
same files inside a real ComfyUI.
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
NOTE_NODES = {"Note", "MarkdownNote"}  # editor-only: text for the user, never executed


def _check_image(images: torch.Tensor) -> torch.Tensor:
    assert images.ndim == 4 and images.shape[-1] == 3, f"IMAGE must be [B,H,W,3], got {tuple(images.shape)}"
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    return images


def _mask_to_image(mask: torch.Tensor) -> tuple[torch.Tensor]:
    assert mask.ndim == 3, f"MASK must be [B,H,W], got {tuple(mask.shape)}"
    return (mask.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous(),)


def load_image_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """What core LoadImage gives: every frame of the file as a batch, and a mask."""
    frames = [np.asarray(f.convert("RGB"), dtype=np.float32) / 255.0 for f in ImageSequence.Iterator(Image.open(path))]
    images = torch.from_numpy(np.stack(frames))
    return images, torch.zeros(images.shape[:3])


def _load_image(image: str) -> tuple[torch.Tensor, torch.Tensor]:
    return load_image_file(Path(os.environ["TALKINGFACE_INPUT_DIR"]) / image)


def _image_stitch(image1, direction, match_image_size, spacing_width, spacing_color, image2=None):
    assert direction == "right" and image2 is not None
    if match_image_size:
        # core ImageStitch matches the height and keeps image2's aspect ratio
        height = image1.shape[1]
        width = int(height * image2.shape[2] / image2.shape[1])
        image2 = torch.nn.functional.interpolate(image2.permute(0, 3, 1, 2), size=(height, width),
                                                 mode="bilinear").permute(0, 2, 3, 1)
    assert image1.shape[0] == image2.shape[0]
    return (torch.cat([image1, image2], dim=2),)


def _create_video(images, fps, audio=None):
    """Core CreateVideo: frames, a frame rate and optional AUDIO as one VIDEO value."""
    _check_image(images)
    assert fps > 0
    if audio is not None:
        assert audio["waveform"].ndim == 3 and audio["sample_rate"] > 0
    return ({"images": images, "fps": float(fps), "audio": audio},)


def _load_video(file: str) -> tuple[dict]:
    """Core LoadVideo + GetVideoComponents decode with PyAV: frames 0..1, the sound as [1, C, N] float."""
    import av

    path = Path(os.environ["TALKINGFACE_INPUT_DIR"]) / file
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = [torch.from_numpy(frame.to_ndarray(format="rgb24")) / 255.0 for frame in container.decode(video=0)]
    audio = None
    with av.open(str(path)) as container:
        if container.streams.audio:
            rate = container.streams.audio[0].sample_rate
            blocks = [frame.to_ndarray() for frame in container.decode(audio=0)]
            audio = {"waveform": torch.from_numpy(np.concatenate(blocks, axis=1)).unsqueeze(0), "sample_rate": rate}
    return ({"images": torch.stack(frames).float(), "fps": fps, "audio": audio},)


def _video_components(video: dict) -> tuple[torch.Tensor, dict | None, float]:
    return _check_image(video["images"]), video["audio"], video["fps"]


def _save_video(video, filename_prefix, format, codec):
    return {"images": _check_image(video["images"]), "fps": video["fps"], "audio": video["audio"]}


# core node -> (widget names in order, function returning outputs or recording images)
CORE_NODES = {
    "LoadImage": (["image", None], _load_image),
    "ImageStitch": (["direction", "match_image_size", "spacing_width", "spacing_color"], _image_stitch),
    "SaveImage": (["filename_prefix"], lambda images, filename_prefix: {"images": _check_image(images)}),
    "PreviewImage": ([], lambda images: {"images": _check_image(images)}),
    "MaskToImage": ([], _mask_to_image),
    "LoadVideo": (["file", None], _load_video),
    "GetVideoComponents": ([], _video_components),
    "CreateVideo": (["fps"], _create_video),
    "SaveVideo": (["filename_prefix", "format", "codec"], _save_video),
    "Preview3D": (["model_file"], lambda model_file: {"model_file": model_file}),
}


def _widget_names(node_class) -> list[str]:
    spec = node_class.INPUT_TYPES()
    names = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind = entry[0]
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                names.append(name)
                if kind == "INT" and (entry[1].get("control_after_generate") or name in ("seed", "noise_seed")):
                    names.append(None)  # the editor's "control after generate" widget value
    return names


def run_workflow(path: Path, node_mappings: dict) -> dict[int, dict]:
    """Run every node; return the recorded inputs of each output node, keyed by node id."""
    workflow = json.loads(Path(path).read_text())
    nodes = {node["id"]: node for node in workflow["nodes"] if node["type"] not in NOTE_NODES}
    links = {link[0]: link for link in workflow["links"]}
    results: dict[int, tuple] = {}
    recorded: dict[int, dict] = {}

    def evaluate(node_id: int) -> tuple:
        if node_id in results:
            return results[node_id]
        node = nodes[node_id]
        kind = node["type"]
        if kind in CORE_NODES:
            widget_names, function = CORE_NODES[kind]
        else:
            node_class = node_mappings[kind]
            widget_names = _widget_names(node_class)
            instance = node_class()
            function = getattr(instance, node_class.FUNCTION)
        inputs = {name: value for name, value in zip(widget_names, node["widgets_values"], strict=False) if name}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, origin, slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = evaluate(origin)[slot]
        output = function(**inputs)
        is_output = kind in ("SaveImage", "PreviewImage", "SaveVideo", "Preview3D") or getattr(
            node_mappings.get(kind), "OUTPUT_NODE", False)
        if is_output:
            recorded[node_id] = output
        if isinstance(output, dict):  # ComfyUI's {"ui": ..., "result": ...}
            output = output.get("result", ())
        elif is_output:
            output = ()
        results[node_id] = output
        return output

    for node_id in sorted(nodes, key=lambda i: nodes[i].get("order", 0)):
        evaluate(node_id)
    return recorded


def validate_workflow(path: Path, node_mappings: dict) -> dict[int, str]:
    """What ComfyUI's validation says before anything runs: the message of every node whose
    ``VALIDATE_INPUTS`` refuses its values, keyed by node id. As in ComfyUI, the method receives only
    the inputs it names; a connected input arrives as None."""
    workflow = json.loads(Path(path).read_text())
    problems = {}
    for node in workflow["nodes"]:
        node_class = node_mappings.get(node["type"])
        check = getattr(node_class, "VALIDATE_INPUTS", None)
        if check is None:
            continue
        values = dict(zip(_widget_names(node_class), node["widgets_values"], strict=False))
        values.update({socket["name"]: None for socket in node.get("inputs", []) if socket.get("link") is not None})
        wanted = inspect.signature(check).parameters
        verdict = check(**{name: value for name, value in values.items() if name in wanted and name})
        if verdict is not True:
            problems[node["id"]] = str(verdict)
    return problems

