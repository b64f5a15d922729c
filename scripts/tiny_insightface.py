"""Write a tiny insightface model pack (``buffalo_l`` layout) with the real ONNX signatures.

    python -m scripts.tiny_insightface MODELS_DIR

insightface's model router picks each model's class from its input and output signature, so these
files go through the same ``FaceAnalysis`` code as the real ``det_10g``/``2d106det``/``1k3d68``/
``genderage``/``w600k_r50``. The weights are designed, not learned, so a test can predict what they
find:

* the detector (SCRFD signature: 9 outputs, strides 8/16/32, 2 anchors) treats bright pixels as
  face. Each run of bright 32-px cell columns is one face (up to four, left to right; faces side by
  side need a dark gap of about one cell between them): it fires at the stride-32 anchor nearest the
  face's centroid (a black frame has no face) and regresses its box and keypoints to that centroid,
  so a face rendered on a dark background is found where it is. The box side follows the face's
  area (cell coverage, so it does not change as the face moves over the cell grid); the five
  keypoints sit where the demo face has its eyes, nose tip and mouth corners.
* the landmark models return the demo face's 68 (and a 106-point) layout in the detector's box,
  moved along the demo face's jaw-opening motion by how dark the inner mouth is against the nose in
  the crop, so a talking face gives moving landmarks; the recognition model projects the pooled,
  aligned crop minus the average face's, so the same face gives similar embeddings and different
  faces do not.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from pipelines.face.alignment import similarity_transforms, warp_images
from pipelines.face.faces import FIVE_POINT_GROUPS, keypoints_from_landmarks68
from pipelines.morphable.camera import PerspectiveCamera
from pipelines.morphable.coefficients import FaceCoefficients
from pipelines.morphable.demo_model import demo_face_model
from pipelines.render.renderer import FaceRenderer

PACK_NAME = "buffalo_l"
OPSET = 18
IR_VERSION = 8
DETECTOR_STRIDES = (8, 16, 32)
# Detector input is normalised to (x - 127.5) / 128; a cell brighter than this counts as face.
BRIGHT_THRESHOLD = -0.6
COVERAGE_RAMP = (-0.75, -0.25)  # normalised brightness of no face (background) and of all face
PEAK_SHARPNESS = -8.0  # softmax over -8·(distance in cells)²: the nearest cell wins
MAX_FACES = 4  # faces the detector separates, left to right
LANDMARK_INPUT, LANDMARK_POOL = 192, 16
RECOGNITION_INPUT, RECOGNITION_POOL, EMBEDDING_SIZE = 112, 16, 512
# insightface's ArcFace alignment template (112 px): eyes, nose tip, mouth corners.
ARCFACE_TEMPLATE = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
FIVE_POINTS = FIVE_POINT_GROUPS
PORTRAIT_ASSET = "talkingface_face_portrait.png"
DRIVING_ASSET = "talkingface_face_driving.png"  # an animated PNG: core LoadImage reads its frames as a batch
BACKGROUND = (0.06, 0.07, 0.1)


def _normalised_pooled(crops: torch.Tensor, pool: int, mean: float, std: float) -> torch.Tensor:
    """What a pooled-linear ONNX model sees of ``[B, S, S, 3]`` crops (0..1): insightface's input
    normalisation, RGB, average-pooled, flattened channel-major — ``[B, 3·(S/pool)²]``."""
    pixels = (crops.permute(0, 3, 1, 2) * 255.0 - mean) / std
    return F.avg_pool2d(pixels, pool).flatten(1)


def _landmark_crops(images: torch.Tensor, centre: torch.Tensor, side: float) -> torch.Tensor:
    """insightface's landmark crop: 1.5 box sides around the box centre into 192 px, no rotation."""
    scale = LANDMARK_INPUT / (1.5 * side)
    transform = torch.tensor([[scale, 0.0, LANDMARK_INPUT / 2 - scale * float(centre[0])],
                              [0.0, scale, LANDMARK_INPUT / 2 - scale * float(centre[1])]])
    return warp_images(images, transform.expand(images.shape[0], 2, 3), LANDMARK_INPUT)


