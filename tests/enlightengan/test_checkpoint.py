"""Checkpoint directories and the authors' weight layout, on CPU with real networks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from enlightengan.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    import_official_state_dict,
    is_complete_checkpoint,
    latest_checkpoint_in,
    load_checkpoint,
    load_generator,
    load_networks,
    load_official_generator,
    official_state_dict,
    save_checkpoint,
    save_official_generator,
)
from enlightengan.config import GeneratorConfig, tiny_config
from enlightengan.discriminator import build_discriminators
from enlightengan.official_weights import reference_layout
from tests.enlightengan.textured_generator import textured_generator

REFERENCE_JSON = Path(__file__).resolve().parents[2] / "enlightengan/data"
REFERENCE_JSON = REFERENCE_JSON / "official_generator_state_dict.json"


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config()
    return config, textured_generator(config.generator)


@pytest.fixture(scope="module")
def reference_generator():
    return textured_generator(GeneratorConfig(), seed=1)


def dark_batch(height: int = 37, width: int = 53, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((2, 3, height, width), generator=generator) * 0.6 - 1.0


def save_tiny(directory: Path, config, generator, step: int = 0, **extra) -> Path:
    return save_checkpoint(
        directory,
        config=config,
        networks={"generator": generator},
        trainer_state={"step": step, "epoch": 0},
        **extra,
    )


def rewrite_index_entry(directory: Path, name: str) -> None:
    """Re-hash one file into the index, as a writer that produced it would have."""
    index_path = directory / "checkpoint.json"
    index = json.loads(index_path.read_text())
    data = (directory / name).read_bytes()
    index["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    index_path.write_text(json.dumps(index))


def test_save_load_reproduces_outputs_and_all_states(tmp_path, tiny):
    config, generator = tiny
    global_d, patch_d = build_discriminators(config.discriminator)
    optimizer = torch.optim.Adam(global_d.parameters(), lr=1e-3, betas=(0.5, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0 - 0.1 * epoch)
    scores = global_d(dark_batch(64, 64)).pow(2).mean()
    scores.backward()
    optimizer.step()
    scheduler.step()
    rng = {"torch": torch.get_rng_state(), "sampler": torch.Generator().manual_seed(7).get_state()}
    directory = save_checkpoint(
        tmp_path / "ckpt",
        config=config,
        networks={
            "generator": nn.DataParallel(generator),
            "global_d": global_d,
            "patch_d": patch_d,
        },
        optimizers={"global_d": optimizer},
        schedulers={"global_d": scheduler},
        trainer_state={"step": 12, "epoch": 3, "metrics": {"loss": 0.5}},
        rng_state=rng,
    )
    assert is_complete_checkpoint(directory, verify_hashes=True)

    loaded = load_checkpoint(directory)
    assert loaded.config == config
    assert loaded.step == 12 and loaded.trainer_state["metrics"] == {"loss": 0.5}
    assert torch.equal(loaded.rng_state["torch"], rng["torch"])
    assert set(loaded.network_states["generator"]) == set(generator.state_dict())

    restored = load_generator(directory)
    assert not restored.training
    inputs = dark_batch()
    with torch.no_grad():
        expected, restored_output = generator(inputs), restored(inputs)
    assert (expected - inputs).abs().mean() > 0.05  # the model really changes its input
    assert torch.equal(expected, restored_output)

    fresh_d, _ = build_discriminators(config.discriminator)
    fresh_d.load_state_dict(loaded.network_states["global_d"])
    fresh_optimizer = torch.optim.Adam(fresh_d.parameters(), lr=1e-3, betas=(0.5, 0.999))
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda e: 1.0 - 0.1 * e)
    fresh_optimizer.load_state_dict(loaded.optimizer_states["global_d"])
    fresh_scheduler.load_state_dict(loaded.scheduler_states["global_d"])
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(0.9e-3)
    for network, opt in ((global_d, optimizer), (fresh_d, fresh_optimizer)):
        opt.zero_grad()
        network(dark_batch(64, 64, seed=3)).pow(2).mean().backward()
        opt.step()
    for original, resumed in zip(global_d.parameters(), fresh_d.parameters(), strict=True):
        assert torch.equal(original, resumed)


def test_load_networks_reads_a_copy_that_holds_only_the_networks(tmp_path, tiny):
    """What a fine-tune fetches of its source: index, config, generator, discriminators."""
    config, generator = tiny
    global_d, patch_d = build_discriminators(config.discriminator)
    networks = {"generator": generator, "global_d": global_d, "patch_d": patch_d}
    optimizer = torch.optim.Adam(global_d.parameters())
    full = save_checkpoint(
        tmp_path / "full",
        config=config,
        networks=networks,
        optimizers={"global_d": optimizer},
        trainer_state={"step": 40},
        rng_state={"torch": torch.get_rng_state()},
    )
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("checkpoint.json", "config.json", "generator.pt", "discriminators.pt"):
        (copy / name).write_bytes((full / name).read_bytes())
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(copy)
    loaded = load_networks(copy)
    assert loaded.config == config and loaded.trainer_state == {} and not loaded.optimizer_states
    for name, module in networks.items():
        stored = loaded.network_states[name]
        assert all(torch.equal(stored[key], value) for key, value in module.state_dict().items())
    (copy / "discriminators.pt").write_bytes(b"damaged")
    with pytest.raises(CheckpointError):
        load_networks(copy)


@pytest.mark.parametrize("storage_dtype", ["float16", "bfloat16"])
def test_half_precision_storage_loads_as_float32_and_halves_the_files(
    tmp_path, tiny, storage_dtype
):
    """A shipped model stores its weights in half precision; every loader returns float32."""
    config, generator = tiny
    global_d, patch_d = build_discriminators(config.discriminator)
    networks = {"generator": generator, "global_d": global_d, "patch_d": patch_d}
    full = save_checkpoint(tmp_path / "full", config=config, networks=networks)
    half = save_checkpoint(
        tmp_path / "half", config=config, networks=networks, storage_dtype=storage_dtype
    )
    assert is_complete_checkpoint(half, verify_hashes=True)
    for name in ("generator.pt", "discriminators.pt"):
        ratio = (half / name).stat().st_size / (full / name).stat().st_size
        assert 0.45 < ratio < 0.6, (name, ratio)
    stored = torch.load(half / "generator.pt", weights_only=True)
    dtype = getattr(torch, storage_dtype)
    assert stored["conv1_1.weight"].dtype == dtype
    assert stored["bn1_1.num_batches_tracked"].dtype == torch.int64

    loaded = load_checkpoint(half)
    for name, module in networks.items():
        for key, value in module.state_dict().items():
            got = loaded.network_states[name][key]
            if value.is_floating_point():
                assert got.dtype == torch.float32
                assert torch.equal(got, value.to(dtype).float()), (name, key)
            else:
                assert torch.equal(got, value) and got.dtype == value.dtype
    assert load_networks(half).network_states["patch_d"]["layers.0.weight"].dtype == torch.float32
    restored = load_generator(half)
    assert all(value.dtype == torch.float32 for value in restored.parameters())
    expected = {key: value.to(dtype).float() for key, value in generator.state_dict().items()}
    for key, value in restored.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, expected[key]), key


def test_unknown_storage_dtype_is_refused(tmp_path, tiny):
    config, generator = tiny
    with pytest.raises(ValueError, match="storage_dtype"):
        save_checkpoint(
            tmp_path / "x", config=config, networks={"generator": generator}, storage_dtype="int8"
        )
    assert not (tmp_path / "x").exists()


def test_missing_index_means_incomplete(tmp_path, tiny):
    config, generator = tiny
    directory = save_tiny(tmp_path / "ckpt", config, generator)
    (directory / "checkpoint.json").unlink()
    assert not is_complete_checkpoint(directory)
    with pytest.raises(CheckpointError, match="no checkpoint.json"):
        load_checkpoint(directory)
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        load_generator(tmp_path / "absent")


def test_corrupted_truncated_or_missing_files_are_rejected(tmp_path, tiny):
    config, generator = tiny
    directory = save_tiny(tmp_path / "ckpt", config, generator)
    weights = directory / "generator.pt"
    original = weights.read_bytes()

    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    assert is_complete_checkpoint(directory)  # same size: only hashing can tell
    assert not is_complete_checkpoint(directory, verify_hashes=True)
    with pytest.raises(CheckpointError, match="sha256"):
        load_generator(directory)

    weights.write_bytes(original[:-10])
    assert not is_complete_checkpoint(directory)
    with pytest.raises(CheckpointError, match="bytes"):
        load_checkpoint(directory)

    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_generator(directory)


class WritesMarker:
    """Unpickling this would create a file: proof that arbitrary code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_arbitrary_pickles_are_refused(tmp_path, tiny):
    config, generator = tiny
    directory = save_tiny(tmp_path / "ckpt", config, generator)
    marker = tmp_path / "code-ran"
    torch.save({"conv1_1.weight": WritesMarker(marker)}, directory / "generator.pt")
    rewrite_index_entry(directory, "generator.pt")
    assert is_complete_checkpoint(directory, verify_hashes=True)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_generator(directory)
    official = tmp_path / "evil.pth"
    torch.save({"module.conv1_1.weight": WritesMarker(marker)}, official)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_official_generator(official)
    assert not marker.exists()


