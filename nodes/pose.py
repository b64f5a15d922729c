"""Faces from a pose estimator's keypoints (comfyui_controlnet_aux's DWPose / OpenPose POSE_KEYPOINT)."""
from __future__ import annotations

import torch

from ..pipelines.face.faces import faces_from_detections
from ..pipelines.face.pose_keypoints import detections_from_pose_keypoints
from ..pipelines.images import check_image_range, normalize_image_channels
from .face_inputs import AlignedFacesNode


class FacesFromPoseKeypoints(AlignedFacesNode):
    DISPLAY_NAME = "Faces from Pose Keypoints"
    DESCRIPTION = (
        "TALK_FACES from the 68 face keypoints of comfyui_controlnet_aux's DWPose or OpenPose estimator "
        "(POSE_KEYPOINT, detect_face on): no insightface or dlib needed. No identity embeddings, so a video "
        "follows the person by box overlap."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images the pose was estimated on (a portrait or the frames of a video)."}),
                "pose_keypoint": ("POSE_KEYPOINT", {
                    "tooltip": "From the DWPose Estimator (detect_face: enable) or OpenPose Pose node, one entry per image."}),
                **cls.alignment_inputs(),
            },
            "optional": cls.video_info_input(),
        }

    def run(self, images: torch.Tensor, pose_keypoint, selection: str, face_index: int, missing_faces: str,
            crop_size: int, crop_margin: float, smoothing: float, fps: float, video_info: dict | None = None):
        fps = self.video_fps(fps, video_info)
        images, note = normalize_image_channels(images)
        check_image_range(images, "images")
        frames, height, width = images.shape[:3]
        per_frame, notes = detections_from_pose_keypoints(pose_keypoint, frames, height, width)
        faces = faces_from_detections(images, per_frame, selection, face_index, missing_faces, int(crop_size),
                                      crop_margin, smoothing, fps, notes=([note] if note else []) + notes)
        return self.outputs(faces)


POSE_NODES = (FacesFromPoseKeypoints,)