def canonical_face_layout() -> dict[str, np.ndarray | float]:
    """The demo face's landmarks relative to its bright area (what the tiny models reproduce), how they
    move when the jaw opens and how the mouth then looks in the landmark crop, and the average face's
    pooled ArcFace crop."""
    model = demo_face_model(16)
    coeffs = FaceCoefficients.neutral(2, model.dims)
    coeffs.translation[:, 2] = -10.0  # half size, so the whole head is on the canvas
    coeffs.expression[1, model.expression_index("jaw_open")] = 1.0
    maps = FaceRenderer(model, PerspectiveCamera.deep3d(224)).render(coeffs)
    # What the detector sees as face: pixels brighter than its threshold (on a black background).
    normalised = (maps.image[0].mean(-1) * 255.0 - 127.5) / 128.0
    coverage = ((normalised - COVERAGE_RAMP[0]) / (COVERAGE_RAMP[1] - COVERAGE_RAMP[0])).clamp(0.0, 1.0)
    pixel_centres = torch.arange(224, dtype=torch.float32) + 0.5
    centre = torch.stack([(coverage.sum(0) * pixel_centres).sum(), (coverage.sum(1) * pixel_centres).sum()]) / coverage.sum()
    landmarks = maps.landmarks[0]
    side = float((landmarks.amax(0) - landmarks.amin(0)).max())
    relative = ((landmarks - centre) / side).numpy().astype(np.float32)
    five = np.stack([relative[list(group)].mean(0) for group in FIVE_POINTS])
    landmark_depth = -(model.posed_vertices(coeffs[0:1])[0, model.landmark_ids, 2]).numpy()
    pixels_per_unit = PerspectiveCamera.deep3d(224).focal / float(maps.depth[0][maps.mask[0] > 0].mean())
    # The mouth opening: how much darker the cells around the inner lips are than those around the
    # nose tip (a contrast, so skin tone and light matter less), 0 closed to 1 open.
    features = _normalised_pooled(_landmark_crops(maps.image, centre, side), LANDMARK_POOL, 127.5, 128.0)
    cells = LANDMARK_INPUT // LANDMARK_POOL
    cell_centres = (torch.arange(cells, dtype=torch.float32) + 0.5) * LANDMARK_POOL

    def cells_around(*points: int) -> torch.Tensor:
        where = LANDMARK_INPUT / 2 + (LANDMARK_INPUT / 1.5) * torch.from_numpy(relative[list(points)].mean(0))
        # Wider than tall: a turned head moves the mouth sideways in the crop.
        near = ((cell_centres.view(1, -1) - where[0]).abs() <= 1.5 * LANDMARK_POOL) & (
            (cell_centres.view(-1, 1) - where[1]).abs() <= LANDMARK_POOL)
        return near.float().flatten().repeat(3) / (3.0 * near.sum())

    contrast = cells_around(30) - cells_around(62, 66)
    closed, opened = (features @ contrast).tolist()
    background = torch.tensor(BACKGROUND)
    average = maps.image[0:1] + (1.0 - maps.mask[0:1].unsqueeze(-1)) * background
    arcface = warp_images(average, similarity_transforms(keypoints_from_landmarks68(maps.landmarks[0:1]),
                                                         ARCFACE_TEMPLATE), RECOGNITION_INPUT)
    return {
        "landmarks68": relative,
        "depth68": (landmark_depth - landmark_depth.mean()) * pixels_per_unit / side,
        "five": five.astype(np.float32),
        "size_gain": side / float(coverage.sum().sqrt()),
        "jaw_motion68": ((maps.landmarks[1] - maps.landmarks[0]) / side).numpy().astype(np.float32),
        "mouth_weight": contrast.numpy() / (opened - closed),  # readout 0 closed, 1 open
        "mouth_closed": closed / (opened - closed),
        "average_face": _normalised_pooled(arcface, RECOGNITION_POOL, 127.5, 127.5)[0].numpy(),
    }


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _int_const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.int64), name)


