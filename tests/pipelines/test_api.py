"""The Python API on real parts: a generator from a run folder, a bucket and the starter
model; arrays and PIL images; the enhance stages on a user's own Ray Dataset; and the examples
marked ``<!-- example: api -->`` in README.md and the docs, run as they are written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enlightengan.checkpoint import find_latest_checkpoint, load_generator, save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.inference import Enhancer, EnhancerSettings
from pipelines.api import enhance_dataset, load_enhancer
from pipelines.demo.sample_photos import upload_folder
from pipelines.errors import UserError
from tests.docs.examples import all_examples
from tests.enlightengan.textured_generator import psnr, textured_generator
from tests.fixtures.photos import darken, fit_within, wheel_photo


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A training run's layout: two checkpoints, the later one at the higher step."""
    run = tmp_path_factory.mktemp("run")
    for step in (1, 2):
        config = tiny_config()
        save_checkpoint(
            run / "train" / f"checkpoint_{step:06d}",
            config=config,
            networks={"generator": textured_generator(config.generator, seed=step)},
            trainer_state={"step": step, "epoch": 0},
        )
    return run


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return darken(fit_within(wheel_photo("coffee"), 160, 120))


def reference(run_folder: Path, images) -> list[np.ndarray]:
    generator = load_generator(find_latest_checkpoint(run_folder))
    return Enhancer(generator, EnhancerSettings())(images)


def test_a_run_folder_loads_its_latest_checkpoint(run_folder, photo):
    enhancer = load_enhancer(run_folder, backend="torch", precision="fp32")
    assert "checkpoint_000002" in enhancer.description
    output = enhancer([photo])[0]
    assert output.shape == photo.shape and output.dtype == np.uint8
    assert psnr(output, reference(run_folder, [photo])[0]) > 60
    assert psnr(output, photo) < 30, "the tiny model must change the pixels"


def test_pil_images_come_back_as_pil_and_sizes_may_differ(run_folder, photo):
    enhancer = load_enhancer(run_folder, backend="torch", precision="fp32")
    grey = Image.fromarray(photo).convert("L")
    small = photo[:64, :80]
    outputs = enhancer([Image.fromarray(photo), grey, small])
    assert isinstance(outputs[0], Image.Image) and outputs[0].mode == "RGB"
    assert outputs[1].size == grey.size and outputs[2].shape == small.shape
    assert np.array_equal(np.asarray(outputs[0]), enhancer([photo])[0])
    with pytest.raises(TypeError, match="numpy arrays or PIL images"):
        enhancer(["photo.jpg"])


def test_a_bucket_uri_loads_the_same_model(s3_env, run_folder, photo):
    bucket = s3_env.make_bucket("api")
    upload_folder(run_folder, s3_env.filesystem(), f"{bucket}/runs/a")
    from_bucket = load_enhancer(f"s3://{bucket}/runs/a", backend="torch", precision="fp32")
    local = load_enhancer(run_folder, backend="torch", precision="fp32")
    assert "(step 2)" in from_bucket.description
    assert np.array_equal(from_bucket([photo])[0], local([photo])[0])


def test_starter_and_bad_uris(tmp_path, photo):
    assert "starter" in load_enhancer("starter", backend="torch").description
    with pytest.raises(UserError, match="does not exist"):
        load_enhancer(tmp_path / "nowhere")
    with pytest.raises(UserError, match="--backend must be one of"):
        load_enhancer("starter", backend="tensorrt")


def test_enhance_dataset_maps_a_users_dataset_with_the_job_stages(ray_local, run_folder, photo):
    import ray

    rows = [
        {"name": "a", "image": photo},
        {"name": "b", "image": photo[:48, :72]},
        {"name": "grey", "image": photo[:, :, 0]},
    ]
    dataset = ray.data.from_items(rows)
    mapped = enhance_dataset(
        dataset, str(run_folder), backend="torch", precision="fp32", batch_size=2
    )
    result = {row["name"]: row for row in mapped.take_all()}
    expected = reference(run_folder, [photo, photo[:48, :72]])
    assert result["a"]["enhance_status"] == "enhanced"
    assert psnr(np.asarray(result["a"]["enhanced"]), expected[0]) > 60
    assert np.asarray(result["b"]["enhanced"]).shape == (48, 72, 3)
    assert result["grey"]["enhance_status"] == "failed"
    assert result["grey"]["enhanced"] is None
    assert result["grey"]["enhance_reason"].startswith("not-rgb-uint8")


def api_examples():
    return [example for example in all_examples() if example.kind == "api"]


def test_the_api_examples_of_the_readme_and_the_docs_run_as_written(
    ray_local, tmp_path, monkeypatch, photo
):
    examples = api_examples()
    assert [example.path.name for example in examples] == [
        "README.md",
        "python-api.md",
        "python-api.md",
        "starter.md",
    ]
    assert all(example.language == "python" for example in examples)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    (tmp_path / "photos").mkdir()
    for name in ("one", "two"):
        Image.fromarray(photo).save(tmp_path / "photos" / f"{name}.jpg")
    monkeypatch.chdir(tmp_path)
    for example in examples:
        exec(compile(example.code, example.where, "exec"), {})
    assert Image.open(tmp_path / "photo-enhanced.png").size == (photo.shape[1], photo.shape[0])
    assert Image.open(tmp_path / "photo-starter.png").size == (photo.shape[1], photo.shape[0])
    assert sorted(p.name for p in (tmp_path / "photos-enhanced").glob("*.png")) == [
        "one.png",
        "two.png",
    ]
