"""The "D" regressor: Deep3DFaceRecon's R-Net layout at full size, its loader, its crop, and the fitter's refinement."""
import argparse
import collections

import numpy as np
import pytest
import torch
from packloader import pack_import
from safetensors.torch import save_file
from scipy.io import savemat

regressor = pack_import("pipelines.face.regressor")
faces_module = pack_import("pipelines.face.faces")
fit_module = pack_import("pipelines.face.fit")
alignment = pack_import("pipelines.face.alignment")
coefficients = pack_import("pipelines.morphable.coefficients")
demo = pack_import("pipelines.morphable.demo_model")
renderer_module = pack_import("pipelines.render.renderer")
camera_module = pack_import("pipelines.morphable.camera")
errors = pack_import("pipelines.errors")


@pytest.fixture(scope="module")
def model():
    return demo.demo_face_model(12)


@pytest.fixture(scope="session")
def network():
    """The full-size network (24M parameters), randomly initialised, BatchNorm statistics made non-trivial."""
    torch.manual_seed(0)
    net = regressor.FaceCoefficientRegressor()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(20)
    return net.eval()


@pytest.fixture(scope="session")
def epoch_20(network, tmp_path_factory):
    """A file in the layout of the released epoch_20.pth: the net under 'net_recon', beside optimizer state."""
    path = tmp_path_factory.mktemp("checkpoints") / "epoch_20.pth"
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1]}]}
    torch.save({"net_recon": network.state_dict(), "opt_00": optimizer, "epoch": 20}, path)
    return path


def torchvision_resnet50() -> torch.nn.Module:
    """torchvision's ResNet-50 without the cost of initialising 25M weights (they are overwritten or unused)."""
    import torchvision

    with torch.device("meta"):
        reference = torchvision.models.resnet50()
    return reference.to_empty(device="cpu")


def test_module_tree_has_the_released_key_layout(network):
    """Keys and shapes are torchvision's ResNet-50 (minus its classifier) under backbone., plus seven 1×1 heads."""
    ours = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    reference = {f"backbone.{k}": tuple(v.shape) for k, v in torchvision_resnet50().state_dict().items()
                 if not k.startswith("fc.")}
    heads = {f"final_layers.{i}.{p}": (n, 2048, 1, 1) if p == "weight" else (n,)
             for i, n in enumerate((80, 64, 80, 3, 27, 2, 1)) for p in ("weight", "bias")}
    assert ours == {**reference, **heads}
    assert sum(v.numel() for v in network.state_dict().values() if v.is_floating_point()) > 24_000_000


def test_backbone_computes_what_a_resnet50_computes(network):
    """Same weights in torchvision's ResNet-50 give the same pooled features (a small input keeps it quick)."""
    reference = torchvision_resnet50()
    reference.fc = torch.nn.Identity()
    state = {k[len("backbone."):]: v for k, v in network.state_dict().items() if k.startswith("backbone.")}
    reference.load_state_dict(state)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(network.backbone(images).flatten(1), reference.eval()(images), atol=1e-4)