def detector_graph(layout: dict) -> onnx.GraphProto:
    """SCRFD-10G's interface: input ``input.1`` [1,3,?,?]; per stride 8/16/32 scores [N,1],
    box distances [N,4] and keypoint offsets [N,10] (in strides), N = cells × 2 anchors."""
    nodes, inits = [], []
    score_names = ["448", "471", "494"]
    box_names = ["451", "474", "497"]
    kps_names = ["454", "477", "500"]
    # Brightness of each 32-px cell centred on its anchor; bright cells count as face.
    nodes += [
        helper.make_node("ReduceMean", ["input.1", "axes_c"], ["gray"], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["cells"], kernel_shape=[32, 32], strides=[32, 32],
                         pads=[16, 16, 0, 0], count_include_pad=0),
        helper.make_node("Sub", ["cells", "threshold"], ["cell_margin"]),
        helper.make_node("Mul", ["cell_margin", "gate_gain"], ["cell_logit"]),
        helper.make_node("Sigmoid", ["cell_logit"], ["bright"]),
        # How much of each cell the face covers (a ramp from background to skin brightness): its sum is
        # the face's area wherever the face sits on the cell grid, so boxes keep their size as faces move.
        helper.make_node("Sub", ["cells", "dark_level"], ["above_dark"]),
        helper.make_node("Mul", ["above_dark", "coverage_gain"], ["coverage_raw"]),
        helper.make_node("Clip", ["coverage_raw", "zero", "one"], ["coverage"]),
        # Cell indices (anchor j sits at x = 32·j).
        helper.make_node("Mul", ["cells", "zero"], ["cells_zero"]),
        helper.make_node("Add", ["cells_zero", "one"], ["cells_one"]),
        helper.make_node("CumSum", ["cells_one", "axis_w"], ["column_count"]),
        helper.make_node("Sub", ["column_count", "one"], ["column"]),
        helper.make_node("CumSum", ["cells_one", "axis_h"], ["row_count"]),
        helper.make_node("Sub", ["row_count", "one"], ["row"]),
        # One face per run of bright columns: a column is bright if any of its cells is; each run
        # start raises the label, so the columns of the k-th face from the left carry label k.
        helper.make_node("ReduceMax", ["bright", "axes_h"], ["column_bright"], keepdims=1),  # [1,1,1,W]
        helper.make_node("Pad", ["column_bright", "pad_left"], ["column_padded"]),
        helper.make_node("Slice", ["column_padded", "slice_start", "slice_end", "axes_w"], ["column_before"]),
        helper.make_node("Sub", ["one", "column_before"], ["dark_before"]),
        helper.make_node("Mul", ["column_bright", "dark_before"], ["run_start"]),
        helper.make_node("CumSum", ["run_start", "axis_w"], ["column_label"]),
    ]
    score_terms, centre_columns, centre_rows, sides = [], [], [], []
    for k in range(1, MAX_FACES + 1):
        f = f"face{k}_"
        nodes += [
            # Columns of face k (label k, bright), then its cells.
            helper.make_node("Sub", ["column_label", f"label_{k}"], [f + "offset"]),
            helper.make_node("Mul", [f + "offset", f + "offset"], [f + "offset2"]),
            helper.make_node("Mul", [f + "offset2", "label_sharpness"], [f + "label_logit"]),
            helper.make_node("Exp", [f + "label_logit"], [f + "label_match"]),
            helper.make_node("Mul", [f + "label_match", "column_bright"], [f + "columns"]),  # [1,1,1,W]
            helper.make_node("Mul", ["coverage", f + "columns"], [f + "cells"]),
            # Its centroid (in cells) and size.
            helper.make_node("ReduceSum", [f + "cells"], [f + "mass"], keepdims=1),
            helper.make_node("Add", [f + "mass", "tiny"], [f + "mass_safe"]),
            helper.make_node("Mul", [f + "cells", "column"], [f + "cells_column"]),
            helper.make_node("ReduceSum", [f + "cells_column"], [f + "column_sum"], keepdims=1),
            helper.make_node("Div", [f + "column_sum", f + "mass_safe"], [f + "centre_column"]),
            helper.make_node("Mul", [f + "cells", "row"], [f + "cells_row"]),
            helper.make_node("ReduceSum", [f + "cells_row"], [f + "row_sum"], keepdims=1),
            helper.make_node("Div", [f + "row_sum", f + "mass_safe"], [f + "centre_row"]),
            helper.make_node("Sqrt", [f + "mass"], [f + "side_cells"]),  # side in 32-px strides
            helper.make_node("Mul", [f + "side_cells", "size_gain"], [f + "side"]),
            # Score: the anchor nearest to the centroid fires, if the face has any bright cell.
            helper.make_node("Sub", ["column", f + "centre_column"], [f + "dx"]),
            helper.make_node("Sub", ["row", f + "centre_row"], [f + "dy"]),
            helper.make_node("Mul", [f + "dx", f + "dx"], [f + "dx2"]),
            helper.make_node("Mul", [f + "dy", f + "dy"], [f + "dy2"]),
            helper.make_node("Add", [f + "dx2", f + "dy2"], [f + "distance2"]),
            helper.make_node("Reshape", [f + "distance2", "flat_shape"], [f + "flat_distance2"]),
            helper.make_node("Mul", [f + "flat_distance2", "sharpness"], [f + "sharp"]),
            helper.make_node("Softmax", [f + "sharp"], [f + "peak"], axis=1),
            helper.make_node("Sub", [f + "mass", "half"], [f + "presence"]),
            helper.make_node("Mul", [f + "presence", "gate_gain"], [f + "gate_logit"]),
            helper.make_node("Sigmoid", [f + "gate_logit"], [f + "gate_cell"]),
            helper.make_node("Reshape", [f + "gate_cell", "scalar_row"], [f + "gate"]),
            helper.make_node("Mul", [f + "peak", "peak_gain"], [f + "peak_scaled"]),
            helper.make_node("Clip", [f + "peak_scaled", "zero", "one"], [f + "peak_clipped"]),
            helper.make_node("Mul", [f + "peak_clipped", f + "gate"], [f + "score"]),  # [1, HW]
            # Each cell regresses to the centroid and size of the face whose columns it is in.
            helper.make_node("Mul", [f + "columns", f + "centre_column"], [f + "cell_centre_column"]),
            helper.make_node("Mul", [f + "columns", f + "centre_row"], [f + "cell_centre_row"]),
            helper.make_node("Mul", [f + "columns", f + "side"], [f + "cell_side"]),
        ]
        score_terms.append(f + "score")
        centre_columns.append(f + "cell_centre_column")
        centre_rows.append(f + "cell_centre_row")
        sides.append(f + "cell_side")
    nodes += [
        helper.make_node("Sum", score_terms, ["cell_score"]),  # faces peak at different anchors
        helper.make_node("Sum", centre_columns, ["column_centre_by_column"]),  # [1,1,1,W]
        helper.make_node("Sum", centre_rows, ["row_centre_by_column"]),
        helper.make_node("Sum", sides, ["side_by_column"]),
        helper.make_node("Add", ["cells_zero", "column_centre_by_column"], ["cell_centre_column"]),  # [1,1,H,W]
        helper.make_node("Add", ["cells_zero", "row_centre_by_column"], ["cell_centre_row"]),
        helper.make_node("Add", ["cells_zero", "side_by_column"], ["cell_side"]),
        helper.make_node("Sub", ["column", "cell_centre_column"], ["dx"]),
        helper.make_node("Sub", ["row", "cell_centre_row"], ["dy"]),
        helper.make_node("Transpose", ["cell_score"], ["cell_column"], perm=[1, 0]),  # [HW, 1]
        helper.make_node("Mul", ["cell_column", "zero"], ["cell_zero"]),
        helper.make_node("Concat", ["cell_column", "cell_zero"], ["anchor_pairs"], axis=1),  # [HW, 2]
        helper.make_node("Reshape", ["anchor_pairs", "column_shape"], [score_names[2]]),  # [2HW, 1]
        helper.make_node("Reshape", ["cell_side", "column_shape"], ["side_cells_column"]),
        helper.make_node("Concat", ["side_cells_column", "side_cells_column"], ["side_pairs"], axis=1),
        helper.make_node("Reshape", ["side_pairs", "column_shape"], ["side_anchor"]),  # [2HW, 1]
        helper.make_node("Mul", ["side_anchor", "box_row"], ["box_rows"]),  # [2HW, 4]
        helper.make_node("Mul", ["side_anchor", "kps_row"], ["kps_rows"]),  # [2HW, 10]
        # Regress from each anchor to the exact centroid, so boxes and keypoints follow sub-cell motion.
        helper.make_node("Reshape", ["dx", "column_shape"], ["dx_cells"]),
        helper.make_node("Concat", ["dx_cells", "dx_cells"], ["dx_pairs"], axis=1),
        helper.make_node("Reshape", ["dx_pairs", "column_shape"], ["dx_anchor"]),
        helper.make_node("Reshape", ["dy", "column_shape"], ["dy_cells"]),
        helper.make_node("Concat", ["dy_cells", "dy_cells"], ["dy_pairs"], axis=1),
        helper.make_node("Reshape", ["dy_pairs", "column_shape"], ["dy_anchor"]),
        helper.make_node("Neg", ["dx_anchor"], ["minus_dx"]),
        helper.make_node("Neg", ["dy_anchor"], ["minus_dy"]),
        helper.make_node("Concat", ["dx_anchor", "dy_anchor", "minus_dx", "minus_dy"], ["box_shift"], axis=1),
        helper.make_node("Concat", ["minus_dx", "minus_dy"] * 5, ["kps_shift"], axis=1),
        helper.make_node("Add", ["box_rows", "box_shift"], [box_names[2]]),
        helper.make_node("Add", ["kps_rows", "kps_shift"], [kps_names[2]]),
    ]
    half = 0.5 * np.ones(4, dtype=np.float32)
    # distance2kps adds offsets·stride to the anchor: offsets are the layout in box sides.
    kps_row = layout["five"].reshape(1, 10)
    inits += [
        _int_const("axes_c", [1]),
        _int_const("flat_shape", [1, -1]),
        _int_const("column_shape", [-1, 1]),
        _int_const("scalar_row", [1, 1]),
        _int_const("axis_w", 3),
        _int_const("axis_h", 2),
        _int_const("axes_h", [2]),
        _int_const("axes_w", [3]),
        _int_const("pad_left", [0, 0, 0, 1, 0, 0, 0, 0]),
        _int_const("slice_start", [0]),
        _int_const("slice_end", [-1]),
        _const("half", 0.5),
        _const("label_sharpness", -20.0),
        *[_const(f"label_{k}", float(k)) for k in range(1, MAX_FACES + 1)],
        _const("tiny", 1e-6),
        _const("sharpness", PEAK_SHARPNESS),
        _const("threshold", BRIGHT_THRESHOLD),
        _const("dark_level", COVERAGE_RAMP[0]),
        _const("coverage_gain", 1.0 / (COVERAGE_RAMP[1] - COVERAGE_RAMP[0])),
        _const("gate_gain", 40.0),
        _const("peak_gain", 4.0),
        _const("zero", 0.0),
        _const("one", 1.0),
        _const("size_gain", layout["size_gain"]),
        _const("box_row", half.reshape(1, 4)),
        _const("kps_row", kps_row),
    ]
    # Strides 8 and 16 find nothing (score 0), as their heads would for a large face.
    for index, stride in enumerate(DETECTOR_STRIDES[:2]):
        conv = f"head_{stride}"
        nodes += [
            helper.make_node("Conv", ["input.1", f"w_{stride}", f"b_{stride}"], [conv],
                             kernel_shape=[stride, stride], strides=[stride, stride]),
            helper.make_node("Transpose", [conv], [f"{conv}_t"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", [f"{conv}_t", "rows_15"], [f"{conv}_rows"]),
            helper.make_node("Split", [f"{conv}_rows", "split_15"], [f"{conv}_logit", box_names[index],
                                                                     kps_names[index]], axis=1),
            helper.make_node("Sigmoid", [f"{conv}_logit"], [score_names[index]]),
        ]
        bias = np.zeros(30, dtype=np.float32)
        bias[[0, 15]] = -30.0
        inits += [_const(f"w_{stride}", np.zeros((30, 3, stride, stride))), _const(f"b_{stride}", bias)]
    inits += [_int_const("rows_15", [-1, 15]), _int_const("split_15", [1, 4, 10])]
    graph_inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, width])
               for names, width in ((score_names, 1), (box_names, 4), (kps_names, 10)) for name in names]
    return helper.make_graph(nodes, "tiny_scrfd_10g", graph_inputs, outputs, inits)


