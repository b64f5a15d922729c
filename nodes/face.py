"""Face nodes: load the analyzer, analyse faces, fit the 3DMM to them, paste generated faces back, preview."""
from __future__ import annotations

from pathlib import Path

import torch

from ..pipelines.errors import ModelFileError, TalkingFaceError
from ..pipelines.face.analysis import FaceAnalyzer
from ..pipelines.face.dlib_analysis import (
    CNN_DETECTOR,
    RECOGNITION_MODEL,
    SHAPE_PREDICTOR,
    WHERE_TO_GET,
    DlibFaceAnalyzer,
    DlibModelFiles,
    import_dlib,
)
from ..pipelines.face.faces import AnalyzedFaces, analyze_frames, reference_embedding
from ..pipelines.face.fit import fit_faces
from ..pipelines.face.paste import PASTE_REGIONS, paste_faces
from ..pipelines.face.regressor import (
    REFINE_GROUPS,
    TEMPLATE_FILE,
    FaceRegressor,
    load_face_regressor,
    regress_coefficients,
)
from ..pipelines.images import normalize_image_channels
from ..pipelines.morphable.fitting import ALL_GROUPS, FitConfig
from ..pipelines.morphable.model import MorphableModel
from . import host
from .base import TalkingFaceNode
from .face_inputs import FACE_CATEGORY, AlignedFacesNode

INSIGHTFACE_FOLDER = "insightface"
INSIGHTFACE_PACKS = "models"
DEFAULT_PACKS = ("buffalo_l", "antelopev2")
# Where the R-Net's weights live: Deep3DFaceRecon's / SadTalker's epoch_20.pth beside the BFM files in
# models/3dmm/ (any subfolder), or SadTalker's checkpoints copied into models/talkingface/.
REGRESSOR_FOLDERS = {"3dmm": (".pth", ".safetensors"), "talkingface": (".pth",)}
DEFAULT_REGRESSOR = "3dmm/epoch_20.pth"
SADTALKER_BUNDLE_PREFIX = "sadtalker_"


DLIB_FOLDER = "dlib"
# Load Face Analyzer's choices for dlib's two detectors (the landmark and recognition models are shared).
DLIB_CHOICES = {"dlib_hog": "hog", "dlib_cnn": "cnn"}


def _pack_choices() -> list[str]:
    found = list(host.model_packs(INSIGHTFACE_FOLDER, INSIGHTFACE_PACKS))
    return (found or list(DEFAULT_PACKS)) + list(DLIB_CHOICES)


def _dlib_model_files() -> DlibModelFiles:
    def find(name: str) -> Path | None:
        return next((root / name for root in host.model_folder_roots(DLIB_FOLDER) if (root / name).is_file()), None)

    predictor = find(SHAPE_PREDICTOR)
    if predictor is None:
        raise ModelFileError(
            f"dlib's {SHAPE_PREDICTOR} not found: put it into {host.model_folder_hint(DLIB_FOLDER)} (with "
            f"{RECOGNITION_MODEL} for identity tracking and {CNN_DETECTOR} for the CNN detector); {WHERE_TO_GET}")
    return DlibModelFiles(predictor, find(RECOGNITION_MODEL), find(CNN_DETECTOR))


