"""Write a tiny insightface model pack (``buffalo_l`` layout) with the real ONNX signatures.

    python -m scripts.tiny_insightface MODELS_DIR

insightface's model router picks each model's class from its input and output signature, so these
files go through the same ``FaceAnalysis`` code as the real ``det_10g``/``2d106det``/``1k3d68``/
``genderage``/``w600k_r50``. The weights are designed, not learned, so a test can predict what they
find:

* the detector (SCRFD signature: 9 outputs, strides 8/16/32, 2 anchors) treats bright pixels as
  face: it fires at the stride-32 anchor nearest the centroid of the bright cells (if any cell is
  bright: a black frame has no face) and regresses its box and keypoints to that centroid, so a
  face rendered on a dark background is found where it is. The box side follows the bright area,
  the five keypoints sit where the demo face has its eyes, nose tip and mouth corners.
* the landmark models return the demo face's 68 (and a 106-point) layout in the detector's box,
  shifted slightly by the image content; the recognition model embeds a pooled thumbnail of the
  aligned crop, so the same face gives similar embeddings and different faces do not.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from pipelines.face.faces import FIVE_POINT_GROUPS
from pipelines.morphable.coefficients import FaceCoefficients
from pipelines.morphable.demo_model import demo_face_model
from pipelines.render.camera import PerspectiveCamera
from pipelines.render.renderer import FaceRenderer

PACK_NAME = "buffalo_l"
OPSET = 18
IR_VERSION = 8
DETECTOR_STRIDES = (8, 16, 32)
# Detector input is normalised to (x - 127.5) / 128; a cell brighter than this counts as face.
BRIGHT_THRESHOLD = -0.6
PEAK_SHARPNESS = -8.0  # softmax over -8·(distance in cells)²: the nearest cell wins
FIVE_POINTS = FIVE_POINT_GROUPS
PORTRAIT_ASSET = "talkingface_face_portrait.png"
DRIVING_ASSET = "talkingface_face_driving.png"  # an animated PNG: core LoadImage reads its frames as a batch
BACKGROUND = (0.06, 0.07, 0.1)


def canonical_face_layout() -> dict[str, np.ndarray | float]:
    """The demo face's landmarks relative to its bright area: what the tiny models reproduce."""
    model = demo_face_model(16)
    coeffs = FaceCoefficients.neutral(1, model.dims)
    coeffs.translation[0, 2] = -10.0  # half size, so the whole head is on the canvas
    maps = FaceRenderer(model, PerspectiveCamera.deep3d(224)).render(coeffs)
    # What the detector sees as face: pixels brighter than its threshold (on a black background).
    normalised = (maps.image[0].mean(-1) * 255.0 - 127.5) / 128.0
    mask = (normalised > BRIGHT_THRESHOLD).float()
    rows, cols = torch.nonzero(mask > 0, as_tuple=True)
    centre = torch.stack([cols.float().mean() + 0.5, rows.float().mean() + 0.5])
    landmarks = maps.landmarks[0]
    side = float((landmarks.amax(0) - landmarks.amin(0)).max())
    relative = ((landmarks - centre) / side).numpy().astype(np.float32)
    five = np.stack([relative[list(group)].mean(0) for group in FIVE_POINTS])
    landmark_depth = -(model.posed_vertices(coeffs)[0, model.landmark_ids, 2]).numpy()
    pixels_per_unit = PerspectiveCamera.deep3d(224).focal / float(maps.depth[0][maps.mask[0] > 0].mean())
    return {
        "landmarks68": relative,
        "depth68": (landmark_depth - landmark_depth.mean()) * pixels_per_unit / side,
        "five": five.astype(np.float32),
        "size_gain": side / float(mask.sum().sqrt()),
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
    # Brightness of each 32-px cell centred on its anchor.
    nodes += [
        helper.make_node("ReduceMean", ["input.1", "axes_c"], ["gray"], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["cells"], kernel_shape=[32, 32], strides=[32, 32],
                         pads=[16, 16, 0, 0], count_include_pad=0),
        # Bright cells, their centroid (in cells: anchor j sits at x = 32·j) and the cell nearest to it.
        helper.make_node("Sub", ["cells", "threshold"], ["cell_margin"]),
        helper.make_node("Mul", ["cell_margin", "gate_gain"], ["cell_logit"]),
        helper.make_node("Sigmoid", ["cell_logit"], ["bright"]),
        helper.make_node("Mul", ["cells", "zero"], ["cells_zero"]),
        helper.make_node("Add", ["cells_zero", "one"], ["cells_one"]),
        helper.make_node("CumSum", ["cells_one", "axis_w"], ["column_count"]),
        helper.make_node("Sub", ["column_count", "one"], ["column"]),
        helper.make_node("CumSum", ["cells_one", "axis_h"], ["row_count"]),
        helper.make_node("Sub", ["row_count", "one"], ["row"]),
        helper.make_node("ReduceSum", ["bright"], ["bright_total"], keepdims=1),
        helper.make_node("Add", ["bright_total", "tiny"], ["bright_safe"]),
        helper.make_node("Mul", ["bright", "column"], ["bright_column"]),
        helper.make_node("ReduceSum", ["bright_column"], ["column_sum"], keepdims=1),
        helper.make_node("Div", ["column_sum", "bright_safe"], ["centre_column"]),
        helper.make_node("Mul", ["bright", "row"], ["bright_row"]),
        helper.make_node("ReduceSum", ["bright_row"], ["row_sum"], keepdims=1),
        helper.make_node("Div", ["row_sum", "bright_safe"], ["centre_row"]),
        helper.make_node("Sub", ["column", "centre_column"], ["dx"]),
        helper.make_node("Sub", ["row", "centre_row"], ["dy"]),
        helper.make_node("Mul", ["dx", "dx"], ["dx2"]),
        helper.make_node("Mul", ["dy", "dy"], ["dy2"]),
        helper.make_node("Add", ["dx2", "dy2"], ["distance2"]),
        helper.make_node("Reshape", ["distance2", "flat_shape"], ["flat_distance2"]),
        helper.make_node("Mul", ["flat_distance2", "sharpness"], ["sharp"]),
        helper.make_node("Softmax", ["sharp"], ["peak"], axis=1),
        helper.make_node("ReduceMax", ["cells"], ["brightest"], keepdims=1),
        helper.make_node("Reshape", ["brightest", "scalar_row"], ["brightest_row"]),
        helper.make_node("Sub", ["brightest_row", "threshold"], ["margin"]),
        helper.make_node("Mul", ["margin", "gate_gain"], ["gate_logit"]),
        helper.make_node("Sigmoid", ["gate_logit"], ["gate"]),
        helper.make_node("Mul", ["peak", "peak_gain"], ["peak_scaled"]),
        helper.make_node("Clip", ["peak_scaled", "zero", "one"], ["peak_clipped"]),
        helper.make_node("Mul", ["peak_clipped", "gate"], ["cell_score"]),  # [1, HW]
        helper.make_node("Transpose", ["cell_score"], ["cell_column"], perm=[1, 0]),  # [HW, 1]
        helper.make_node("Mul", ["cell_column", "zero"], ["cell_zero"]),
        helper.make_node("Concat", ["cell_column", "cell_zero"], ["anchor_pairs"], axis=1),  # [HW, 2]
        helper.make_node("Reshape", ["anchor_pairs", "column_shape"], [score_names[2]]),  # [2HW, 1]
        # Box side from the bright area: size_gain · sqrt(bright cells · 32²).
        helper.make_node("ReduceSum", ["bright"], ["bright_cells"], keepdims=0),
        helper.make_node("Sqrt", ["bright_cells"], ["side_cells"]),  # side in 32-px strides
        helper.make_node("Mul", ["side_cells", "size_gain"], ["side"]),
        helper.make_node("Mul", ["side", "box_row"], ["box_one"]),  # [1, 4]
        helper.make_node("Mul", ["side", "kps_row"], ["kps_one"]),  # [1, 10]
        helper.make_node("Add", [score_names[2], "one"], ["ones_column"]),
        helper.make_node("Mul", ["ones_column", "zero"], ["zeros_column"]),
        helper.make_node("Add", ["zeros_column", "one"], ["unit_column"]),
        helper.make_node("Mul", ["unit_column", "box_one"], ["box_rows"]),
        helper.make_node("Mul", ["unit_column", "kps_one"], ["kps_rows"]),
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
        _const("tiny", 1e-6),
        _const("sharpness", PEAK_SHARPNESS),
        _const("threshold", BRIGHT_THRESHOLD),
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


def _pooled_linear_graph(name: str, input_name: str, size: int, output_name: str, bias: np.ndarray,
                         weight_scale: float, pool: int, seed: int) -> onnx.GraphProto:
    """input [1,3,size,size] → average pool → flatten → linear → [1, len(bias)]."""
    cells = (size // pool) ** 2 * 3
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((cells, bias.size)) * weight_scale).astype(np.float32)
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


def landmark_layouts(layout: dict) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of the landmark models for a face filling the detector box.

    insightface crops ``1.5 ×`` the box side around its centre into 192 px and reads the outputs as
    ``(pred + 1) · 96`` px, so a point at ``q`` box sides from the centre is ``q · 4/3``."""
    scale = 4.0 / 3.0
    points68 = np.concatenate([layout["landmarks68"] * scale, layout["depth68"][:, None] * scale], axis=1)
    # 3309 = 1103 points × 3; insightface keeps the last 68.
    out68 = np.concatenate([np.zeros((1103 - 68, 3), dtype=np.float32), points68]).reshape(-1)
    # 106 points: the 68 layout plus points between consecutive ones, the shape of the real output.
    extra = 0.5 * (layout["landmarks68"][:38] + layout["landmarks68"][1:39])
    out106 = (np.concatenate([layout["landmarks68"], extra]) * scale).reshape(-1)
    return out68.astype(np.float32), out106.astype(np.float32)


def write_tiny_insightface(models_root: Path) -> list[Path]:
    """Write ``models_root/insightface/models/buffalo_l/*.onnx`` and return the paths written."""
    pack = Path(models_root) / "insightface" / "models" / PACK_NAME
    layout = canonical_face_layout()
    out68, out106 = landmark_layouts(layout)
    genderage = np.array([0.2, -0.2, 0.3], dtype=np.float32)
    return [
        _save(detector_graph(layout), pack / "det_10g.onnx"),
        _save(_pooled_linear_graph("tiny_2d106det", "data", 192, "fc1", out106, 1e-3, 48, 1), pack / "2d106det.onnx"),
        _save(_pooled_linear_graph("tiny_1k3d68", "data", 192, "fc1", out68, 1e-3, 48, 2), pack / "1k3d68.onnx"),
        _save(_pooled_linear_graph("tiny_genderage", "data", 96, "fc1", genderage, 1e-2, 8, 3), pack / "genderage.onnx"),
        _save(_pooled_linear_graph("tiny_w600k_r50", "input.1", 112, "683", np.zeros(512, np.float32), 1.0, 16, 4),
              pack / "w600k_r50.onnx"),
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