def _pooled_linear_graph(name: str, input_name: str, size: int, output_name: str, weight: np.ndarray,
                         bias: np.ndarray, pool: int) -> onnx.GraphProto:
    """input [1,3,size,size] → average pool → flatten → linear (``weight`` [features, outputs]) → [1, len(bias)]."""
    nodes = [
        helper.make_node("AveragePool", [input_name], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "weight", "bias"], [output_name]),
    ]
    inits = [_const("weight", weight), _const("bias", bias.reshape(-1))]
    return helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, bias.size])],
        inits,
    )


def _random_weight(size: int, pool: int, outputs: int, scale: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(((size // pool) ** 2 * 3, outputs)) * scale).astype(np.float32)


def _as_106(points68: np.ndarray) -> np.ndarray:
    """106 points: the 68 plus points between consecutive ones, the shape of the real output."""
    return np.concatenate([points68, 0.5 * (points68[:38] + points68[1:39])])


def landmark_graph(name: str, layout: dict, mean: np.ndarray, jaw: np.ndarray) -> onnx.GraphProto:
    """The landmark models' interface (``data`` [1,3,192,192] → ``fc1`` [1, N]): the layout for a face
    filling the detector box, moved along the demo face's jaw-opening motion by how open the mouth looks
    in the crop (a designed readout of pooled pixels, never below closed), so a talking driver gives
    moving landmarks."""
    nodes = [
        helper.make_node("AveragePool", ["data"], ["pooled"], kernel_shape=[LANDMARK_POOL, LANDMARK_POOL],
                         strides=[LANDMARK_POOL, LANDMARK_POOL]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "mouth_weight", "mouth_offset"], ["opening_raw"]),
        helper.make_node("Relu", ["opening_raw"], ["opening"]),  # [1, 1]
        helper.make_node("Gemm", ["opening", "jaw_motion", "mean_layout"], ["fc1"]),
    ]
    inits = [
        _const("mouth_weight", layout["mouth_weight"].reshape(-1, 1)),
        _const("mouth_offset", [-layout["mouth_closed"]]),
        _const("jaw_motion", jaw.reshape(1, -1)),
        _const("mean_layout", mean),
    ]
    return helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, LANDMARK_INPUT, LANDMARK_INPUT])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, mean.size])],
        inits,
    )


