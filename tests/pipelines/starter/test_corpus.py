"""The starter corpus: the reviewed list keeps the domains disjoint, and the synthetic low light
is a randomised camera-like degradation unlike the demo's evaluation darkening."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pipelines.demo.sample_photos import LOW_LAYOUT, darken, fit_within, wheel_photo
from pipelines.starter.corpus import (
    ROLES,
    WHEEL_NORMAL,
    degrade_low_light,
    desaturate,
    linear_to_srgb,
    read_photo_list,
    sample_degradation,
    srgb_to_linear,
    views,
)


def test_reviewed_list_is_disjoint_with_licences_and_a_holdout():
    photos = read_photo_list()
    roles = Counter(photo.role for photo in photos)
    assert set(roles) <= set(ROLES)
    assert roles["holdout"] >= 10 and roles["normal"] >= 10 and roles["synthetic-low"] >= 10
    assert len({photo.name for photo in photos}) == len(photos)
    assert len({photo.path for photo in photos}) == len(photos)
    assert all(photo.licence and photo.package for photo in photos)
    demo_low = {name for name, _ in LOW_LAYOUT}
    assert not demo_low & set(WHEEL_NORMAL)  # the demo's evaluation photos never train


def test_bad_list_is_refused(tmp_path):
    good = read_photo_list()[0]
    row = "\t".join([good.package, good.path, good.name, good.role, good.licence])
    (tmp_path / "twice.tsv").write_text(f"{row}\n{row}\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_photo_list(tmp_path / "twice.tsv")
    (tmp_path / "role.tsv").write_text(row.replace(good.role, "maybe") + "\n")
    with pytest.raises(ValueError, match="unknown roles"):
        read_photo_list(tmp_path / "role.tsv")


def test_srgb_transfer_round_trips():
    values = np.linspace(0, 1, 101)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(values)), values, atol=1e-9)


def test_degradation_is_seeded_dark_noisy_and_not_the_demo_darkening():
    photo = fit_within(wheel_photo("chelsea"), 300, 200)
    first = sample_degradation(np.random.default_rng(7))
    assert first == sample_degradation(np.random.default_rng(7))
    assert first != sample_degradation(np.random.default_rng(8))
    encoded = degrade_low_light(photo, first, np.random.default_rng(1))
    assert encoded == degrade_low_light(photo, first, np.random.default_rng(1))
    with Image.open(io.BytesIO(encoded)) as image:
        assert image.format == "JPEG" and image.size == (photo.shape[1], photo.shape[0])
        dark = np.asarray(image.convert("RGB")).astype(np.float64)
    assert dark.mean() < 0.6 * photo.mean()
    demo = darken(photo).astype(np.float64)
    assert np.abs(dark - demo).mean() > 3  # another tone curve, noise, cast and JPEG


def test_degradations_cover_a_range_of_exposures():
    rng = np.random.default_rng(0)
    exposures = [sample_degradation(rng).exposure for _ in range(200)]
    assert 1 / 64 <= min(exposures) < 1 / 40 and 1 / 5 < max(exposures) <= 1 / 4


def test_exposure_range_is_a_setting():
    rng = np.random.default_rng(0)
    exposures = [sample_degradation(rng, (1 / 16, 1 / 2)).exposure for _ in range(200)]
    assert 1 / 16 <= min(exposures) < 1 / 12 and 1 / 2.5 < max(exposures) <= 1 / 2


def test_desaturate_scales_colour_around_luma_and_keeps_grey():
    photo = fit_within(wheel_photo("chelsea"), 120, 80)
    assert desaturate(photo, 1.0) is photo
    grey = desaturate(photo, 0.0).astype(np.int16)
    assert np.abs(grey - grey[..., :1]).max() <= 1
    half = desaturate(photo, 0.5).astype(np.float64)
    spread = photo.astype(np.float64).std(axis=-1).mean()
    assert half.std(axis=-1).mean() == pytest.approx(spread / 2, rel=0.05)


def test_views_are_the_frame_and_four_corners_fitted_to_600x400():
    photo = np.zeros((1600, 2560, 3), dtype=np.uint8)
    photo[:800, :1280] = 255
    named = dict(views(photo))
    assert list(named) == ["full", "tl", "tr", "bl", "br"]
    assert all(max(v.shape[:2]) <= 600 and v.shape[1] == 600 for v in named.values())
    assert named["tl"].mean() > named["br"].mean()
    portrait = dict(views(np.zeros((1000, 600, 3), dtype=np.uint8)))
    assert portrait["full"].shape[:2] == (600, 360)
