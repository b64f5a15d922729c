"""What every node that makes TALK_FACES shares: the alignment inputs, the frame rate, the outputs."""
from __future__ import annotations

import torch

from ..pipelines.face.faces import MISSING_POLICIES, AnalyzedFaces
from ..pipelines.face.selection import ORDERS
from ..pipelines.video import frame_chunks
from .base import ROOT_CATEGORY, TalkingFaceNode

FACE_CATEGORY = f"{ROOT_CATEGORY}/face"


class VideoRateInput:
    """The frame-rate inputs of a node that reads a video: an fps widget and VideoHelperSuite's
    optional video_info, whose loaded fps wins (mixed into a TalkingFaceNode)."""

    @staticmethod
    def video_info_input() -> dict:
        return {"video_info": ("VHS_VIDEOINFO", {
            "tooltip": "Optional: VideoHelperSuite's video_info from Load Video; its loaded fps replaces the fps widget."})}

    @classmethod
    def video_fps(cls, fps: float, video_info: dict | None) -> float:
        """VideoHelperSuite's ``loaded_fps`` when its video_info is connected, else the widget."""
        if video_info is None:
            return float(fps)
        value = video_info.get("loaded_fps", video_info.get("source_fps")) if isinstance(video_info, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise cls.fail(
                f"video_info has no usable frame rate (loaded_fps = {value!r}); connect VideoHelperSuite's video_info "
                "output from Load Video, or disconnect it and set fps")
        return float(value)


class AlignedFacesNode(VideoRateInput, TalkingFaceNode):
    """Base of the nodes that choose one face per frame and align it (Analyze Faces, Faces from Pose
    Keypoints): same selection, no-face policy, crop and frame-rate inputs, same two outputs."""

    CATEGORY = FACE_CATEGORY
    RETURN_TYPES = ("TALK_FACES", "IMAGE")
    RETURN_NAMES = ("faces", "crops")
    OUTPUT_TOOLTIPS = (
        "Per-frame boxes, keypoints, landmarks, embeddings, crop transforms and the frame rate.",
        "The aligned face crops at crop_size, one per frame (the generator's input framing).",
    )

    @staticmethod
    def alignment_inputs() -> dict:
        return {
            "selection": (list(ORDERS), {
                "default": "largest",
                "tooltip": "Which face when there are several: 'single' fails if there is more than one; "
                           "otherwise the face_index-th in this order (a video follows that person); "
                           "most_similar: the face most like reference_image's person (Analyze Faces)."}),
            "face_index": ("INT", {"default": 0, "min": 0, "max": 63, "tooltip": "Position in the selection order, 0 = first."}),
            "missing_faces": (list(MISSING_POLICIES), {
                "default": "interpolate",
                "tooltip": "Frames where the face is not found: 'interpolate' fills them from the neighbouring frames "
                           "(with a warning), 'pass_through' leaves them untouched (Paste Back returns them as they "
                           "were; a video without any face comes back unchanged), 'error' stops and names the frames."}),
            "crop_size": ([256, 512], {"default": 256, "tooltip": "Side of the aligned generator crop in px."}),
            "crop_margin": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                "tooltip": "Extra context around the face in the crop, as a fraction of the fitting crop per side. "
                           "0 frames the face as Render 3DMM Target does."}),
            "smoothing": ("FLOAT", {
                "default": 0.3, "min": 0.0, "max": 1.0, "step": 0.05,
                "tooltip": "Temporal smoothing of the crop boxes of a video (One-Euro); 0 = none."}),
            "fps": ("FLOAT", {
                "default": 25.0, "min": 1.0, "max": 240.0, "step": 0.01,
                "tooltip": "Frame rate of the video; carried with the faces, so Fit 3DMM smooths at the same rate. "
                           "A connected video_info overrides it."}),
        }

    @staticmethod
    def outputs(faces: AnalyzedFaces) -> tuple[AnalyzedFaces, torch.Tensor]:
        crops = torch.cat([faces.crops(chunk) for chunk in frame_chunks(faces.frames, 64)])
        return faces, crops.clamp(0.0, 1.0)