class LoadFaceAnalyzer(TalkingFaceNode):
    DISPLAY_NAME = "Load Face Analyzer"
    DESCRIPTION = (
        "Loads an insightface model pack (detector, 68/106-point landmarks, ArcFace) from "
        "ComfyUI/models/insightface/models/<pack>/, or dlib's models (HOG or CNN detector, 68 landmarks, "
        "128-d descriptors) from ComfyUI/models/dlib/ (pip install dlib), or reuses the analyzer of IPAdapter's "
        "InsightFace Loader."
    )
    CATEGORY = FACE_CATEGORY
    RETURN_TYPES = ("TALK_ANALYZER",)
    RETURN_NAMES = ("analyzer",)
    OUTPUT_TOOLTIPS = ("Face analyzer for Analyze Faces.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "pack": (_pack_choices(), {
                    "tooltip": "An insightface pack: a folder under ComfyUI/models/insightface/models/ (buffalo_l, "
                               "antelopev2); or dlib with its HOG or CNN detector: shape_predictor_68_face_landmarks.dat "
                               "(+ dlib_face_recognition_resnet_model_v1.dat, mmod_human_face_detector.dat for CNN) "
                               "in ComfyUI/models/dlib/."}),
                "provider": (["auto", "CPU", "CUDA"], {
                    "default": "auto",
                    "tooltip": "ONNX Runtime device for insightface: auto takes CUDA when onnxruntime-gpu is installed, "
                               "else CPU. dlib uses CUDA when it was built with it."}),
                "detection_size": ("INT", {
                    "default": 640, "min": 128, "max": 1536, "step": 32,
                    "tooltip": "Detector input size in px (the image's longer side is scaled to it); larger finds "
                               "smaller faces, slower."}),
                "detection_threshold": ("FLOAT", {
                    "default": 0.5, "min": 0.05, "max": 0.99, "step": 0.01,
                    "tooltip": "Minimum detector confidence for a face (dlib: 0.5 is dlib's own threshold)."}),
            },
            "optional": {
                "insightface": ("INSIGHTFACE", {
                    "tooltip": "Optional: the analyzer from IPAdapter's 'IPAdapter InsightFace Loader'; used instead of the pack."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, pack: str, insightface: object = "not connected") -> bool | str:
        # ComfyUI validates before anything runs: a connected input arrives as None, an unconnected one not at all.
        if insightface is None or pack in host.model_packs(INSIGHTFACE_FOLDER, INSIGHTFACE_PACKS):
            return True
        if pack in DLIB_CHOICES:
            try:
                import_dlib()
                files = _dlib_model_files()
            except TalkingFaceError as error:
                return f"{cls.DISPLAY_NAME}: pack: {error}"
            if DLIB_CHOICES[pack] == "cnn" and files.cnn_detector is None:
                return (f"{cls.DISPLAY_NAME}: pack: dlib_cnn needs {CNN_DETECTOR} in "
                        f"{host.model_folder_hint(DLIB_FOLDER)}; {WHERE_TO_GET}; or pick dlib_hog")
            return True
        return (
            f"{cls.DISPLAY_NAME}: pack: insightface model pack '{pack}' not found: put the folder {pack}/ into "
            f"{host.model_folder_hint(INSIGHTFACE_FOLDER)}models/. It is insightface's own download (buffalo_l: "
            "det_10g.onnx, 2d106det.onnx, 1k3d68.onnx, genderage.onnx, w600k_r50.onnx; non-commercial licence), "
            "which ReActor and IPAdapter users often have already; or connect IPAdapter's InsightFace Loader to insightface"
        )

    def run(self, pack: str, provider: str, detection_size: int, detection_threshold: float, insightface=None):
        if insightface is not None:
            return (FaceAnalyzer.wrap(insightface),)
        if pack in DLIB_CHOICES:
            import_dlib()
            return (DlibFaceAnalyzer(_dlib_model_files(), DLIB_CHOICES[pack], detection_size, detection_threshold),)
        folder = host.model_pack_path(INSIGHTFACE_FOLDER, INSIGHTFACE_PACKS, pack)
        return (FaceAnalyzer.load(folder, provider, detection_size, detection_threshold),)


def _regressor_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, suffixes in REGRESSOR_FOLDERS.items():
        for root in host.model_folder_roots(folder):
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                bundle = path.name.lower().startswith(SADTALKER_BUNDLE_PREFIX) and path.suffix == ".safetensors"
                if path.is_file() and (path.suffix.lower() in suffixes or bundle):
                    found.setdefault(f"{folder}/{path.relative_to(root).as_posix()}", path)
    return found


def _template_file(weights: Path) -> Path | None:
    """similarity_Lm3D_all.mat beside the weights, in a BFM_Fitting/ or BFM/ folder near them, or anywhere in models/3dmm/."""
    for folder in (weights.parent, weights.parent.parent):
        for candidate in (folder / TEMPLATE_FILE, folder / "BFM_Fitting" / TEMPLATE_FILE, folder / "BFM" / TEMPLATE_FILE):
            if candidate.is_file():
                return candidate
    for root in host.model_folder_roots("3dmm"):
        if root.is_dir():
            found = next(iter(sorted(root.rglob(TEMPLATE_FILE))), None)
            if found is not None:
                return found
    return None


class LoadFaceRegressor(TalkingFaceNode):
    DISPLAY_NAME = "Load Face Regressor"
    DESCRIPTION = (
        "Loads Deep3DFaceRecon's R-Net (epoch_20.pth, as SadTalker ships it in checkpoints/; or SadTalker's "
        "SadTalker_V0.0.2_256.safetensors) from ComfyUI/models/3dmm/ or models/talkingface/. Fit 3DMM then starts "
        "from its coefficients (one forward pass per frame) and refines them on the landmarks."
    )
    CATEGORY = FACE_CATEGORY
    RETURN_TYPES = ("TALK_REGRESSOR",)
    RETURN_NAMES = ("regressor",)
    OUTPUT_TOOLTIPS = ("Face coefficient regressor for Fit 3DMM's optional 'regressor' input.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "weights": (list(_regressor_files()) or [DEFAULT_REGRESSOR], {
                    "tooltip": "epoch_20.pth (Deep3DFaceRecon / SadTalker) in ComfyUI/models/3dmm/ or models/talkingface/. "
                               f"Its crop alignment uses {TEMPLATE_FILE} (SadTalker's BFM_Fitting/) when found there."}),
                "refine": (list(REFINE_GROUPS), {
                    "default": "pose_and_expression",
                    "tooltip": "What the landmark fitter refines after the network: pose and expression (keeps the "
                               "network's identity), pose only, or everything."}),
            }
        }

    @staticmethod
    def _missing(weights: str) -> str:
        return (f"face regressor weights '{weights}' not found: put Deep3DFaceRecon's epoch_20.pth (SadTalker ships it "
                f"in its checkpoints/ folder) into {host.model_folder_hint('3dmm')}")

    @classmethod
    def VALIDATE_INPUTS(cls, weights: str) -> bool | str:
        return True if weights in _regressor_files() else f"{cls.DISPLAY_NAME}: weights: {cls._missing(weights)}"

    def run(self, weights: str, refine: str):
        files = _regressor_files()
        if weights not in files:
            raise self.fail(f"weights: {self._missing(weights)}")
        path = files[weights]
        return (load_face_regressor(path, _template_file(path), refine),)


