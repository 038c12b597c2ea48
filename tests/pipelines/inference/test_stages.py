"""The enhancer actor's row statuses, without Ray: what it enhanced leaves ``enhanced``."""

from __future__ import annotations

import numpy as np

from pipelines.inference.stages import EnhanceActor, RowStatus, object_column


def _actor(enhance) -> EnhanceActor:
    actor = EnhanceActor.__new__(EnhanceActor)  # no checkpoint to load: a stand-in generator
    actor.enhancer = enhance
    return actor


def _batch(statuses: list[str]) -> dict[str, np.ndarray]:
    count = len(statuses)
    image = np.full((2, 3, 3), 10, dtype=np.uint8)
    return {
        # Fixed-width text, as numpy makes of plain strings: "enhanced" must still fit.
        "status": np.array(statuses),
        "reason": object_column(["", "unreadable", ""][:count]),
        "pixels": object_column([image.tobytes()] * count),
        "height": np.full(count, 2, dtype=np.int64),
        "width": np.full(count, 3, dtype=np.int64),
        "seconds": np.zeros(count),
    }


def test_enhanced_rows_leave_enhanced_and_failed_rows_stay_failed():
    batch = _actor(lambda images: [image + 1 for image in images])(
        _batch(["pending", "failed", "pending"])
    )
    assert list(batch["status"]) == ["enhanced", "failed", "enhanced"]
    assert list(batch["reason"]) == ["", "unreadable", ""]
    assert np.frombuffer(batch["pixels"][0], dtype=np.uint8).tolist() == [11] * 18
    assert batch["status"][0] is RowStatus.ENHANCED


def test_an_image_the_generator_fails_on_fails_alone():
    def enhance(images):
        if any(image[0, 0, 0] == 99 for image in images):
            raise RuntimeError("bad image")
        return images

    batch = _batch(["pending", "pending"])
    bad = np.full((2, 3, 3), 99, dtype=np.uint8).tobytes()
    batch["pixels"] = object_column([batch["pixels"][0], bad])
    batch = _actor(enhance)(batch)
    assert list(batch["status"]) == ["enhanced", "failed"]
    assert list(batch["reason"]) == ["", "enhance-error"] and batch["pixels"][1] == b""
