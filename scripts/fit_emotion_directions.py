"""Fit a face model's per-emotion expression directions from labelled coefficient sequences.

    python -m scripts.fit_emotion_directions --labels labels.csv \\
        --output ComfyUI/models/talkingface/emotion_directions_bfm.safetensors

``labels.csv`` has a header and one row per coefficient file (saved by Save Coefficients, e.g.
from MEAD clips run through Analyze Faces → Fit 3DMM): ``file,emotion[,intensity]``. ``file`` is
relative to the CSV's folder; ``emotion`` is one of neutral, angry, contempt, disgusted, fear,
happy, sad, surprised; ``intensity`` (optional, default 1) is the label's strength, e.g. MEAD's
level 1/2/3 as 0.33/0.67/1. Every frame of a file carries its row's label. The table is what
Apply Emotion uses for a face model without named expressions (BFM).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from pipelines.emotion.directions import fit_emotion_directions
from pipelines.errors import TalkingFaceError
from pipelines.morphable.coefficients import FaceCoefficients


def read_labelled_expressions(labels_csv: Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(label per frame, expressions ``[N, n_exp]``, intensity per frame) from a labels CSV."""
    with open(labels_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "emotion"} <= set(rows[0]):
        raise TalkingFaceError(f"{labels_csv} needs a header 'file,emotion[,intensity]' and at least one row")
    labels, expressions, intensities = [], [], []
    for row in rows:
        sequence = FaceCoefficients.load(labels_csv.parent / row["file"])
        labels += [row["emotion"].strip()] * sequence.frames
        expressions.append(sequence.expression.float())
        intensities += [float(row.get("intensity") or 1.0)] * sequence.frames
    return labels, torch.cat(expressions), torch.tensor(intensities)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, required=True, help="CSV: file,emotion[,intensity]")
    parser.add_argument("--output", type=Path, required=True, help="the .safetensors table to write")
    parser.add_argument("--face-model", default="BFM_model_front", help="the face model's name, kept in the metadata")
    args = parser.parse_args(argv)
    if args.output.exists():
        parser.error(f"{args.output} exists; choose another name (nothing is overwritten)")
    labels, expressions, intensities = read_labelled_expressions(args.labels)
    directions, counts = fit_emotion_directions(labels, expressions, intensities)
    directions.save(args.output, face_model=args.face_model, samples=counts)
    print(f"wrote {args.output}: {len(labels)} frames, per emotion {counts}")
    return args.output


if __name__ == "__main__":
    main()