def test_wrong_architecture_is_a_checkpoint_error(tmp_path, tiny):
    config, generator = tiny
    directory = save_tiny(tmp_path / "ckpt", config, generator)
    wider = config.with_overrides({"generator.base_channels": 8})
    (directory / "config.json").write_text(wider.to_json())
    rewrite_index_entry(directory, "config.json")
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        load_generator(directory)
    with pytest.raises(ValueError, match="different GeneratorConfig"):
        save_tiny(tmp_path / "other", wider, generator)


def test_overwriting_a_checkpoint_leaves_only_the_new_one(tmp_path, tiny):
    config, generator = tiny
    directory = tmp_path / "ckpt"
    save_tiny(directory, config, generator, step=1, rng_state={"torch": torch.get_rng_state()})
    save_tiny(directory, config, generator, step=2)
    loaded = load_checkpoint(directory)
    assert loaded.step == 2 and loaded.rng_state == {}
    assert not (directory / "rng.pt").exists()
    assert not [path for path in directory.iterdir() if path.name.startswith(".")]


def test_find_latest_checkpoint_picks_highest_complete_step(tmp_path, tiny):
    config, generator = tiny
    run = tmp_path / "storage" / "run"
    for name, step in (("checkpoint_a", 5), ("checkpoint_b", 20), ("checkpoint_c", 10)):
        save_tiny(run / name, config, generator, step=step)
    broken = save_tiny(run / "checkpoint_d", config, generator, step=99)
    (broken / "checkpoint.json").unlink()
    (run / "checkpoint_e").mkdir()
    assert find_latest_checkpoint(tmp_path) == run / "checkpoint_b"
    assert find_latest_checkpoint(run / "checkpoint_c") == run / "checkpoint_c"
    assert find_latest_checkpoint(run / "checkpoint_e") is None
    assert find_latest_checkpoint(tmp_path / "nowhere") is None

    tie = save_tiny(run / "checkpoint_f", config, generator, step=20)
    older = os.stat(run / "checkpoint_b" / "checkpoint.json").st_mtime
    os.utime(tie / "checkpoint.json", (older + 5, older + 5))
    assert find_latest_checkpoint(tmp_path) == tie

    too_deep = tmp_path / "storage" / "a" / "b" / "c" / "checkpoint_z"
    save_tiny(too_deep, config, generator, step=1000)
    assert find_latest_checkpoint(tmp_path) == tie


