"""pipelines.enhance.report: the sample kept on the stream, the page itself, and the report of real
``enhance`` runs (real Ray, real photos, a tiny real checkpoint) opened in a real headless
Chromium, from a local folder and from a presigned URL of the real SeaweedFS server."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import urllib.request
from pathlib import Path

import pytest
import torch

from enlightengan.checkpoint import save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.generator import Generator
from pipelines.cli import main
from pipelines.demo.sample_photos import build_photo_dataset
from pipelines.enhance.report import (
    RunFacts,
    SampleKeeper,
    darkness_svg,
    render_page,
    sample_rank,
)
from pipelines.inference.darkness import DEFAULT_DARK_THRESHOLD, DarkPolicy
from tests.fixtures.browser import find_chromium, load_page
from tests.fixtures.photos import upload_folder
from tests.fixtures.system_packages import require

# Where a copy of the report's screenshot goes, for a person to look at (unset: tmp_path only).
SCREENSHOT_COPY = os.environ.get("ENLIGHTENGAN_REPORT_SCREENSHOT")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    config = tiny_config()
    return save_checkpoint(
        tmp_path_factory.mktemp("ckpt"),
        config=config,
        networks={"generator": Generator(config.generator)},
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The demo's five dark and four normal photos, plus two files that fail."""
    root = tmp_path_factory.mktemp("report-photos")
    build_photo_dataset(root, longest_side=300)
    (root / "broken").mkdir()
    (root / "broken" / "cut.jpg").write_bytes((root / "low/kitchen/coffee.jpg").read_bytes()[:600])
    (root / "broken" / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def chromium() -> str:
    path, why = find_chromium()
    require(why if path is None else "", "headless browser")
    return path


def test_the_keeper_holds_the_lowest_ranks_whatever_the_order(ray_local):
    keys = [f"folder/{index:04d}.jpg" for index in range(300)]
    expected = sorted(keys, key=sample_rank)[:7]
    for seed in (1, 2):
        keeper = SampleKeeper.remote(7)
        shuffled = random.Random(seed).sample(keys, len(keys))
        assert ray_local.get(keeper.cutoff.remote()) == 2**64
        for start in range(0, len(shuffled), 13):
            entries = [{"rank": sample_rank(k), "key": k} for k in shuffled[start : start + 13]]
            keeper.offer.remote(entries)
        sample = ray_local.get(keeper.sample.remote())
        assert [entry["key"] for entry in sample] == expected
        assert ray_local.get(keeper.cutoff.remote()) == sample_rank(expected[-1])


def _facts(policy=None) -> RunFacts:
    return RunFacts("r1", "s3://in", "s3://out", "model", 10.0, policy, 0.65, {"workers": 2})


def _summary(**extra) -> dict:
    return {
        "status": {"enhanced": 3, "failed": 2},
        "reasons": {"truncated": 2},
        "failed_keys": {"truncated": ["a.jpg"]},
        "darkness_histogram": [0] * 49 + [3],
        "output_bytes": 1234,
        **extra,
    }


def test_the_page_escapes_keys_and_says_how_many_failures_it_leaves_out():
    hostile = '<script>alert("x")</script>.jpg'
    summary = _summary(failed_keys={"truncated": [hostile]})
    page = render_page(_facts(DarkPolicy("skip")), summary, [])
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "and 1 more (see the manifest)" in page
    assert "left out" in page and "1,234" in page


def test_the_histogram_marks_the_threshold_where_it_lies():
    svg = darkness_svg([1, 0, 3, 2], 0.5, width=212)
    assert svg.count("<rect") == 3 and ">threshold 0.50<" in svg
    # plot from x=44 to x=200: the threshold line at the middle
    assert 'x1="122.0"' in svg


def _enhance(*argv: str) -> None:
    assert main(["enhance", *argv]) == 0


def _report_folder(output: Path) -> Path:
    (folder,) = (output / "_report").iterdir()
    return folder


def test_report_of_a_run_with_only_dark_loads_in_chromium_without_errors(
    ray_local, checkpoint, photos, chromium, tmp_path, capsys
):
    output = tmp_path / "out"
    common = ["--checkpoint", str(checkpoint), "--input", str(photos), "--output", str(output)]
    _enhance(*common, "--only-dark", "copy", "--report-samples", "6", "--report-niqe")
    printed = capsys.readouterr().out
    folder = _report_folder(output)
    assert f"report: {folder / 'index.html'}" in printed

    numbers = json.loads((folder / "summary.json").read_text())
    # hubble (a night sky) counts as dark: 6 enhanced, 3 copied
    assert numbers["status"] == {"enhanced": 6, "copied": 3, "failed": 2}
    assert numbers["failed_keys"] == {"truncated": ["broken/cut.jpg"], "empty-file": [
        "broken/empty.png"]}  # fmt: skip
    assert sum(numbers["darkness_histogram"]) == 9
    decoded = [p.relative_to(photos).as_posix() for p in photos.rglob("*.*") if "broken" not in
               p.parts]  # fmt: skip
    expected = sorted(decoded, key=sample_rank)[:6]
    sample = numbers["sample"]
    assert [entry["key"] for entry in sample] == expected
    for entry in sample:
        assert math.isfinite(entry["niqe_before"])
        assert (entry["niqe_after"] is not None) == (entry["status"] == "enhanced")

    screenshot = tmp_path / "report.png"
    page = load_page(chromium, (folder / "index.html").as_uri(), screenshot)
    assert page.console_errors == [] and page.exceptions == [] and page.failed_requests == []
    assert all(url.startswith(("file://", "data:")) for url in page.requests)
    facts = page.facts
    assert facts["figures"] == 6 and facts["brokenImages"] == 0 and facts["scripts"] == 0
    enhanced_in_sample = sum(entry["status"] == "enhanced" for entry in sample)
    assert facts["images"] == 6 + enhanced_in_sample
    assert facts["svgBars"] >= 2 and "broken/cut.jpg" in facts["text"]
    threshold = f"threshold {DEFAULT_DARK_THRESHOLD:.2f}"
    assert "Mean NIQE" in facts["text"] and threshold in facts["text"]
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 50_000
    if SCREENSHOT_COPY:
        shutil.copy(screenshot, SCREENSHOT_COPY)

    # The same keys again in a later run, whatever order the tasks finish in.
    _enhance(*common, "--overwrite", "--report-samples", "6", "--batch-size", "1")
    later = [p for p in (output / "_report").iterdir() if p != folder]
    again = json.loads((later[0] / "summary.json").read_text())
    assert [entry["key"] for entry in again["sample"]] == expected
    assert again["status"] == {"enhanced": 9, "failed": 2} and again["only_dark"] is None


def test_report_on_s3_is_served_as_html_through_a_presigned_url(
    ray_local, s3_env, checkpoint, photos, chromium, tmp_path
):
    import botocore.session

    bucket = s3_env.make_bucket("report")
    upload_folder(photos / "normal", s3_env.filesystem(), f"{bucket}/in")
    common = ["--checkpoint", str(checkpoint), "--input", f"s3://{bucket}/in"]
    _enhance(*common, "--output", f"s3://{bucket}/out", "--only-dark", "skip")
    client = botocore.session.get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=s3_env.env()["AWS_ENDPOINT_URL"],
        aws_access_key_id=s3_env.access_key,
        aws_secret_access_key=s3_env.secret_key,
    )
    listed = client.list_objects_v2(Bucket=bucket, Prefix="out/_report/")["Contents"]
    keys = sorted(item["Key"] for item in listed)
    assert [key.rsplit("/", 1)[1] for key in keys] == ["index.html", "summary.json"]
    page_key, summary_key = keys
    assert client.head_object(Bucket=bucket, Key=page_key)["ContentType"] == (
        "text/html; charset=utf-8"
    )
    assert client.head_object(Bucket=bucket, Key=summary_key)["ContentType"] == "application/json"
    numbers = json.loads(client.get_object(Bucket=bucket, Key=summary_key)["Body"].read())
    assert numbers["status"] == {"enhanced": 1, "not-dark": 3}  # hubble is dark

    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": page_key}, ExpiresIn=600
    )
    with urllib.request.urlopen(url) as response:
        assert response.headers["Content-Type"].startswith("text/html")
    page = load_page(chromium, url, tmp_path / "s3-report.png")
    assert page.console_errors == [] and page.failed_requests == [] and page.exceptions == []
    assert page.facts["figures"] == 4 and page.facts["brokenImages"] == 0
    assert "left out (not dark)" in page.facts["text"]