class AnalyzeFaces(AlignedFacesNode):
    DISPLAY_NAME = "Analyze Faces"
    DESCRIPTION = (
        "Finds one face per frame (a portrait or every frame of a video, following the same person), with "
        "landmarks and identity, and aligns it: TALK_FACES for fitting and paste-back, plus the aligned crops."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "analyzer": ("TALK_ANALYZER", {"tooltip": "From Load Face Analyzer."}),
                "images": ("IMAGE", {"tooltip": "A portrait or the frames of a video."}),
                **cls.alignment_inputs(),
            },
            "optional": {
                **cls.video_info_input(),
                "reference_image": ("IMAGE", {
                    "tooltip": "For selection most_similar: a photo of the person to follow (e.g. the face to replace in a swap)."}),
            },
        }

    def run(self, analyzer, images: torch.Tensor, selection: str, face_index: int, missing_faces: str,
            crop_size: int, crop_margin: float, smoothing: float, fps: float, video_info: dict | None = None,
            reference_image: torch.Tensor | None = None):
        fps = self.video_fps(fps, video_info)
        if not hasattr(analyzer, "detect"):
            analyzer = FaceAnalyzer.wrap(analyzer)
        reference = None
        if reference_image is not None and selection == "most_similar":
            reference = reference_embedding(analyzer, reference_image)
        progress = host.Progress(images.shape[0])
        faces = analyze_frames(analyzer, images, selection, face_index, missing_faces, int(crop_size),
                               crop_margin, smoothing, fps, on_frame=lambda frame: progress.report(frame + 1),
                               reference=reference)
        return self.outputs(faces)


