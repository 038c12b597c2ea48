"""pipelines.io.images on the bad-file corpus and on real photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines.io.images import (
    ImageRejected,
    ResizePolicy,
    decode_for_training,
    decode_image,
    decode_png,
    encode_like,
    encode_png,
)
from tests.fixtures.bad_files import build_bad_files, png_bytes
from tests.fixtures.photos import encode, fit_within, wheel_photo

CORPUS = {entry.key: entry for entry in build_bad_files()}
PHOTO = fit_within(wheel_photo("coffee"), 480, 360)  # the corpus's source pixels, 480x320


@pytest.mark.parametrize("key", sorted(CORPUS))
def test_corpus_outcome(key):
    entry = CORPUS[key]
    if entry.expected_reason:
        with pytest.raises(ImageRejected) as caught:
            decode_for_training(entry.data, ResizePolicy())
        assert caught.value.reason == entry.expected_reason
        return
    array, decoded = decode_for_training(entry.data, ResizePolicy())
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    assert (array.shape[1], array.shape[0]) == entry.expected_size
    assert decoded.original_size == entry.expected_size


def _decode(key: str) -> np.ndarray:
    return decode_image(CORPUS[key].data).array.astype(np.int32)


def test_16_bit_samples_are_scaled_not_clipped():
    assert np.array_equal(_decode("odd/rgb16.png"), PHOTO)
    gray = _decode("odd/gray16.png")
    assert np.array_equal(gray[..., 0], PHOTO[..., 1]) and np.array_equal(
        gray[..., 2], gray[..., 0]
    )


def test_transparency_is_composited_on_black():
    alpha = np.linspace(0, 255, PHOTO.shape[1], dtype=np.uint8)[None, :, None].astype(np.int32)
    expected = (PHOTO.astype(np.int32) * alpha + 127) // 255
    assert np.abs(_decode("odd/rgba.png") - expected).max() <= 1
    palette = _decode("odd/palette.png")
    source = Image.open(io.BytesIO(CORPUS["odd/palette.png"].data))
    transparent = np.asarray(source) == source.info["transparency"]
    assert transparent.any() and (palette[transparent] == 0).all()
    assert np.abs(palette[~transparent] - PHOTO[~transparent]).mean() < 12


def test_cmyk_and_grayscale_become_rgb_close_to_the_source():
    assert np.abs(_decode("odd/cmyk.jpg") - PHOTO).mean() < 4
    gray = _decode("odd/gray.jpg")
    assert np.abs(gray[..., 0] - PHOTO[..., 1]).mean() < 3
    assert np.array_equal(gray[..., 0], gray[..., 1])


def test_exif_orientation_is_applied():
    rotated = _decode("odd/rotated.jpg")
    # Orientation 6 means "rotate 90 degrees clockwise to display".
    expected = np.rot90(PHOTO, k=-1)
    assert rotated.shape == expected.shape
    assert np.abs(rotated - expected).mean() < 4
    assert decode_image(CORPUS["odd/rotated.jpg"].data).format == "JPEG"


def test_pixel_limit_is_checked_before_decoding():
    header_only = png_bytes(5000, 5000, 8, 2, b"")
    with pytest.raises(ImageRejected) as caught:
        decode_image(header_only, max_pixels=10_000_000)
    assert caught.value.reason == "decompression-bomb"
    with pytest.raises(ImageRejected) as real:
        decode_image(encode(PHOTO, "PNG"), max_pixels=PHOTO.shape[0] * PHOTO.shape[1] - 1)
    assert real.value.reason == "decompression-bomb"


def test_animated_first_frame_only_when_allowed():
    decoded = decode_image(CORPUS["broken/animated.gif"].data, allow_animated=True)
    assert decoded.array.shape == PHOTO.shape


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((600, 400), (600, 400)),
        ((4000, 3000), (533, 400)),
        ((3000, 4000), (400, 533)),
        ((1200, 400), (960, 320)),
        ((500, 330), (500, 330)),
        ((2000, 200), None),
    ],
)
def test_resize_policy_fits_without_going_below_the_crop(size, expected):
    policy = ResizePolicy()
    if expected is None:
        with pytest.raises(ImageRejected, match="too-small"):
            policy.target_size(*size)
    else:
        assert policy.target_size(*size) == expected


def test_small_images_upscaled_when_asked():
    assert ResizePolicy(small="upscale").target_size(300, 200) == (480, 320)
    with pytest.raises(ValueError):
        ResizePolicy(small="stretch")


def test_draft_mode_decodes_a_big_jpeg_to_the_target_size():
    big = np.asarray(Image.fromarray(wheel_photo("coffee")).resize((4000, 2667)))
    array, decoded = decode_for_training(encode(big, "JPEG", quality=90), ResizePolicy())
    assert array.shape == (400, 600, 3)
    assert decoded.original_size == (4000, 2667)
    reference = np.asarray(Image.fromarray(big).resize((600, 400), Image.Resampling.LANCZOS))
    assert np.abs(array.astype(int) - reference.astype(int)).mean() < 3


def test_png_round_trip_is_lossless_and_encode_like_keeps_format_and_profile():
    assert np.array_equal(decode_png(encode_png(PHOTO)), PHOTO)
    icc = b"fake-icc-profile-bytes" * 4
    jpeg = encode_like(PHOTO, "JPEG", quality=95, icc_profile=icc)
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG" and image.info.get("icc_profile") == icc
    assert np.abs(decode_image(jpeg).array.astype(int) - PHOTO).mean() < 3
    assert Image.open(io.BytesIO(encode_like(PHOTO, "GIF"))).format == "PNG"