def landmark_models(layout: dict) -> dict[str, onnx.GraphProto]:
    """insightface crops ``1.5 ×`` the box side around its centre into 192 px and reads the outputs as
    ``(pred + 1) · 96`` px, so a point at ``q`` box sides from the centre is ``q · 4/3``."""
    scale = 4.0 / 3.0
    zeros68 = np.zeros((68, 1), dtype=np.float32)
    points68 = np.concatenate([layout["landmarks68"], layout["depth68"][:, None]], axis=1) * scale
    motion68 = np.concatenate([layout["jaw_motion68"], zeros68], axis=1) * scale
    # 3309 = 1103 points × 3; insightface keeps the last 68.
    padding = np.zeros((1103 - 68, 3), dtype=np.float32)
    mean68, jaw68 = (np.concatenate([padding, p]).reshape(-1) for p in (points68, motion68))
    mean106, jaw106 = (_as_106(p).reshape(-1) * scale for p in (layout["landmarks68"], layout["jaw_motion68"]))
    return {"1k3d68": landmark_graph("tiny_1k3d68", layout, mean68, jaw68),
            "2d106det": landmark_graph("tiny_2d106det", layout, mean106, jaw106)}


def write_tiny_insightface(models_root: Path) -> list[Path]:
    """Write ``models_root/insightface/models/buffalo_l/*.onnx`` and return the paths written."""
    pack = Path(models_root) / "insightface" / "models" / PACK_NAME
    layout = canonical_face_layout()
    landmarks = landmark_models(layout)
    genderage = np.array([0.2, -0.2, 0.3], dtype=np.float32)
    # Recognition: a fixed random projection of the pooled aligned crop minus the average face's, so
    # what makes faces differ (shape, skin, light) decides the embedding.
    projection = _random_weight(RECOGNITION_INPUT, RECOGNITION_POOL, EMBEDDING_SIZE, 1.0, 4)
    return [
        _save(detector_graph(layout), pack / "det_10g.onnx"),
        _save(landmarks["2d106det"], pack / "2d106det.onnx"),
        _save(landmarks["1k3d68"], pack / "1k3d68.onnx"),
        _save(_pooled_linear_graph("tiny_genderage", "data", 96, "fc1", _random_weight(96, 8, 3, 1e-2, 3), genderage, 8),
              pack / "genderage.onnx"),
        _save(_pooled_linear_graph("tiny_w600k_r50", "input.1", RECOGNITION_INPUT, "683", projection,
                                   -layout["average_face"] @ projection, RECOGNITION_POOL), pack / "w600k_r50.onnx"),
    ]