class Fit3DMM(TalkingFaceNode):
    DISPLAY_NAME = "Fit 3DMM"
    DESCRIPTION = (
        "3DMM coefficients from analysed faces: pose, identity and expression from the 68 landmarks (a video "
        "shares one identity and is smoothed over time), texture and SH lighting from the face crops, gaze from the eyes. "
        "With a face regressor connected, the fit starts from its coefficients."
    )
    CATEGORY = FACE_CATEGORY
    RETURN_TYPES = ("TALK_COEFFS", "FLOAT")
    RETURN_NAMES = ("coefficients", "landmark_error")
    OUTPUT_TOOLTIPS = ("One coefficient row per frame.", "Mean RMS landmark distance after the fit, px of the 224-px crop.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "faces": ("TALK_FACES", {"tooltip": "From Analyze Faces."}),
                "face_model": ("TALK_FACE_MODEL", {"tooltip": "From Load 3DMM."}),
                "estimate_appearance": ("BOOLEAN", {
                    "default": True, "tooltip": "Solve texture and lighting from the crops (needed for I_3d to carry skin tone and light)."}),
                "video_mode": (["fast", "joint"], {
                    "default": "fast",
                    "tooltip": "Video: 'fast' takes the identity from a few frames, fits every frame with it and smooths "
                               "with One-Euro; 'joint' solves all frames in one problem (smoother, ~5× slower)."}),
                "temporal_smoothing": ("FLOAT", {
                    "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Video: smoothing of pose and expression over time at the video's frame rate (carried by the "
                               "faces): a cut-off of 0.5 Hz / value² (0.5 → 2 Hz, 1 → 0.5 Hz, 0 = none). 'fast' opens it "
                               "for quick moves (One-Euro); 'joint' keeps it fixed, so stay at 0.3 or below for speech."}),
                "expression_prior": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1,
                    "tooltip": "Pull expressions towards neutral; raise it for noisy landmarks."}),
                "batch_size": ("INT", {"default": 16, "min": 1, "max": 256,
                                       "tooltip": "Frames per appearance (and regressor) batch; lower it if memory runs out."}),
            },
            "optional": {
                "regressor": ("TALK_REGRESSOR", {
                    "tooltip": "Optional, from Load Face Regressor: start from Deep3DFaceRecon's coefficients (identity, "
                               "expression, pose, and texture and light when appearance is not estimated) and refine them."}),
            },
        }

    def run(self, faces: AnalyzedFaces, face_model: MorphableModel, estimate_appearance: bool, video_mode: str,
            temporal_smoothing: float, expression_prior: float, batch_size: int, regressor: FaceRegressor | None = None):
        config = FitConfig(expression_prior=expression_prior)
        progress = host.Progress(faces.frames * (2 if regressor is not None else 1))
        regressed = faces.frames if regressor is not None else 0
        device = host.torch_device()
        init, refine = None, ALL_GROUPS
        try:
            model = face_model.to(device)
            if regressor is not None:
                regressor.network.to(device)
                init = regress_coefficients(regressor, faces, model, batch_size=batch_size, on_chunk=progress.report)
                refine = regressor.refine_groups
            fit = fit_faces(model, faces, config, appearance=estimate_appearance, video_mode=video_mode,
                            smoothing=temporal_smoothing, batch_size=batch_size,
                            on_chunk=lambda done: progress.report(regressed + done), init=init,
                            refine=refine)
        finally:
            face_model.to(host.offload_device())
            if regressor is not None:
                regressor.network.to(host.offload_device())
        return fit.coefficients.to("cpu"), float(fit.landmark_error.mean())


