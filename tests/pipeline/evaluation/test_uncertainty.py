"""Uncertainty samples, maps, scores and their validation, against numpy, scipy and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from networks import UNet
from pipeline.evaluation.tta import FlipTTAInferer
from pipeline.evaluation.uncertainty import (
    dropout_sampling,
    ensemble_logit,
    patient_scores,
    predict_with_samples,
    uncertainty_maps,
    uncertainty_method,
)
from pipeline.evaluation.uncertainty_validation import (
    check_score_threshold,
    flag_threshold,
    spearman,
    validate_score,
)
from pipeline.evaluation.volume_evaluation import VARIANTS, evaluate_volumes
from pipeline.inference.ensemble import FoldEnsemble


class Pointwise(torch.nn.Module):
    """A 1x1 convolution: commutes with the flip, so flip samples agree exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Columns(torch.nn.Module):
    """Logits rising with the column index: its flip sample differs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-3.0, 3.0, x.shape[-1])
        return x[:, 1:2] * 0 + ramp


def test_maps_are_zero_variance_when_samples_agree_and_match_numpy_otherwise():
    rng = np.random.default_rng(0)
    same = torch.tensor(rng.uniform(0, 1, (1, 2, 1, 4, 5)), dtype=torch.float32).expand(3, 2, 1, 4, 5)
    maps = uncertainty_maps(same)
    assert torch.count_nonzero(maps[:, 0]) == 0  # variance
    np.testing.assert_array_equal(maps[:, 2].numpy(), (same[0, :, 0] > 0.5).float().numpy())  # votes 0/1

    samples = rng.uniform(0, 1, (4, 2, 1, 4, 5)).astype(np.float32)
    maps = uncertainty_maps(torch.from_numpy(samples), threshold=0.4).numpy()
    mean = samples.mean(axis=0)[:, 0]
    np.testing.assert_allclose(maps[:, 0], samples.var(axis=0)[:, 0], rtol=1e-5, atol=1e-7)
    entropy = -(mean * np.log2(mean) + (1 - mean) * np.log2(1 - mean))
    np.testing.assert_allclose(maps[:, 1], entropy, rtol=1e-5)
    np.testing.assert_allclose(maps[:, 2], (samples > 0.4).mean(axis=0)[:, 0])


def test_scores_by_hand_on_a_tiny_volume():
    mask = np.zeros((1, 2, 3), np.uint8)
    mask[0, 0, :2] = 1  # M: 2 voxels
    votes = np.array([[[1.0, 0.5, 0.25], [0.0, 0.0, 0.0]]])
    entropy = np.array([[[0.2, 0.8, 0.6], [0.9, 0.9, 0.9]]])
    scores = patient_scores(mask, entropy, votes)
    # expected Dice 2 * (1 + 0.5) / (1.75 + 2) = 0.8; region M | votes > 0: the first row
    assert scores["disagreement"] == pytest.approx(1 - 3.0 / 3.75)
    assert scores["entropy"] == pytest.approx((0.2 + 0.8 + 0.6) / 3)
    agree = patient_scores(mask, entropy, mask.astype(float))
    assert agree["disagreement"] == 0.0
    empty = np.zeros_like(mask)
    assert patient_scores(empty, entropy, empty.astype(float)) == {"disagreement": 0.0, "entropy": 0.0}


def test_tta_maps_are_zero_for_a_flip_symmetric_network_and_leave_the_logits_unchanged():
    x = torch.rand(2, 3, 8, 8)
    network = Pointwise().eval()
    with torch.no_grad():
        plain = FlipTTAInferer(tta=True)(x, network)
        with_maps = FlipTTAInferer(tta=True, uncertainty="tta")(x, network)
    assert with_maps.shape == (2, 5, 8, 8)
    torch.testing.assert_close(with_maps[:, :2], plain)
    assert torch.count_nonzero(with_maps[:, 2]) == 0
    with torch.no_grad():
        ramp = FlipTTAInferer(tta=False, uncertainty="tta")(x, Columns())
    assert ramp[:, 2].max() > 0.1  # the flipped ramp disagrees
    torch.testing.assert_close(ramp[:, 1], ramp[:, 0])  # tta false: no flip average in the logits
    with torch.no_grad():  # the command line's --tta false arrives as a string
        torch.testing.assert_close(FlipTTAInferer(tta="false")(x, Columns())[:, 1], Columns()(x)[:, 0])


def test_identical_ensemble_members_give_zero_variance_and_the_ensemble_logit():
    member = Pointwise().eval()
    x = torch.rand(2, 3, 8, 8)
    ensemble = FoldEnsemble([member, member]).eval()
    with torch.no_grad():
        plain, flip, samples = predict_with_samples("ensemble", x, ensemble)
        torch.testing.assert_close(plain, ensemble(x))
    assert flip is None and samples.shape == (2, 2, 1, 8, 8)
    assert torch.count_nonzero(uncertainty_maps(samples)[:, 0]) == 0
    other = FoldEnsemble([Pointwise(), Pointwise()])
    with torch.no_grad():
        logits = [m(x) for m in other.members]
        torch.testing.assert_close(ensemble_logit(logits, other.eps), other(x))
    with pytest.raises(ValueError, match="fold ensemble"):
        predict_with_samples("ensemble", x, member)


class DropoutAndNorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(3)
        self.drop = torch.nn.Dropout(0.5)
        self.head = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.norm(x)))


def test_mc_dropout_switches_only_dropout_and_restores_it():
    network = DropoutAndNorm().eval()
    stats_before = network.norm.running_mean.clone()
    with dropout_sampling(network):
        assert network.drop.training and not network.norm.training and not network.training
    assert not any(m.training for m in network.modules())
    with torch.no_grad():
        _, _, samples = predict_with_samples("mc_dropout", torch.rand(2, 3, 8, 8), network, mc_samples=6)
    assert samples.shape == (6, 2, 1, 8, 8) and uncertainty_maps(samples)[:, 0].max() > 0
    torch.testing.assert_close(network.norm.running_mean, stats_before)  # batch norm never trained
    assert not any(m.training for m in network.modules())
    with pytest.raises(RuntimeError), dropout_sampling(network):
        raise RuntimeError("a failing pass")
    assert not network.drop.training  # restored after an error too


def test_mc_dropout_refuses_a_network_without_dropout():
    with pytest.raises(ValueError, match="no.*dropout|dropout 0"):
        predict_with_samples("mc_dropout", torch.rand(1, 3, 16, 16), UNet(n_filters=2, depth=2, dropout=0.0))


def test_bad_settings_name_the_key():
    assert uncertainty_method("null") is None and uncertainty_method(None) is None
    assert uncertainty_method("MC_Dropout") == "mc_dropout"
    with pytest.raises(ValueError, match="uncertainty must be"):
        uncertainty_method("bayes")
    with pytest.raises(ValueError, match="mc_samples"):
        FlipTTAInferer(uncertainty="mc_dropout", mc_samples=1)
    with pytest.raises(ValueError, match="uncertainty_threshold"):
        check_score_threshold("high")
    assert check_score_threshold("null") is None and check_score_threshold("0.3") == 0.3


def test_rank_correlation_and_flagging_against_scipy_and_by_hand():
    scores = [0.1, 0.5, 0.2, 0.9, 0.3, 0.05, np.nan]
    dice = [0.9, 0.4, 0.85, 0.2, np.nan, 0.95, 0.5]
    rho, p_value, n = spearman(scores, dice)
    reference = stats.spearmanr([0.1, 0.5, 0.2, 0.9, 0.05], [0.9, 0.4, 0.85, 0.2, 0.95])
    assert (rho, p_value, n) == pytest.approx((reference.statistic, reference.pvalue, 5))
    assert spearman([1, 1, 1], [0.1, 0.2, 0.3])[0] is None  # constant score

    finite = [0.1, 0.5, 0.2, 0.9, 0.3, 0.05]
    assert flag_threshold(scores, 0.2) == pytest.approx(np.quantile(finite, 0.8))
    figures = validate_score(scores[:6], dice[:6], threshold=0.4)
    assert figures["counts"] == {"correlated": 5, "flagged": 2}  # 0.5 and 0.9 flagged
    assert figures["dice_unflagged"]["mean"] == pytest.approx(np.mean([0.9, 0.85, 0.95]))
    assert figures["dice_flagged"]["mean"] == pytest.approx(np.mean([0.4, 0.2]))


def _patient(prob: np.ndarray, truth: np.ndarray, votes: np.ndarray) -> dict[int, dict]:
    entropy = np.full(prob.shape, 0.5, np.float16)
    return {
        z: {
            "prob": prob[z],
            "prob_tta": prob[z],
            "truth": truth[z],
            "image_file": f"{z}.tif",
            "label_file": f"{z}_mask.tif",
            "entropy": entropy[z],
            "votes": votes[z].astype(np.float16),
        }
        for z in range(prob.shape[0])
    }


def test_evaluate_volumes_reports_the_scores_their_correlation_and_flags():
    truth = np.zeros((2, 6, 6), bool)
    truth[:, 1:5, 1:5] = True
    slices = {}
    for k, (width, spread) in enumerate([(4, 0.0), (3, 0.25), (2, 0.5), (1, 0.75)]):
        prob = np.zeros((2, 6, 6), np.float32)
        prob[:, 1:5, 1 : 1 + width] = 0.9
        votes = (prob > 0.5).astype(np.float32) * (1 - spread)
        slices[f"P{k}"] = _patient(prob, truth, votes)
    summary, _ = evaluate_volumes(slices, 0.5, uncertainty_flag_rate=0.25)
    figures = summary["aggregates"]["threshold"]
    dice = [c["metrics"]["threshold"]["dice"] for c in summary["cases"]]
    disagreement = [c["metrics"]["threshold"]["uncertainty_disagreement"] for c in summary["cases"]]
    for case, (width, spread) in zip(summary["cases"], [(4, 0.0), (3, 0.25), (2, 0.5), (1, 0.75)]):
        size = 8 * width
        expected = 1 - 2 * size * (1 - spread) / (size * (1 - spread) + size)
        assert case["metrics"]["threshold"]["uncertainty_disagreement"] == pytest.approx(expected, abs=1e-3)
    reference = stats.spearmanr(disagreement, dice)
    assert figures["uncertainty_disagreement_spearman"] == pytest.approx(reference.statistic)
    assert figures["uncertainty_disagreement_spearman"] == pytest.approx(-1.0)
    assert figures["uncertainty_disagreement_counts"] == {"correlated": 4, "flagged": 1}
    assert figures["uncertainty_disagreement_dice_unflagged"]["mean"] == pytest.approx(np.mean(dice[:3]))
    assert figures["uncertainty_entropy_spearman"] is None  # a constant entropy map: no ranking
    assert summary["cases"][3]["metrics"]["threshold"]["uncertainty_disagreement_flagged"] is True
    assert all(
        f"uncertainty_{s}_threshold" in summary["aggregates"][v] for v in VARIANTS for s in ("entropy",)
    )
    plain, _ = evaluate_volumes(
        {
            k: {z: {n: s[n] for n in s if n not in ("votes", "entropy")} for z, s in p.items()}
            for k, p in slices.items()
        },
        0.5,
    )
    assert "uncertainty_disagreement_spearman" not in plain["aggregates"]["threshold"]