def render_synthetic_faces(coeffs: FaceCoefficients, size: int) -> tuple[np.ndarray, torch.Tensor]:
    """Demo faces drawn over a dark background as ``uint8`` frames ``[T, size, size, 3]``, with the 68
    landmarks ``[T, 68, 2]`` (px) where the render put them."""
    model = demo_face_model(16)
    maps = FaceRenderer(model, PerspectiveCamera.deep3d(size)).render(coeffs)
    background = torch.tensor(BACKGROUND)
    frames = maps.image + (1.0 - maps.mask.unsqueeze(-1)) * background
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), maps.landmarks


def face_asset_coefficients() -> tuple[FaceCoefficients, FaceCoefficients]:
    """A portrait (one person, lit from the side) and an 8-frame driving clip (another person talking and turning)."""
    model = demo_face_model(16)
    generator = torch.Generator().manual_seed(11)
    portrait = FaceCoefficients.neutral(1, model.dims)
    portrait.identity[0] = torch.randn(model.dims.identity, generator=generator)
    portrait.texture[0] = torch.randn(model.dims.texture, generator=generator)
    portrait.lighting[0, [3, 12, 21]] = -0.15  # light from the subject's left
    portrait.expression[0, model.expression_index("smile")] = 0.4
    portrait.translation[0] = torch.tensor([0.0, 0.1, -7.0])
    driving = FaceCoefficients.neutral(8, model.dims)
    driving.identity[:] = torch.randn(model.dims.identity, generator=generator)
    driving.texture[:] = torch.randn(model.dims.texture, generator=generator)
    phase = torch.linspace(0, 2 * np.pi, 9)[:8]
    driving.expression[:, model.expression_index("jaw_open")] = 0.5 * (1 - torch.cos(2 * phase))
    driving.expression[:, model.expression_index("brow_raise")] = 0.5 * torch.sin(phase).clamp_min(0)
    driving.rotation[:, 1] = 0.25 * torch.sin(phase)
    driving.rotation[:, 0] = 0.08 * torch.cos(phase)
    driving.translation[:] = torch.tensor([0.0, 0.1, -7.0])
    driving.translation[:, 0] = 0.15 * torch.sin(phase)
    return portrait, driving


def write_face_assets(directory: Path) -> list[Path]:
    """The example inputs of the face workflows: a portrait PNG and an animated-PNG driving clip."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    portrait, driving = face_asset_coefficients()
    portrait_frames, _ = render_synthetic_faces(portrait, 256)
    driving_frames, _ = render_synthetic_faces(driving, 192)
    portrait_path, driving_path = directory / PORTRAIT_ASSET, directory / DRIVING_ASSET
    Image.fromarray(portrait_frames[0]).save(portrait_path, optimize=True)
    images = [Image.fromarray(frame) for frame in driving_frames]
    images[0].save(driving_path, save_all=True, append_images=images[1:], duration=40, loop=0, optimize=True)
    return [portrait_path, driving_path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the models/ folder to fill (with --assets: the assets folder)")
    parser.add_argument("--assets", action="store_true", help="write the face workflows' example inputs instead")
    args = parser.parse_args()
    writer = write_face_assets if args.assets else write_tiny_insightface
    for path in writer(args.directory):
        print(path)


if __name__ == "__main__":
    main()