def test_official_layout_round_trip_reproduces_outputs(tmp_path, reference_generator):
    exported = official_state_dict(reference_generator)
    names = [name for name, _ in json.loads(REFERENCE_JSON.read_text())]
    assert list(exported) == [
        f"module.{name}" for name in names if not name.endswith("num_batches_tracked")
    ]
    assert len(exported) == 131 - 17

    path = save_official_generator(nn.DataParallel(reference_generator), tmp_path / "G_A.pth")
    raw = torch.load(path, weights_only=True)
    assert list(raw) == list(exported)
    imported = load_official_generator(path)
    assert not imported.training
    inputs = dark_batch(40, 56)
    with torch.no_grad():
        expected, actual = reference_generator(inputs), imported(inputs)
    assert (expected - inputs).abs().mean() > 0.05
    assert torch.equal(expected, actual)
    assert imported.bn1_1.num_batches_tracked.item() == 0


def test_official_import_names_every_problem():
    good = {
        f"module.{name}": torch.zeros(shape)
        for name, shape in reference_layout()
        if "num_batches" not in name
    }
    assert len(import_official_state_dict(good)) == 131
    bad = dict(good)
    del bad["module.conv3_1.bias"]
    bad["module.extra.weight"] = torch.zeros(1)
    bad["module.conv10.weight"] = torch.zeros(3, 16, 1, 1)
    with pytest.raises(CheckpointError) as caught:
        import_official_state_dict(bad)
    message = str(caught.value)
    assert "1 missing: conv3_1.bias" in message
    assert "1 unexpected: extra.weight" in message
    assert "conv10.weight (3, 16, 1, 1) (expected (3, 32, 1, 1))" in message
    with pytest.raises(CheckpointError, match="not a tensor"):
        import_official_state_dict({"module.conv1_1.weight": [1, 2]})


def test_export_refuses_a_non_reference_architecture(tiny):
    _, generator = tiny
    with pytest.raises(CheckpointError, match="authors' generator layout"):
        official_state_dict(generator)


def test_latest_checkpoint_in_a_listed_tree_follows_the_same_rule(tmp_path, tiny):
    """The rule works on any listing (a bucket's, in the Ray layer): the root may itself be
    the checkpoint, a short file disqualifies, nothing inside a checkpoint is searched."""
    config, generator = tiny
    save_tiny(tmp_path / "run" / "checkpoint_a", config, generator, step=5)
    save_tiny(tmp_path / "run" / "checkpoint_b", config, generator, step=7)
    save_tiny(tmp_path / "run" / "checkpoint_b" / "inner", config, generator, step=50)
    files = {
        path.relative_to(tmp_path).as_posix(): (path.stat().st_size, path.stat().st_mtime)
        for path in tmp_path.rglob("*")
        if path.is_file()
    }

    def read(name: str) -> bytes:
        return (tmp_path / name).read_bytes()

    assert latest_checkpoint_in(files, read) == "run/checkpoint_b"
    size, mtime = files["run/checkpoint_b/generator.pt"]
    assert (
        latest_checkpoint_in({**files, "run/checkpoint_b/generator.pt": (size - 1, mtime)}, read)
        == "run/checkpoint_a"
    )
    only_a = {
        name[len("run/checkpoint_a/") :]: info
        for name, info in files.items()
        if name.startswith("run/checkpoint_a/")
    }
    assert latest_checkpoint_in(only_a, lambda name: read(f"run/checkpoint_a/{name}")) == ""
    assert latest_checkpoint_in({}, read) is None
