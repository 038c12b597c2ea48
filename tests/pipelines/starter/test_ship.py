"""The ship step (``python -m pipelines.starter.ship``): a checkpoint becomes the starter's
checkpoint directory, float16 on disk, with the discriminators when it has them; the flags that
``scripts/train_starter.sh`` passes are the ones ship takes. Tiny models on CPU."""

from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path

import pytest
import torch

from enlightengan.checkpoint import (
    is_complete_checkpoint,
    load_generator,
    load_networks,
    save_checkpoint,
)
from enlightengan.config import tiny_config
from enlightengan.discriminator import build_discriminators
from enlightengan.generator import Generator
from pipelines.starter import ship
from pipelines.train.job import parse_override

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


def _pin_printed(printed: str) -> str:
    (line,) = [line for line in printed.splitlines() if "(pin as STARTER_SHA256)" in line]
    return re.search(r"sha256 ([0-9a-f]{64})", line).group(1)


def _assert_half_of(stored: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    for key, value in module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(stored[key], value.half().float(), rtol=0, atol=0)
        else:
            assert torch.equal(stored[key], value)


def test_the_scripts_ship_command_writes_a_float16_checkpoint_with_discriminators(tmp_path, capsys):
    networks = _networks()
    # The ship line of scripts/train_starter.sh, with its work folder here.
    script = (REPO / "scripts" / "train_starter.sh").read_text()
    (command,) = re.findall(r"-m pipelines\.starter\.ship ((?:.*\\\n)*.*)", script)
    words = shlex.split(command.replace("\\\n", " "))
    argv = [arg.replace("$work", str(tmp_path / "starter-work")) for arg in words]
    run = Path(argv[argv.index("--run") + 1])
    save_checkpoint(
        run / "train" / "checkpoint_00000004",
        config=TINY,
        networks=networks,
        trainer_state={"step": 4},
    )
    out = tmp_path / "weights" / "starter"
    assert ship.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    assert "float16" in printed
    assert (
        _pin_printed(printed) == hashlib.sha256((out / "checkpoint.json").read_bytes()).hexdigest()
    )
    assert is_complete_checkpoint(out, verify_hashes=True)
    stored = torch.load(out / "discriminators.pt", weights_only=True)
    assert stored["patch_d"]["layers.0.weight"].dtype == torch.float16
    shipped = load_networks(out)
    strength = float(argv[argv.index("--tone-strength") + 1])
    dark_strength = float(argv[argv.index("--tone-dark-strength") + 1])
    assert shipped.config == TINY.with_overrides(
        {
            "generator.tone_transfer_strength": strength,
            "generator.tone_transfer_dark_strength": dark_strength,
            **dict(parse_override(argv[i + 1]) for i, a in enumerate(argv) if a == "--set"),
        }
    )
    for name, module in networks.items():
        _assert_half_of(shipped.network_states[name], module)
    assert (out / "trainer_state.json").read_text().count('"step": 4') == 1


def test_a_generator_only_checkpoint_ships_no_discriminators_and_removes_stale_ones(
    tmp_path, capsys
):
    networks = _networks()
    directory = save_checkpoint(
        tmp_path / "exported", config=TINY, networks={"generator": networks["generator"]}
    )
    out = save_checkpoint(tmp_path / "weights" / "starter", config=TINY, networks=networks)
    assert (out / "discriminators.pt").is_file()
    assert ship.main(["--run", str(directory), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no discriminators in the checkpoint: generator only" in printed
    assert not (out / "discriminators.pt").exists()
    assert is_complete_checkpoint(out, verify_hashes=True)
    assert set(load_networks(out).network_states) == {"generator"}


def test_output_is_refused_with_the_flags_to_use(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        ship.main(["--output", str(tmp_path / "run")])
    assert caught.value.code == 2
    assert "name the training run with --run (the checkpoint is --out)" in (capsys.readouterr().err)
    assert ship.main(["--run", str(tmp_path / "nothing")]) == 2


def test_tone_strength_is_stored_and_turns_tone_transfer_on(tmp_path, capsys):
    from enlightengan.inference import Enhancer
    from enlightengan.tone import ToneTransfer

    directory = save_checkpoint(
        tmp_path / "exported", config=TINY, networks={"generator": _networks()["generator"]}
    )
    plain, toned = tmp_path / "plain", tmp_path / "toned"
    assert ship.main(["--run", str(directory), "--out", str(plain)]) == 0
    assert ship.main(["--run", str(directory), "--out", str(toned), "--tone-strength", "0.8"]) == 0
    assert Enhancer(load_generator(plain)).tone_transfer is None
    assert Enhancer(load_generator(toned)).tone_transfer == ToneTransfer(strength=0.8)


def test_tone_dark_strength_is_stored(tmp_path, capsys):
    from enlightengan.inference import Enhancer
    from enlightengan.tone import ToneTransfer

    directory = save_checkpoint(
        tmp_path / "exported", config=TINY, networks={"generator": _networks()["generator"]}
    )
    adaptive = tmp_path / "adaptive"
    argv = ["--run", str(directory), "--out", str(adaptive), "--tone-strength", "0.9"]
    assert ship.main([*argv, "--tone-dark-strength", "1.3"]) == 0
    tone = Enhancer(load_generator(adaptive)).tone_transfer
    assert tone == ToneTransfer(strength=0.9, dark_strength=1.3)


def test_tone_settings_are_set_by_name_and_nothing_else_is(tmp_path, capsys):
    from enlightengan.inference import Enhancer
    from enlightengan.tone import ToneTransfer

    directory = save_checkpoint(
        tmp_path / "exported", config=TINY, networks={"generator": _networks()["generator"]}
    )
    out = tmp_path / "denoising"
    argv = ["--run", str(directory), "--out", str(out), "--tone-strength", "1"]
    settings = (
        "tone_transfer_denoise=1.5",
        "tone_transfer_noise_low=1",
        "tone_transfer_noise_high=2",
    )
    assert (
        ship.main([*argv, *(item for s in settings for item in ("--set", f"generator.{s}"))]) == 0
    )
    tone = Enhancer(load_generator(out)).tone_transfer
    assert tone == ToneTransfer(strength=1.0, denoise=1.5, noise_low=1.0, noise_high=2.0)
    capsys.readouterr()
    assert ship.main([*argv, "--set", "generator.base_channels=8"]) == 2
    assert "generator.base_channels" in capsys.readouterr().err
    assert ship.main([*argv, "--set", "generator.tone_transfer_noise_low=1"]) == 2
    assert "noise_low" in capsys.readouterr().err


def test_a_tone_setting_that_is_not_a_number_or_set_twice_is_one_error_line(tmp_path, capsys):
    directory = save_checkpoint(
        tmp_path / "exported", config=TINY, networks={"generator": _networks()["generator"]}
    )
    argv = ["--run", str(directory), "--out", str(tmp_path / "out")]
    for value in ("abc", "true", "null"):
        assert ship.main([*argv, "--set", f"generator.tone_transfer_colour={value}"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "tone_transfer_colour must be a number" in line
    both = ["--tone-strength", "0.9", "--set", "generator.tone_transfer_strength=0.8"]
    assert ship.main([*argv, *both]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--tone-strength" in line and "give one" in line
    assert not (tmp_path / "out").exists()