def test_epoch_20_layout_and_sadtalker_bundle_load(network, epoch_20, tmp_path):
    loaded = regressor.load_regressor_network(epoch_20)
    for (name, ours), (_, theirs) in zip(loaded.state_dict().items(), network.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name
    assert not loaded.training  # BatchNorm uses the stored statistics
    # SadTalker's bundle stores the same tensors under face_3drecon. in a .safetensors file.
    bundle = {f"face_3drecon.{k}": v.contiguous() for k, v in network.state_dict().items()}
    bundle["generator.first.weight"] = torch.zeros(2)
    save_file(bundle, tmp_path / "SadTalker_V0.0.2_256.safetensors")
    from_bundle = regressor.load_regressor_network(tmp_path / "SadTalker_V0.0.2_256.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(from_bundle.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))


def test_strict_loading_names_what_is_wrong(network, tmp_path):
    state = collections.OrderedDict(network.state_dict())
    del state["final_layers.6.bias"]
    state["final_layers.1.weight"] = torch.zeros(65, 2048, 1, 1)
    state["extra.weight"] = torch.zeros(1)
    torch.save({"net_recon": state}, tmp_path / "broken.pth")
    with pytest.raises(errors.ModelFileError) as error:
        regressor.load_regressor_network(tmp_path / "broken.pth")
    message = str(error.value)
    assert "missing final_layers.6.bias" in message and "unexpected extra.weight" in message
    assert "final_layers.1.weight (65, 2048, 1, 1) (expected (64, 2048, 1, 1))" in message
    # A classifier ResNet-50 is recognised and named (its key names are what matters, not its values).
    torch.save({k: torch.zeros(1) for k in torchvision_resnet50().state_dict()}, tmp_path / "resnet50.pth")
    with pytest.raises(errors.ModelFileError, match="looks like a plain ResNet classifier"):
        regressor.load_regressor_network(tmp_path / "resnet50.pth")
    torch.save({"mapping.fc.weight": torch.zeros(2)}, tmp_path / "mapping_00229-model.pth.tar")
    with pytest.raises(errors.ModelFileError, match="SadTalker mapping network"):
        regressor.load_regressor_network(tmp_path / "mapping_00229-model.pth.tar")


def test_unsafe_corrupt_and_missing_files_are_refused(tmp_path):
    torch.save({"net_recon": {}, "options": argparse.Namespace(lr=1e-4)}, tmp_path / "pickled.pth")  # a Python object
    with pytest.raises(errors.ModelFileError, match="more than plain tensors"):
        regressor.load_regressor_network(tmp_path / "pickled.pth")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(errors.ModelFileError, match="not a readable PyTorch file"):
        regressor.load_regressor_network(tmp_path / "cut.pth")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(errors.ModelFileError, match="not a readable .safetensors"):
        regressor.load_regressor_network(tmp_path / "cut.safetensors")
    with pytest.raises(errors.ModelFileError, match="not found"):
        regressor.load_regressor_network(tmp_path / "epoch_20.pth")


def test_template_file_gives_deep3d_five_points(tmp_path):
    landmarks = np.random.default_rng(0).normal(size=(68, 3))
    savemat(tmp_path / "similarity_Lm3D_all.mat", {"lm": landmarks})
    five = regressor.read_template_file(tmp_path / "similarity_Lm3D_all.mat")
    expected = np.stack([landmarks[[36, 39]].mean(0), landmarks[[42, 45]].mean(0), landmarks[30], landmarks[48],
                         landmarks[54]])
    assert np.allclose(five.numpy(), expected, atol=1e-6)
    savemat(tmp_path / "other.mat", {"points": landmarks})
    with pytest.raises(errors.ModelFileError, match="no 'lm' array"):
        regressor.read_template_file(tmp_path / "other.mat")


def test_crop_follows_align_img(model):
    """Five points made from the template at a known scale and shift land, as align_img puts them, at
    112 + 102·(x, −y) of the template in the crop (up to align_img's whole-pixel rounding), unrotated."""
    template = regressor.model_template(model)
    scale, shift = 180.0, torch.tensor([310.0, 190.0])
    points = (template[:, :2] * torch.tensor([1.0, -1.0]) * scale + shift).unsqueeze(0)
    transforms = regressor.deep3d_crop_transforms(points, 480, 640, template)
    assert transforms[0, 0, 1] == 0 and transforms[0, 1, 0] == 0
    assert float(transforms[0, 0, 0]) == pytest.approx(102.0 / scale, rel=0.01)
    in_crop = alignment.apply_transforms(transforms, points)[0]
    expected = template[:, :2] * torch.tensor([1.0, -1.0]) * 102.0 + 112.0
    assert (in_crop - expected).abs().max() < 1.5


def test_reframed_pose_projects_where_the_similarity_sends_the_face(model):
    coeffs = coefficients.FaceCoefficients.neutral(2, model.dims)
    coeffs.rotation[:] = torch.tensor([[0.1, 0.2, 0.05], [-0.05, -0.3, 0.0]])
    coeffs.translation[:] = torch.tensor([[0.1, -0.05, 0.3], [-0.2, 0.1, -0.2]])
    angle = torch.tensor([0.15, -0.1])
    zoom = torch.tensor([1.1, 0.9])
    linear = zoom.view(-1, 1, 1) * torch.stack([torch.stack([angle.cos(), -angle.sin()], -1),
                                                torch.stack([angle.sin(), angle.cos()], -1)], 1)
    similarity = torch.cat([linear, torch.tensor([[[-5.0], [8.0]], [[6.0], [-3.0]]])], dim=2)
    camera = camera_module.PerspectiveCamera.deep3d(224)
    moved = regressor.reframe_pose(model, coeffs, similarity, camera)

    def landmarks(c):
        return camera.project(model.posed_vertices(c)[:, model.landmark_ids])

    expected = alignment.apply_transforms(similarity, landmarks(coeffs))
    error = (landmarks(moved) - expected).norm(dim=-1)
    assert float(error.mean(-1).max()) < 1.5  # first order in depth; the fitter takes it from here
    assert float((landmarks(moved).mean(1) - expected.mean(1)).norm(dim=-1).max()) < 0.5


def test_loaded_network_predicts_on_a_crop_and_the_fitter_refines(model, epoch_20):
    """A synthetic face through the full-size network loaded from the epoch_20.pth layout (its heads set
    to a known guess, as a trained net would give) and the fitter: the pose comes from the landmarks,
    the network's identity is kept, the landmarks fit."""
    truth = coefficients.FaceCoefficients.neutral(1, model.dims)
    generator = torch.Generator().manual_seed(5)
    truth.identity[0] = 0.8 * torch.randn(model.dims.identity, generator=generator)
    truth.expression[0, model.expression_index("jaw_open")] = 0.6
    truth.rotation[0] = torch.tensor([0.05, 0.3, 0.1])
    maps = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(300)).render(truth)
    faces = faces_module.faces_from_landmarks(maps.image, maps.landmarks)
    guess = truth.to_flat()[0].clone()
    guess[144:224] = 0.3  # texture
    guess[224:227] = torch.tensor([0.0, 0.2, 0.0])  # a rough pose in the Deep3D crop
    guess[254:257] = 0.0
    trained = regressor.load_regressor_network(epoch_20)
    with torch.no_grad():
        for head in trained.final_layers:
            head.weight.zero_()
        for head, part in zip(trained.final_layers, guess.split([80, 64, 80, 3, 27, 2, 1]), strict=True):
            head.bias.copy_(part)
    found = regressor.FaceRegressor(trained.eval(), template=None, refine="pose_and_expression")
    start = regressor.regress_coefficients(found, faces, model)
    assert torch.allclose(start.identity, truth.identity) and torch.allclose(start.texture, guess[144:224])
    fit = fit_module.fit_faces(model, faces, appearance=False, gaze=False, init=start, refine=found.refine_groups)
    assert torch.equal(fit.coefficients.identity, start.identity)  # kept: the network's shape
    assert torch.allclose(fit.coefficients.texture, start.texture)  # no appearance step: the network's texture
    # The fitting crop re-frames by a similarity, which perspective makes not quite a pose change: ~1 px.
    assert float(fit.landmark_error[0]) < 1.5
    jaw = model.expression_index("jaw_open")
    assert float(fit.coefficients.expression[0, jaw]) == pytest.approx(0.6, abs=0.1)
    assert float(fit.coefficients.rotation[0, 1]) == pytest.approx(0.3, abs=0.06)


def test_regressor_needs_the_bfm_layout(network):
    model = demo.demo_face_model(12)
    model.identity_basis = model.identity_basis[:10]
    faces = faces_module.faces_from_landmarks(torch.zeros(1, 64, 64, 3), torch.rand(1, 68, 2) * 64)
    with pytest.raises(errors.TalkingFaceError, match="BFM09 coefficients"):
        regressor.regress_coefficients(regressor.FaceRegressor(network, None), faces, model)
    with pytest.raises(errors.TalkingFaceError, match="refine must be one of"):
        regressor.FaceRegressor(network, None, refine="everything")


@pytest.mark.parametrize("mode", ["fast", "joint"])
def test_video_fit_from_per_frame_starts_shares_one_identity(model, mode):
    """Per-frame network guesses disagree on the identity; the video keeps their mean and fits the motion."""
    truth = coefficients.FaceCoefficients.neutral(3, model.dims)
    generator = torch.Generator().manual_seed(8)
    truth.identity[:] = 0.6 * torch.randn(model.dims.identity, generator=generator)
    truth.rotation[:, 1] = torch.tensor([-0.2, 0.0, 0.2])
    truth.expression[:, model.expression_index("jaw_open")] = torch.tensor([0.0, 0.5, 1.0])
    maps = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(224)).render(truth)
    faces = faces_module.faces_from_landmarks(maps.image, maps.landmarks)
    start = truth.replace(identity=truth.identity + 0.1 * torch.randn(3, model.dims.identity, generator=generator),
                          rotation=torch.zeros(3, 3), expression=torch.zeros(3, model.dims.expression))
    fit = fit_module.fit_faces(model, faces, appearance=False, gaze=False, video_mode=mode, smoothing=0.0,
                               init=start, refine=("rotation", "translation", "expression"))
    found = fit.coefficients
    assert torch.allclose(found.identity, start.identity.mean(0, keepdim=True).expand(3, -1), atol=1e-6)
    jaw = found.expression[:, model.expression_index("jaw_open")]
    assert float(jaw[2] - jaw[0]) > 0.6 and (found.rotation[:, 1] - truth.rotation[:, 1]).abs().max() < 0.06
