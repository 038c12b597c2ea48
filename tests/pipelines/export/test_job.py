"""``enlightengan export`` / ``import-official`` on real checkpoints, files and runtimes (CPU)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from enlightengan.checkpoint import load_generator, save_checkpoint
from enlightengan.config import EnlightenGANConfig, GeneratorConfig, tiny_config
from enlightengan.generator import Generator
from pipelines.cli import main
from tests.enlightengan.textured_generator import textured_generator


def dark_batch(batch: int, height: int, width: int, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 3, height, width), generator=generator) * 0.6 - 1.0


def reference_generator(seed: int = 1) -> Generator:
    """The authors' architecture with weights and BatchNorm statistics that move pixels (the
    reference init barely does), built in well under a second."""
    torch.manual_seed(seed)
    generator = Generator(GeneratorConfig())
    for module in generator.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return generator.eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    config = tiny_config()
    directory = tmp_path_factory.mktemp("tiny") / "run" / "checkpoint_000001"
    return save_checkpoint(
        directory,
        config=config,
        networks={"generator": textured_generator(config.generator)},
        trainer_state={"step": 1, "epoch": 0},
    )


def sidecar_of(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text())


def only_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.slow  # the dynamo exporter takes 35-70 s on 2 cores; CI covers --exporter legacy
def test_onnx_export_matches_torch_on_sizes_not_multiples_of_16(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "generator.onnx"
    assert main(["export", "--checkpoint", str(tiny_checkpoint.parent), "--export-format", "onnx",
                 "--output", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "max |onnxruntime - torch|" in printed

    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in (*model.graph.input, *model.graph.output)]  # fmt: skip
    assert [value.name for value in model.graph.input] == ["images"]
    assert [value.name for value in model.graph.output] == ["enhanced"]
    assert dims == [["batch", 3, "height", "width"]] * 2
    assert not list(tmp_path.glob("*.data")), "weights must be inside the .onnx file"

    generator = load_generator(tiny_checkpoint)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, height, width in ((1, 64, 96), (3, 37, 53)):
        images = dark_batch(batch, height, width)
        with torch.no_grad():
            expected = generator(images).numpy()
        got = session.run(["enhanced"], {"images": images.numpy()})[0]
        assert got.shape == expected.shape == (batch, 3, height, width)
        assert np.abs(got - expected).max() < 1e-4
        # Not an identity map: the check would pass trivially if the graph returned its input.
        assert np.abs(got - images.numpy()).max() > 0.05

    sidecar = sidecar_of(out)
    assert sidecar["format"] == "onnx" and sidecar["exporter"] == "dynamo"
    assert sidecar["opset"] == 18
    assert sidecar["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sidecar["generator_config"]["base_channels"] == 4
    assert sidecar["resolved_checkpoint"] == str(tiny_checkpoint)
    assert all(diff < 1e-4 for diff in sidecar["check_max_abs_diff"].values())
    assert "never halves" in sidecar["graph"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip_on_two_sizes(tiny_checkpoint, tmp_path):
    out = tmp_path / "generator.pt"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--export-format", "torchscript",
                 "--output", str(out)]) == 0  # fmt: skip
    loaded = torch.jit.load(str(out))
    generator = load_generator(tiny_checkpoint)
    for batch, height, width in ((2, 48, 80), (1, 45, 70)):
        images = dark_batch(batch, height, width)
        with torch.no_grad():
            got, expected = loaded(images), generator(images)
        assert got.shape == (batch, 3, height, width)
        assert (got - expected).abs().max() < 1e-5
        assert (got - images).abs().max() > 0.05
    assert sidecar_of(out)["format"] == "torchscript"


def test_official_export_then_import_reproduces_the_generator(tmp_path, capsys):
    config = EnlightenGANConfig()
    original = reference_generator()
    source = save_checkpoint(tmp_path / "source", config=config, networks={"generator": original})
    weights = tmp_path / "official" / "200_net_G_A.pth"
    assert main(["export", "--checkpoint", str(source), "--export-format", "official",
                 "--output", str(weights)]) == 0  # fmt: skip

    state = torch.load(weights, weights_only=True)
    # The authors' layout: DataParallel's "module." prefix and no BatchNorm step counters.
    native = original.state_dict()
    assert set(state) == {f"module.{name}" for name in native if "num_batches" not in name}

    imported = tmp_path / "imported"
    assert main(["import-official", "--weights", str(weights), "--output", str(imported),
                 "--no-check"]) == 0  # fmt: skip
    assert "enhance --checkpoint" in capsys.readouterr().out
    images = dark_batch(1, 32, 48)
    with torch.no_grad():
        expected = original(images)
        assert torch.equal(load_generator(imported)(images), expected)
    assert (expected - images).abs().max() > 0.05

    assert main(["import-official", "--weights", str(weights), "--output", str(imported)]) == 2
    assert "--overwrite" in only_error_line(capsys)


def test_official_export_of_a_tiny_model_is_one_clear_error(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny.pth"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--export-format", "official",
                 "--output", str(out)]) == 2  # fmt: skip
    error = only_error_line(capsys)
    assert "reference generator" in error and "base_channels 4" in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["checkpoint", "weights", "not-weights"])
def test_missing_or_wrong_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    source = tmp_path / "nothing-here"
    if case == "not-weights":
        source.write_bytes(b"\x89PNG\r\n\x1a\n not a torch file")
    if case == "checkpoint":
        argv = ["export", "--checkpoint", str(source), "--export-format", "onnx"]
        argv += ["--output", str(tmp_path / "g.onnx")]
    else:
        argv = ["import-official", "--weights", str(source), "--output", str(tmp_path / "ckpt")]
    assert main(argv) == 2
    assert "nothing-here" in only_error_line(capsys)
    written = [path.name for path in tmp_path.iterdir()]
    assert written == ([source.name] if case == "not-weights" else [])


def test_s3_checkpoint_export_stores_no_secret(s3_env, tiny_checkpoint, tmp_path, capsys):
    bucket = s3_env.make_bucket("export")
    filesystem = s3_env.filesystem()
    for file in tiny_checkpoint.iterdir():
        with filesystem.open_output_stream(f"{bucket}/runs/a/checkpoint_000001/{file.name}") as f:
            f.write(file.read_bytes())
    out = tmp_path / "exported" / "generator.onnx"
    assert main(["export", "--checkpoint", f"s3://{bucket}/runs", "--export-format", "onnx",
                 "--exporter", "legacy", "--opset", "17", "--output", str(out)]) == 0  # fmt: skip

    printed = capsys.readouterr()
    sidecar = sidecar_of(out)
    assert sidecar["source_checkpoint"] == f"s3://{bucket}/runs"
    assert sidecar["exporter"] == "legacy" and sidecar["opset"] == 17
    assert onnx.load(str(out)).opset_import[0].version == 17
    secrets = [s3_env.secret_key.encode(), s3_env.access_key.encode()]
    for written in out.parent.iterdir():
        data = written.read_bytes()
        assert not any(secret in data for secret in secrets), written.name
    assert not any(secret.decode() in printed.out + printed.err for secret in secrets)
