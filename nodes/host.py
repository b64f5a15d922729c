"""Everything the pack needs from its host: devices, model folders, progress, interruption, files.

Inside ComfyUI this delegates to ``comfy.model_management``, ``comfy.utils.ProgressBar`` and
``folder_paths``; anywhere else (tests, scripts) it falls back to plain torch and folders named by
the environment variables ``TALKINGFACE_MODELS_DIR``, ``TALKINGFACE_INPUT_DIR`` and
``TALKINGFACE_OUTPUT_DIR`` (default ``./models``, ``./input``, ``./output``).
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from ..pipelines.errors import ModelFileError, TalkingFaceError

try:
    import comfy.model_management as model_management
    import comfy.utils as comfy_utils
    import folder_paths
except ImportError:
    model_management = comfy_utils = folder_paths = None

IN_COMFYUI = folder_paths is not None
PACK_ROOT = Path(__file__).resolve().parents[1]
# Longest side of the previews shown on a node while it works (ComfyUI's own default).
PREVIEW_SIZE = 512

# Model folders under ComfyUI/models/ and the file types each holds.
MODEL_FOLDERS: dict[str, set[str]] = {
    "3dmm": {".mat"},
    "insightface": {".onnx"},
    "dlib": {".dat"},
    "talkingface": {".safetensors"},
    # core ComfyUI folders; named here so they are found outside ComfyUI too
    "vae": {".safetensors"},
    "text_encoders": {".safetensors", ".sft", ".pt", ".pth", ".bin", ".ckpt"},
}
# ComfyUI reads models/clip/ as part of text_encoders; outside ComfyUI the fallback does the same.
FOLDER_ALIASES: dict[str, tuple[str, ...]] = {"text_encoders": ("clip",)}
# Model files that ship inside the pack, offered after the user's own files of the same folder
# (a user file of the same name wins).
BUNDLED_MODELS: dict[str, Path] = {"talkingface": PACK_ROOT / "assets"}


def register_model_folders() -> None:
    """Add the pack's folders to ComfyUI's registry, keeping paths an extra_model_paths.yaml already gave."""
    if not IN_COMFYUI:
        return
    for name, extensions in MODEL_FOLDERS.items():
        default_path = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[name]
            if default_path not in paths:
                paths.append(default_path)
            folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)
        else:
            folder_paths.folder_names_and_paths[name] = ([default_path], set(extensions))


def _fallback_dir(variable: str, default: str) -> Path:
    return Path(os.environ.get(variable, default))


def model_folder_hint(folder: str) -> str:
    return " or ".join(f"ComfyUI/models/{name}/" for name in (folder, *FOLDER_ALIASES.get(folder, ())))


def _fallback_roots(folder: str) -> list[Path]:
    models = _fallback_dir("TALKINGFACE_MODELS_DIR", "models")
    return [models / name for name in (folder, *FOLDER_ALIASES.get(folder, ()))]


def _bundled_models(folder: str) -> dict[str, Path]:
    root = BUNDLED_MODELS.get(folder)
    if root is None or not root.is_dir():
        return {}
    return {path.name: path for path in sorted(root.iterdir())
            if path.is_file() and path.suffix.lower() in MODEL_FOLDERS[folder]}


def list_models(folder: str) -> list[str]:
    """Files in a model folder, as relative names (subfolders included), sorted; then the files the
    pack ships for that folder."""
    if IN_COMFYUI:
        own = list(folder_paths.get_filename_list(folder))
    else:
        own = sorted({
            path.relative_to(root).as_posix()
            for root in _fallback_roots(folder) if root.is_dir()
            for path in root.rglob("*")
            if path.is_file() and path.suffix.lower() in MODEL_FOLDERS[folder]
        })
    return own + [name for name in _bundled_models(folder) if name not in own]


def _is_plain_relative(name: str) -> bool:
    """A non-empty relative name without '..' on POSIX and Windows alike."""
    return bool(name) and not any(
        flavour(name).is_absolute() or ".." in flavour(name).parts or flavour(name).drive
        for flavour in (PurePosixPath, PureWindowsPath)
    )


def find_model(folder: str, name: str) -> Path | None:
    """The full path of model file ``name`` in ``folder`` (user files first, then the pack's own), or
    None. Names that are absolute or climb out with '..' are never looked up."""
    if not _is_plain_relative(name):
        return None
    if IN_COMFYUI:
        found = folder_paths.get_full_path(folder, name)
        if found:
            return Path(found)
    else:
        for root in _fallback_roots(folder):
            if (root / name).is_file():
                return root / name
    return _bundled_models(folder).get(name)


def missing_model_message(folder: str, name: str, what: str = "model file") -> str:
    """Why ``name`` cannot be loaded, naming the file and the folder it belongs in."""
    if not name:
        return f"no {what} chosen: put one into {model_folder_hint(folder)} and pick it from the list"
    if not _is_plain_relative(name):
        return f"{what} '{name}' is not a file name inside {model_folder_hint(folder)}: pick a file from the list"
    return f"{what} '{name}' not found: put it into {model_folder_hint(folder)}"


def model_path(folder: str, name: str, what: str = "model file") -> Path:
    """The full path of a model file, or an error that names the file and the folder it belongs in."""
    found = find_model(folder, name)
    if found is None:
        raise ModelFileError(missing_model_message(folder, name, what))
    return found


def model_folder_roots(folder: str) -> list[Path]:
    """Every root registered for a model folder (ComfyUI may list several via extra_model_paths.yaml)."""
    if IN_COMFYUI:
        return [Path(p) for p in folder_paths.get_folder_paths(folder)]
    return _fallback_roots(folder)


def model_packs(folder: str, subfolder: str) -> dict[str, Path]:
    """Model packs: the subfolders of ``<root>/<subfolder>/`` for every root of ``folder`` (e.g. the
    insightface packs in ``models/insightface/models/<pack>/``), first root first."""
    packs: dict[str, Path] = {}
    for root in model_folder_roots(folder):
        base = root / subfolder
        if base.is_dir():
            for pack in sorted(base.iterdir()):
                if pack.is_dir():
                    packs.setdefault(pack.name, pack)
    return packs


def model_pack_path(folder: str, subfolder: str, name: str) -> Path:
    """The folder of pack ``name``, or where it belongs (the first root) when it is not there, so the
    loader can say which folder it looked in."""
    packs = model_packs(folder, subfolder)
    if name in packs:
        return packs[name]
    return model_folder_roots(folder)[0] / subfolder / name


def input_directory() -> Path:
    if IN_COMFYUI:
        return Path(folder_paths.get_input_directory())
    return _fallback_dir("TALKINGFACE_INPUT_DIR", "input")


def output_directory() -> Path:
    if IN_COMFYUI:
        return Path(folder_paths.get_output_directory())
    return _fallback_dir("TALKINGFACE_OUTPUT_DIR", "output")


INPUT_FOLDER_HINT = "ComfyUI/input/"


def input_file(name: str, input_name: str = "file") -> Path:
    """The file ``name`` inside ComfyUI's input folder. Absolute names, '..' and links that lead out of
    the folder are refused, so a prompt cannot make a node read any other file the server can read."""
    if not _is_plain_relative(name):
        raise TalkingFaceError(
            f"{input_name} '{name}' is not a file name inside {INPUT_FOLDER_HINT}: give a name relative to "
            "that folder (no absolute path, no '..'), as the list shows it"
        )
    root = input_directory()
    path = root / name
    if root.resolve() not in path.resolve().parents:
        raise TalkingFaceError(
            f"{input_name} '{name}' is a link that leads out of {INPUT_FOLDER_HINT}: copy the file itself into that folder"
        )
    if not path.is_file():
        raise TalkingFaceError(
            f"{input_name} '{name}' is not in {INPUT_FOLDER_HINT}: copy (or upload) the file there and pick it from the list"
        )
    return path


def input_files(suffixes: set[str]) -> list[str]:
    """Files with these suffixes in ComfyUI's input folder (any subfolder), as relative names, sorted."""
    root = input_directory()
    if not root.is_dir():
        return []
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in suffixes
    )