class PasteBack(TalkingFaceNode):
    DISPLAY_NAME = "Paste Back"
    DESCRIPTION = (
        "Puts generated face crops back into the analysed frames through the inverse crop transforms, "
        "blended with a feathered mask from the 3DMM render (full face or the lower face only)."
    )
    CATEGORY = FACE_CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "mask")
    OUTPUT_TOOLTIPS = ("The frames with the pasted faces.", "Where and how strongly each frame was replaced.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "faces": ("TALK_FACES", {"tooltip": "From Analyze Faces (the frames to paste into)."}),
                "generated": ("IMAGE", {"tooltip": "Generated crops, one per frame (or per output frame over a still portrait)."}),
                "face_mask": ("MASK", {"tooltip": "The render mask at crop size (Render 3DMM Target's mask)."}),
                "region": (list(PASTE_REGIONS), {
                    "default": "full_face", "tooltip": "Replace the whole face, or only below the nose (mouth and jaw, for dubbing)."}),
                "erode": ("INT", {"default": 4, "min": 0, "max": 64, "tooltip": "Shrink the mask by this many px of the analysed crop so seams fall inside the face."}),
                "blur": ("INT", {"default": 8, "min": 0, "max": 64, "tooltip": "Feather radius in px of the analysed crop (scaled with the generated crops' size)."}),
                "colour_match": ("BOOLEAN", {"default": False, "tooltip": "Match the generated face's colour statistics to the original crop."}),
            }
        }

    def run(self, faces: AnalyzedFaces, generated: torch.Tensor, face_mask: torch.Tensor, region: str,
            erode: int, blur: int, colour_match: bool):
        generated, _ = normalize_image_channels(generated)
        frames = generated.shape[0]
        if faces.frames not in (1, frames):
            raise self.fail(f"{frames} generated crops for {faces.frames} analysed frames; they must match "
                            "(or analyse a single portrait to paste every crop into it)")
        if face_mask.ndim == 2:
            face_mask = face_mask.unsqueeze(0)
        if face_mask.shape[0] not in (1, frames):
            raise self.fail(f"{face_mask.shape[0]} masks for {frames} generated crops; give one mask or one per crop")
        if generated.shape[2] != generated.shape[1]:
            raise self.fail(f"generated crops must be square, got {generated.shape[2]}×{generated.shape[1]}")
        return paste_faces(faces, generated, face_mask, region, erode, blur, colour_match,
                           on_frames=host.Progress(frames).report)


class DrawFaceLandmarks(TalkingFaceNode):
    DISPLAY_NAME = "Preview Face Landmarks"
    DESCRIPTION = "Draws the analysed face box, the five keypoints and the 68 landmarks on the frames (a check before fitting)."
    CATEGORY = FACE_CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("preview",)
    OUTPUT_TOOLTIPS = ("Frames with red box, blue keypoints and green landmarks (yellow: interpolated frame).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "faces": ("TALK_FACES", {"tooltip": "From Analyze Faces."}),
                "point_size": ("INT", {"default": 2, "min": 1, "max": 16, "tooltip": "Half-width of each drawn point in px."}),
            }
        }

    def run(self, faces: AnalyzedFaces, point_size: int):
        images = faces.images.float().clone()
        for t in range(faces.frames):
            box = faces.boxes[t]
            _draw_box(images[t], box, torch.tensor([1.0, 0.0, 0.0]))
            if faces.landmarks68 is not None:
                colour = torch.tensor([0.0, 1.0, 0.0]) if faces.detected[t] else torch.tensor([1.0, 1.0, 0.0])
                _draw_points(images[t], faces.landmarks68[t], colour, point_size)
            _draw_points(images[t], faces.keypoints[t], torch.tensor([0.0, 0.4, 1.0]), point_size + 1)
        return (images,)


def _draw_points(image: torch.Tensor, points: torch.Tensor, colour: torch.Tensor, radius: int) -> None:
    height, width = image.shape[:2]
    for x, y in points.tolist():
        col, row = int(x), int(y)
        image[max(row - radius, 0):min(row + radius + 1, height), max(col - radius, 0):min(col + radius + 1, width)] = colour


def _draw_box(image: torch.Tensor, box: torch.Tensor, colour: torch.Tensor) -> None:
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box.tolist())
    x0, x1 = max(x0, 0), min(x1, width - 1)
    y0, y1 = max(y0, 0), min(y1, height - 1)
    if x0 > x1 or y0 > y1:
        return
    image[y0, x0:x1 + 1] = colour
    image[y1, x0:x1 + 1] = colour
    image[y0:y1 + 1, x0] = colour
    image[y0:y1 + 1, x1] = colour


FACE_NODES = (LoadFaceAnalyzer, AnalyzeFaces, LoadFaceRegressor, Fit3DMM, PasteBack, DrawFaceLandmarks)
