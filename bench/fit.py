"""3DMM landmark-fitting benchmark: our batched Levenberg–Marquardt fitter against eos (pip
``eos-py``) on the same synthetic faces, in the same run.

Run from the repository root: ``python -m bench.fit`` (``--help`` for the options). Prints
readable lines, then one JSON object as the last line.

What is compared, and why it is fair:

* The model is the demo face at BFM size (about 38k vertices), loaded into eos from the same
  arrays: the identity and expression bases become eos PCA models (orthonormalised by SVD, the
  squared singular values as eigenvalues, so an eos coefficient vector has the same N(0, 1)
  prior as ours), the same triangles, a landmark mapping from our 68 landmark vertex ids.
* The faces: identity ~N(0, 1), expression ~N(0, 0.5²), pitch ±30°, yaw ±60°, roll ±45°, moved
  and scaled within the 224-px image. Their landmarks are the projections of the 68 landmark
  vertices, so both fitters use fixed correspondences: eos through its fit_shape_and_pose
  overload without contour fitting, ours with ``contour=False``.
* Headline camera: the Deep3DFaceRecon camera moved 100× further away with a 100× longer lens,
  practically orthographic, so eos's scaled-orthographic camera can represent it exactly. The
  pack's own perspective camera (where eos's camera is only an approximation) is reported too.
* The same objective: eos divides squared pixel residuals by σ² = 3, so its λ = our prior / 3
  gives both the same MAP cost (eos's default λ of 30 fits these faces worse), and all 68
  landmarks weigh the same on both sides. eos runs its
  default 5 alternations; a converged eos (50 alternations) runs on a subset for accuracy.
* Landmark error: RMS pixel distance between each method's fitted landmarks (in its own camera)
  and the input landmarks, mean over faces. Shape error: RMS distance over all vertices between
  the fitted and the true identity shape at neutral expression, after a similarity alignment
  (rotation, translation, scale: landmarks cannot tell a face's size from its distance, nor can
  an orthographic camera), in model units (decimetres), mean over faces.
* Time per face: ours for the whole batch at once (median of repeats), eos one face after the
  other, as its API works; both on one CPU thread (eos-py is single-threaded), ours also at
  torch's default thread count.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.morphable.camera import REFERENCE_DISTANCE, REFERENCE_FOCAL, PerspectiveCamera
from pipelines.morphable.demo_model import BFM_SIZE_RESOLUTION, demo_face_model
from pipelines.morphable.fitting import FitConfig, LandmarkFitter
from pipelines.morphable.model import MorphableModel

IMAGE_SIZE = 224
FAR_FACTOR = 100.0
IDENTITY_PRIOR = 1.0
EXPRESSION_PRIOR = 1.0
# eos's linear solves weigh squared pixel residuals by 1/σ², σ² = 3 px² (its default).
EOS_PIXEL_VARIANCE = 3.0
EOS_ITERATIONS = 5
EOS_CONVERGED_ITERATIONS = 50


def far_camera() -> PerspectiveCamera:
    """Deep3DFaceRecon's camera 100× further away with a 100× longer lens: the same image of a face
    at the origin, but practically orthographic."""
    return PerspectiveCamera(IMAGE_SIZE, REFERENCE_FOCAL * FAR_FACTOR, REFERENCE_DISTANCE * FAR_FACTOR)


def synthetic_faces(model: MorphableModel, camera: PerspectiveCamera, count: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def uniform(limit: float) -> torch.Tensor:
        return (2 * torch.rand(count, generator=generator) - 1) * limit

    degrees = torch.pi / 180
    rotation = torch.stack([uniform(30), uniform(60), uniform(45)], -1) * degrees
    # Depth from 3 units nearer to 1 unit further than the origin at the reference camera: faces
    # from about 0.75× to 1.1× the reference size; scaled with the camera distance.
    depth = (uniform(2.0) - 1.0) * camera.distance / REFERENCE_DISTANCE
    translation = torch.stack([uniform(0.2), uniform(0.2), depth], -1)
    faces = {
        "identity": torch.randn(count, model.dims.identity, generator=generator),
        "expression": 0.5 * torch.randn(count, model.dims.expression, generator=generator),
        "rotation": rotation,
        "translation": translation,
    }
    vertices = model.pose(model.shape(faces["identity"], faces["expression"]), rotation, translation)
    faces["landmarks"] = camera.project(vertices)[:, model.landmark_ids]
    return faces


def similarity_aligned_rms(fitted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """RMS vertex distance ``[B]`` after the best rotation, translation and scale of ``fitted``
    onto ``true`` (Umeyama's closed form)."""
    fitted, true = fitted.double(), true.double()
    fitted_centre, true_centre = fitted.mean(1, keepdim=True), true.mean(1, keepdim=True)
    a, b = fitted - fitted_centre, true - true_centre
    covariance = b.transpose(1, 2) @ a / a.shape[1]
    u, singular, vh = torch.linalg.svd(covariance)
    sign = torch.ones_like(singular)
    sign[:, -1] = torch.sign(torch.linalg.det(u @ vh))
    rotation = u @ torch.diag_embed(sign) @ vh
    scale = (singular * sign).sum(-1) / a.square().sum((1, 2)) * a.shape[1]
    aligned = scale[:, None, None] * a @ rotation.transpose(1, 2)
    return (aligned - b).square().sum(-1).mean(-1).sqrt().float()


def landmark_rms(fitted: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    return (fitted - observed).square().sum(-1).mean(-1).sqrt()


class EosFitter:
    """The same face model in eos, fitted one face at a time with fixed landmark correspondences."""

    def __init__(self, model: MorphableModel, folder: Path) -> None:
        import eos

        self.eos = eos
        self.landmark_ids = model.landmark_ids.numpy()
        mean = model.mean_shape.numpy().reshape(-1).astype(np.float32)
        triangles = model.triangles.numpy().tolist()
        self.shape_model = eos.morphablemodel.PcaModel(mean, *_orthonormal_pca(model.identity_basis), triangles)
        expression_model = eos.morphablemodel.PcaModel(
            np.zeros_like(mean), *_orthonormal_pca(model.expression_basis), triangles
        )
        self.model = eos.morphablemodel.MorphableModel(
            self.shape_model, expression_model, eos.morphablemodel.PcaModel()
        )
        mapping = folder / "ibug_to_demo_face.txt"
        lines = [f"{index + 1} = {vertex}" for index, vertex in enumerate(self.landmark_ids.tolist())]
        mapping.write_text("[landmark_mappings]\n" + "\n".join(lines) + "\n")
        self.mapper = eos.core.LandmarkMapper(str(mapping))

    def fit(self, landmarks: torch.Tensor, iterations: int) -> dict[str, object]:
        """Fit each face; returns time per face (ms), fitted landmarks ``[B, 68, 2]`` and neutral
        identity shapes ``[B, N, 3]``."""
        eos = self.eos
        inputs = [
            [eos.core.Landmark(str(index + 1), point.reshape(2, 1)) for index, point in enumerate(face)]
            for face in landmarks.numpy().astype(np.float32)
        ]
        lambda_identity = IDENTITY_PRIOR / EOS_PIXEL_VARIANCE
        lambda_expression = EXPRESSION_PRIOR / EOS_PIXEL_VARIANCE
        outputs = []
        start = time.perf_counter()
        for face in inputs:
            outputs.append(
                eos.fitting.fit_shape_and_pose(
                    self.model, face, self.mapper, IMAGE_SIZE, IMAGE_SIZE, iterations,
                    None, lambda_identity, None, lambda_expression,
                )
            )
        elapsed = time.perf_counter() - start
        fitted, shapes = [], []
        for mesh, pose, shape_coefficients, _ in outputs:
            camera = eos.fitting.get_3x4_affine_camera_matrix(pose, IMAGE_SIZE, IMAGE_SIZE)
            points = np.asarray(mesh.vertices)[self.landmark_ids]
            fitted.append((np.c_[points, np.ones(len(points))] @ camera.T)[:, :2])
            shapes.append(np.asarray(self.shape_model.draw_sample(shape_coefficients)).reshape(-1, 3))
        return {
            "ms_per_face": 1000 * elapsed / len(inputs),
            "landmarks": torch.from_numpy(np.stack(fitted)).float(),
            "shapes": torch.from_numpy(np.stack(shapes)).float(),
        }


def _orthonormal_pca(basis: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis ``[3N, k]`` and eigenvalues ``[k]`` with the same coefficient covariance as
    ``basis [k, 3N]`` under N(0, 1) coefficients (Bᵀ·B = V·S²·Vᵀ)."""
    _, singular, vh = np.linalg.svd(basis.numpy().astype(np.float64), full_matrices=False)
    return vh.T.astype(np.float32), (singular**2).astype(np.float32)


def fit_ours(model: MorphableModel, camera: PerspectiveCamera, landmarks: torch.Tensor, repeats: int) -> dict[str, object]:
    # All landmarks weigh the same, as in eos: the same objective on both sides.
    config = FitConfig(
        contour=False, contour_weight=1.0, identity_prior=IDENTITY_PRIOR, expression_prior=EXPRESSION_PRIOR
    )
    fitter = LandmarkFitter(model, camera, config)
    fitter.fit(landmarks[:2])  # warm-up
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fitter.fit(landmarks)
        times.append(time.perf_counter() - start)
    identity = result.coefficients.identity
    shapes = model.shape(identity, torch.zeros(identity.shape[0], model.dims.expression))
    return {
        "ms_per_face": 1000 * statistics.median(times) / landmarks.shape[0],
        "landmarks": result.fitted_landmarks,
        "shapes": shapes,
    }


def scores(method: dict[str, object], faces: dict[str, torch.Tensor], true_shapes: torch.Tensor, count: int) -> dict[str, float]:
    """Errors over the first ``count`` faces."""
    landmark_error = landmark_rms(method["landmarks"][:count], faces["landmarks"][:count])
    return {
        "ms_per_face": method["ms_per_face"],
        "landmark_px": landmark_error.mean().item(),
        "landmark_px_max": landmark_error.max().item(),
        "shape_err": similarity_aligned_rms(method["shapes"][:count], true_shapes[:count]).mean().item(),
    }


def report(label: str, result: dict[str, float]) -> None:
    print(
        f"  {label:>32}: {result['ms_per_face']:8.2f} ms/face, landmarks {result['landmark_px']:.3f} px "
        f"(worst {result['landmark_px_max']:.3f}), shape {result['shape_err']:.4f} ({100 * result['shape_err']:.2f} mm)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=64, help="synthetic faces per camera (default 64)")
    parser.add_argument("--converged-faces", type=int, default=12, help="faces for the converged eos run (default 12)")
    parser.add_argument("--resolution", type=int, default=BFM_SIZE_RESOLUTION, help="demo model resolution (default BFM size)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of our batched fit (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = demo_face_model(args.resolution)
    load = os.getloadavg()[0]
    print(f"model: demo face at resolution {args.resolution}, {model.num_vertices} vertices, {model.dims}")
    print(f"{args.faces} faces per camera, clean landmarks, {IMAGE_SIZE} px images")
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores; both methods' times are inflated")
    summary: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as folder:
        eos_fitter = EosFitter(model, Path(folder))
        for name, camera in (("far", far_camera()), ("deep3d", PerspectiveCamera.deep3d(IMAGE_SIZE))):
            faces = synthetic_faces(model, camera, args.faces, args.seed)
            true_shapes = model.shape(faces["identity"], torch.zeros_like(faces["expression"]))
            mean_face = model.mean_shape.expand_as(true_shapes)
            mean_shape_error = similarity_aligned_rms(mean_face, true_shapes).mean().item()
            ours_fit = fit_ours(model, camera, faces["landmarks"], args.repeats)
            eos_fit = eos_fitter.fit(faces["landmarks"], EOS_ITERATIONS)
            ours, theirs = (scores(fit, faces, true_shapes, args.faces) for fit in (ours_fit, eos_fit))
            if name == "far":
                print("near-orthographic camera (headline; eos's camera model is exact here):")
            else:
                print("the pack's Deep3DFaceRecon perspective camera (eos's orthographic camera approximates it):")
            report("ours (batched LM, 1 thread)", ours)
            report(f"eos ({EOS_ITERATIONS} alternations, per face)", theirs)
            print(f"  {'mean face (no fit)':>32}: shape {mean_shape_error:.4f}")
            suffix = "" if name == "far" else "_deep3d_camera"
            summary.update({f"ours_{key}{suffix}": value for key, value in ours.items()})
            summary.update({f"eos_{key}{suffix}": value for key, value in theirs.items()})
            summary[f"mean_face_shape_err{suffix}"] = mean_shape_error
            if name != "far":
                continue
            count = args.converged_faces
            converged = scores(eos_fitter.fit(faces["landmarks"][:count], EOS_CONVERGED_ITERATIONS), faces, true_shapes, count)
            ours_subset = scores(ours_fit, faces, true_shapes, count)
            print(f"  on the first {count} faces:")
            report(f"eos ({EOS_CONVERGED_ITERATIONS} alternations, per face)", converged)
            report("ours (same faces)", ours_subset)
            summary.update({f"eos_converged_{key}": value for key, value in converged.items()})
            summary.update({f"ours_subset_{key}": value for key, value in ours_subset.items() if key != "ms_per_face"})
            torch.set_num_threads(default_threads)
            threaded = fit_ours(model, camera, faces["landmarks"], args.repeats)["ms_per_face"]
            torch.set_num_threads(1)
            print(f"  ours at torch's default {default_threads} threads: {threaded:.2f} ms/face")
            summary["ours_ms_per_face_default_threads"] = threaded
    summary.update(
        faces=args.faces, device="cpu", threads=1, default_threads=default_threads, load_average=load,
        vertices=model.num_vertices, eos_iterations=EOS_ITERATIONS, converged_faces=args.converged_faces,
    )
    headline = ("ours_ms_per_face", "eos_ms_per_face", "ours_landmark_px", "eos_landmark_px", "ours_shape_err", "eos_shape_err")
    print(json.dumps({**{key: summary[key] for key in headline}, **summary}))


if __name__ == "__main__":
    main()