def torch_device() -> torch.device:
    if IN_COMFYUI:
        return model_management.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    if IN_COMFYUI:
        return model_management.unet_offload_device()
    return torch.device("cpu")


def throw_if_interrupted() -> None:
    """Stop between batches when the user presses Cancel in ComfyUI."""
    if IN_COMFYUI:
        model_management.throw_exception_if_processing_interrupted()


class Progress:
    """Progress of one node's work in ComfyUI's progress bar (silent outside ComfyUI)."""

    def __init__(self, total: int) -> None:
        self.bar = comfy_utils.ProgressBar(total) if IN_COMFYUI else None
        self.done = 0

    def advance(self, steps: int = 1, preview: torch.Tensor | None = None) -> None:
        """Move on by ``steps``; ``preview`` (one IMAGE frame ``[H, W, 3]`` in 0..1) is shown on the node."""
        self.done += steps
        if self.bar is None:
            return
        if preview is None:
            self.bar.update(steps)
            return
        from PIL import Image

        pixels = (preview.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
        self.bar.update_absolute(self.bar.current + steps, None, ("JPEG", Image.fromarray(pixels), PREVIEW_SIZE))

    def report(self, done: int, preview: torch.Tensor | None = None) -> None:
        """The callback pipelines take (``on_frames``, ``on_chunk``, ``on_batch``): they say how much is
        done so far; this stops there when the user pressed Cancel, else moves the bar to ``done``."""
        throw_if_interrupted()
        self.advance(done - self.done, preview)


def next_free_path(directory: Path, prefix: str, suffix: str) -> Path:
    """``directory/prefix_00001_.suffix`` with the first counter that is not taken: never overwrite."""
    target = (directory / prefix).resolve()
    if directory.resolve() not in target.parents:
        raise TalkingFaceError(f"filename_prefix '{prefix}' points outside the output folder: give a path inside it, without '..'")
    target.parent.mkdir(parents=True, exist_ok=True)
    counter = 1
    while True:
        candidate = target.parent / f"{target.name}_{counter:05d}_{suffix}"
        if not candidate.exists():
            return candidate
        counter += 1

