"""The ship step (``python -m pipelines.starter.ship``): a checkpoint becomes the starter's
generator file and, when it has them, the discriminators file beside it; the flags that
``scripts/train_starter.sh`` passes are the ones ship takes. Tiny models on CPU."""

from __future__ import annotations

import hashlib
import io
import re
import shlex
from pathlib import Path

import pytest
import torch

from enlightengan.checkpoint import save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.discriminator import build_discriminators
from enlightengan.generator import Generator
from enlightengan.shipped_weights import DISCRIMINATORS_FILE_NAME
from enlightengan.starter import load_discriminator_weights, load_weights
from pipelines.starter import ship

REPO = Path(__file__).resolve().parents[3]
TINY = tiny_config()


def _networks(seed: int = 7) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    generator = Generator(TINY.generator)
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # trained-looking statistics
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    global_d, patch_d = build_discriminators(TINY.discriminator)
    return {"generator": generator.eval(), "global_d": global_d, "patch_d": patch_d}


def _sha256_printed(printed: str, path: Path) -> str:
    (line,) = [line for line in printed.splitlines() if line.startswith(f"written {path}")]
    return re.search(r"sha256 ([0-9a-f]{64})", line).group(1)


def test_the_scripts_ship_command_writes_generator_and_discriminators_in_float16(tmp_path, capsys):
    networks = _networks()
    # The ship line of scripts/train_starter.sh, with its work folder here.
    script = (REPO / "scripts" / "train_starter.sh").read_text()
    (command,) = re.findall(r"-m pipelines\.starter\.ship (.*)", script)
    argv = [arg.replace("$work", str(tmp_path / "starter-work")) for arg in shlex.split(command)]
    run = Path(argv[argv.index("--run") + 1])
    save_checkpoint(run / "train" / "checkpoint_00000004", config=TINY, networks=networks)
    out = tmp_path / "weights" / "starter.pt"
    assert ship.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    beside = out.with_name(DISCRIMINATORS_FILE_NAME)
    digest = _sha256_printed(printed, beside)
    assert digest == hashlib.sha256(beside.read_bytes()).hexdigest()
    assert "float16" in printed
    payload = torch.load(io.BytesIO(beside.read_bytes()), weights_only=True)
    assert payload["dtype"] == "float16"
    assert payload["state_dicts"]["patch_d"]["layers.0.weight"].dtype == torch.float16
    states, config = load_discriminator_weights(beside, expected_sha256=digest)
    assert config == TINY
    for name in ("global_d", "patch_d"):
        for key, value in networks[name].state_dict().items():
            if value.is_floating_point():
                torch.testing.assert_close(states[name][key], value.half().float())
            else:
                assert torch.equal(states[name][key], value)

    generator_digest = _sha256_printed(printed, out)
    generator, generator_config = load_weights(out, expected_sha256=generator_digest)
    strength = float(argv[argv.index("--tone-strength") + 1])
    dark_strength = float(argv[argv.index("--tone-dark-strength") + 1])
    assert generator_config == TINY.with_overrides(
        {
            "generator.tone_transfer_strength": strength,
            "generator.tone_transfer_dark_strength": dark_strength,
        }
    )
    expected = networks["generator"].state_dict()
    for key, value in generator.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[key].half().float())


def test_a_generator_only_checkpoint_ships_no_discriminators_and_removes_stale_ones(
    tmp_path, capsys
):
    directory = save_checkpoint(
        tmp_path / "exported", config=TINY, networks={"generator": _networks()["generator"]}
    )
    out = tmp_path / "weights" / "starter.pt"
    stale = out.with_name(DISCRIMINATORS_FILE_NAME)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"the discriminators of an older generator")
    assert ship.main(["--run", str(directory), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no discriminators in the checkpoint: generator only" in printed
    assert out.is_file() and not stale.exists()


def test_output_is_refused_with_the_flags_to_use(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        ship.main(["--output", str(tmp_path / "run")])
    assert caught.value.code == 2
    assert "name the training run with --run (the weights file is --out)" in (
        capsys.readouterr().err
    )
    assert ship.main(["--run", str(tmp_path / "nothing")]) == 2


def test_tone_strength_is_stored_and_turns_tone_transfer_on(tmp_path, capsys):
    from enlightengan.inference import Enhancer
    from enlightengan.tone import ToneTransfer

    directory = save_checkpoint(
        tmp_path / "exported", config=TINY, networks={"generator": _networks()["generator"]}
    )
    plain, toned = tmp_path / "plain.pt", tmp_path / "toned.pt"
    assert ship.main(["--run", str(directory), "--out", str(plain)]) == 0
    assert ship.main(["--run", str(directory), "--out", str(toned), "--tone-strength", "0.8"]) == 0
    assert Enhancer(load_weights(plain)[0]).tone_transfer is None
    assert Enhancer(load_weights(toned)[0]).tone_transfer == ToneTransfer(strength=0.8)


def test_tone_dark_strength_is_stored(tmp_path, capsys):
    from enlightengan.inference import Enhancer
    from enlightengan.tone import ToneTransfer

    directory = save_checkpoint(
        tmp_path / "exported", config=TINY, networks={"generator": _networks()["generator"]}
    )
    adaptive = tmp_path / "adaptive.pt"
    argv = ["--run", str(directory), "--out", str(adaptive), "--tone-strength", "0.9"]
    assert ship.main([*argv, "--tone-dark-strength", "1.3"]) == 0
    tone = Enhancer(load_weights(adaptive)[0]).tone_transfer
    assert tone == ToneTransfer(strength=0.9, dark_strength=1.3)
