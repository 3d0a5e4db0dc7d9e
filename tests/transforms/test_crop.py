"""The head crop and its inverse: crop to a box, map predictions back, against numpy by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from transforms import HeadCropd, HeadUncropd, crop_option, uncrop
from transforms.crop import as_boxes, crop_to_box


def test_crop_pads_with_zeros_past_the_image():
    image = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6) + 1
    out = crop_to_box(image, [-2, 3, 4, 9])  # rows -2..3, columns 3..8
    expected = np.zeros((2, 6, 6), np.float32)
    expected[:, 2:6, 0:3] = image[:, 0:4, 3:6]
    np.testing.assert_array_equal(out, expected)
    tensor = crop_to_box(torch.from_numpy(image), [-2, 3, 4, 9])
    np.testing.assert_array_equal(tensor.numpy(), expected)


def test_head_cropd_crops_every_key_and_records_the_frame():
    record = {"image": np.ones((3, 10, 12)), "label": np.ones((1, 10, 12)), "head_box": [2, 3, 8, 9]}
    out = HeadCropd(["image", "label"], allow_missing_keys=True)(record)
    assert out["image"].shape == (3, 6, 6) and out["label"].shape == (1, 6, 6)
    assert out["head_frame"] == [10, 12] and out["head_box"] == [2, 3, 8, 9]
    with pytest.raises(KeyError, match="head_box"):
        HeadCropd("image")({"image": np.ones((3, 4, 4))})


def _sample_by_hand(probs: np.ndarray, box, original, target) -> np.ndarray:
    """uncrop written out pixel by pixel: the target pixel's centre in the original slice, in the
    crop's pixel coordinates (centres at i + 0.5), bilinear between the 4 neighbours clamped to
    the crop, 0 outside the box."""
    top, left, bottom, right = box
    size_h, size_w = probs.shape
    out = np.zeros(target)
    for u in range(target[0]):
        for v in range(target[1]):
            y = (u + 0.5) * original[0] / target[0]
            x = (v + 0.5) * original[1] / target[1]
            if not (top <= y <= bottom and left <= x <= right):
                continue
            py = (y - top) * size_h / (bottom - top) - 0.5
            px = (x - left) * size_w / (right - left) - 0.5
            py, px = min(max(py, 0), size_h - 1), min(max(px, 0), size_w - 1)
            r0, c0 = int(np.floor(py)), int(np.floor(px))
            r1, c1 = min(r0 + 1, size_h - 1), min(c0 + 1, size_w - 1)
            fy, fx = py - r0, px - c0
            out[u, v] = (
                probs[r0, c0] * (1 - fy) * (1 - fx)
                + probs[r0, c1] * (1 - fy) * fx
                + probs[r1, c0] * fy * (1 - fx)
                + probs[r1, c1] * fy * fx
            )
    return out


def test_uncrop_matches_the_hand_computation():
    rng = np.random.default_rng(0)
    probs = rng.random((2, 1, 8, 8)).astype(np.float32)
    boxes = [[-3, 2, 17, 22], [4, 5, 12, 13]]
    got = uncrop(torch.from_numpy(probs), boxes, (20, 24), (10, 12)).numpy()
    for b in range(2):
        np.testing.assert_allclose(
            got[b, 0], _sample_by_hand(probs[b, 0], boxes[b], (20, 24), (10, 12)), rtol=0, atol=1e-5
        )


def test_uncrop_of_the_whole_frame_is_the_bilinear_resize():
    probs = torch.rand(3, 2, 16, 16)
    got = uncrop(probs, [[0, 0, 20, 24]] * 3, (20, 24), (20, 24))
    expected = F.interpolate(probs, size=(20, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("box", [[30, 40, 130, 140], [-10, 20, 150, 180], [48, 58, 113, 123]])
def test_a_mask_cropped_resized_and_mapped_back_is_the_mask_but_for_its_boundary(box):
    """Round trip: a disc mask cropped to the box (numpy slicing, zero padded), resized to 64 x 64
    (area, as the chain resizes the image), mapped back to 150 x 160 and thresholded at 0.5 equals
    the mask except within one pixel of its boundary."""
    rows, cols = np.mgrid[0:150, 0:160]
    mask = (((rows - 80) / 30) ** 2 + ((cols - 90) / 22) ** 2 <= 1).astype(np.float32)
    top, left, bottom, right = box
    padded = np.zeros((bottom - top, right - left), np.float32)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(bottom, 150), min(right, 160)
    padded[r0 - top : r1 - top, c0 - left : c1 - left] = mask[r0:r1, c0:c1]
    small = F.interpolate(torch.from_numpy(padded)[None, None], size=(64, 64), mode="area")
    back = uncrop(small, [box], (150, 160), (150, 160))[0, 0].numpy() > 0.5
    boundary = ndimage.binary_dilation(mask > 0, iterations=1) & ~ndimage.binary_erosion(
        mask > 0, iterations=1
    )
    differ = back != (mask > 0)
    assert differ.sum() < 0.25 * boundary.sum()  # the ring of boundary pixels is 2 wide
    assert not (differ & ~boundary).any()
    assert not back[:r0].any() and not back[:, :c0].any()  # nothing outside the box


def test_head_uncropd_maps_probabilities_and_logits_back_and_restores_the_label():
    prob = torch.full((1, 8, 8), 0.9)
    logits = torch.logit(prob)
    item = {
        "pred": torch.cat([logits, logits, prob]),
        "label": torch.zeros(1, 8, 8),
        "label_uncropped": torch.ones(1, 16, 16),
        "image": torch.ones(3, 8, 8),
        "head_box": [10, 10, 30, 30],
        "head_frame": [40, 40],
    }
    out = HeadUncropd("pred", logit_channels=2)(item)
    assert out["pred"].shape == (3, 16, 16) and out["image"].shape == (3, 16, 16)
    assert out["label"] is item["label_uncropped"]
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, 4:12] = True  # the box, rows 10..30 of 40, is rows 4..12 of 16
    probs = torch.sigmoid(out["pred"][:2])
    torch.testing.assert_close(probs[:, inside], torch.full_like(probs[:, inside], 0.9), rtol=0, atol=1e-5)
    assert float(probs[:, ~inside].max()) < 1e-6
    torch.testing.assert_close(out["pred"][2][inside], torch.full((64,), 0.9))
    assert float(out["pred"][2][~inside].abs().max()) == 0.0


def test_collated_boxes_and_bad_values():
    collated = [torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([5, 6]), torch.tensor([7, 8])]
    assert as_boxes(collated) == [[1, 3, 5, 7], [2, 4, 6, 8]]
    assert as_boxes([0, 0, 4, 4]) == [[0, 0, 4, 4]]
    with pytest.raises(ValueError, match="empty"):
        as_boxes([4, 0, 4, 4])
    for bad in ("Head", "", None, 1, "square"):
        with pytest.raises(ValueError, match=r"crop must be 'none'.*'head'.*key 'crop' of train.json"):
            crop_option(bad)
    assert crop_option("head") == "head"
