"""``compare --paired``: evaluations made by the real EvaluationReport from hand-made masks whose
per-volume Dice is known by hand (2k / (k + fp + 12) for k of the 12 lesion voxels found and fp
voxels outside), compared patient by patient, checked against numbers computed by hand, scipy's
own bootstrap and an enumeration of the Wilcoxon null distribution; logged to a SQLite store and
to a real ``mlflow server`` process through EvaluationTracking, as an evaluation logs them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pipeline import cli
from pipeline.tracking.paired import (
    ComparisonRefused,
    bootstrap_interval,
    outcome,
    paired_comparison,
    wilcoxon_test,
)
from pipeline.tracking.paired_plot import paired_figure

LESION = 12  # true voxels: rows 0-1 of slice 0 of a 2 x 6 x 6 volume
# patient: (lesion, k found by A, by B, fp of A, fp of B); tta: A's masks for both runs
PATIENTS = {
    "P01": (True, 6, 9, 0, 0),
    "P02": (True, 12, 12, 0, 0),
    "P03": (True, 10, 8, 0, 0),
    "P04": (True, 3, 7, 0, 0),
    "P05": (True, 5, 11, 0, 0),
    "P06": (True, 7, 10, 0, 0),
    "P07": (True, 9, 12, 0, 0),
    "P08": (True, 11, 10, 0, 0),
    "P09": (False, 0, 0, 0, 12),  # lesion-free: B paints 12 voxels (detected), A nothing
    "P10": (False, 0, 0, 3, 0),
}


def hand_dice(k: int, fp: int = 0) -> float:
    return 2 * k / (k + fp + LESION)


def volume(found: int, fp: int, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((2, 6, 6), bool)
    truth[0, :2] = lesion
    pred = np.zeros_like(truth)
    pred[0].flat[:found] = True  # the first k voxels of the lesion
    pred[1].flat[:fp] = True  # false positives on the lesion-free slice
    return pred, truth


def evaluate(folder, which: int, patients=PATIENTS, tracking=None) -> dict:
    """summary.json of run A (which=0) or B (1) by the real EvaluationReport (threshold 0.5)."""
    from pipeline.evaluation.report import EvaluationReport

    report = EvaluationReport(str(folder), tracking=tracking, pictures=False)
    for patient, (lesion, k_a, k_b, fp_a, fp_b) in patients.items():
        pred, truth = volume((k_a, k_b)[which], (fp_a, fp_b)[which], lesion)
        tta, _ = volume(k_a, fp_a, lesion)
        for index in range(2):
            report.slices[patient][index] = {
                "prob": np.where(pred[index], 0.9, 0.1).astype(np.float32),
                "prob_tta": np.where(tta[index], 0.9, 0.1).astype(np.float32),
                "truth": truth[index],
                "flair": np.zeros((6, 6), np.uint8),
                "image_file": f"{patient}_{index}.tif",
                "label_file": f"{patient}_{index}_mask.tif",
            }
    report.completed()
    return json.loads((folder / "summary.json").read_text())


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    return tuple(evaluate(tmp_path_factory.mktemp(name), i) for i, name in enumerate("AB"))


def exact_wilcoxon_p(differences) -> float:
    """Two-sided exact p by enumerating every sign assignment of the ranks (no ties, no zeros)."""
    d = np.asarray([x for x in differences if x != 0])
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    total = ranks.sum()
    observed = min(ranks[d > 0].sum(), ranks[d < 0].sum())
    hits = sum(
        min(s := sum(r for r, sign in zip(ranks, signs) if sign), total - s) <= observed
        for signs in itertools.product((0, 1), repeat=len(d))
    )
    return hits / 2 ** len(d)


def test_the_report_writes_the_dice_the_masks_were_made_for(summaries):
    for which, summary in enumerate(summaries):
        for case in summary["cases"]:
            lesion, *found, fp_a, fp_b = PATIENTS[case["patient"]]
            record = case["metrics"]["threshold"]
            fp = (fp_a, fp_b)[which]
            assert record["has_lesion"] == lesion and record["fp_voxels"] == fp
            if lesion:
                assert record["dice"] == pytest.approx(hand_dice(found[which]))
            else:
                assert record["dice"] == (None if fp == 0 else 0.0)


def test_paired_dice_matches_hand_numbers_scipy_and_an_exact_enumeration(summaries):
    result = paired_comparison(*summaries)
    lesion = [p for p, v in PATIENTS.items() if v[0]]
    a = [hand_dice(PATIENTS[p][1]) for p in lesion]
    b = [hand_dice(PATIENTS[p][2]) for p in lesion]
    d = np.subtract(b, a)
    assert [r["patient"] for r in result["patients"]] == lesion and result["n_paired"] == 8
    assert [r["difference"] for r in result["patients"]] == pytest.approx(list(d))
    assert result["mean_difference"] == pytest.approx(d.mean())
    assert result["mean_a"] == pytest.approx(np.mean(a)) and result["mean_b"] == pytest.approx(np.mean(b))
    # 7 non-zero differences, the two negative ones of ranks 1 and 2: T = 3, 5 of 128 sign sets <= 3
    assert exact_wilcoxon_p(d) == pytest.approx(2 * 5 / 128)
    assert result["wilcoxon"]["p_value"] == pytest.approx(2 * 5 / 128)
    assert result["wilcoxon"]["p_value"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert (result["wilcoxon"]["n_nonzero"], result["wilcoxon"]["n_zero"]) == (7, 1)
    assert result["outcomes"] == {"b_better": 5, "a_better": 2, "ties": 1, "tie_tolerance": 1e-3}
    # scipy's percentile bootstrap from another generator agrees within the Monte Carlo error
    reference = stats.bootstrap(
        (d,), np.mean, n_resamples=10_000, method="percentile", rng=np.random.default_rng(7)
    ).confidence_interval
    boot = result["bootstrap"]
    assert boot["low"] == pytest.approx(reference.low, abs=0.01)
    assert boot["high"] == pytest.approx(reference.high, abs=0.01)
    assert boot["low"] < d.mean() < boot["high"] and boot["n_resamples"] == 10_000
    # lesion-free patients are apart, with their false-positive voxels and detection
    apart = {r["patient"]: r for r in result["lesion_free"]}
    assert set(apart) == {"P09", "P10"}
    assert (apart["P09"]["a_fp_voxels"], apart["P09"]["b_fp_voxels"], apart["P09"]["b_detected"]) == (
        0,
        12,
        True,
    )
    assert (apart["P10"]["a_fp_voxels"], apart["P10"]["b_fp_voxels"], apart["P10"]["a_detected"]) == (
        3,
        0,
        False,
    )


def test_a_lower_is_better_metric_pairs_every_patient_and_counts_the_other_way(summaries):
    result = paired_comparison(*summaries, metric="fp_voxels")
    rows = {r["patient"]: r for r in result["patients"]}
    assert result["n_paired"] == 10 and result["lesion_free"] == [] and not result["higher_is_better"]
    assert (rows["P09"]["difference"], rows["P09"]["outcome"]) == (12, "A better")
    assert (rows["P10"]["difference"], rows["P10"]["outcome"]) == (-3, "B better")
    assert result["outcomes"]["ties"] == 8
    assert result["wilcoxon"]["note"].startswith("only 2 non-zero")


def test_the_tta_option_has_no_difference_and_no_p_value(summaries):
    result = paired_comparison(*summaries, option="tta")  # both runs' tta masks are A's
    assert result["mean_difference"] == 0 and result["outcomes"]["ties"] == 8
    assert result["wilcoxon"]["p_value"] is None and "no non-zero difference" in result["wilcoxon"]["note"]
    assert (result["bootstrap"]["low"], result["bootstrap"]["high"]) == (0.0, 0.0)


def test_wilcoxon_ties_tolerance_and_bootstrap_by_hand():
    assert wilcoxon_test([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])["p_value"] == pytest.approx(2 / 64)
    few = wilcoxon_test([0.1, 0.2, 0.3, 0.4, 0.5, 0.0])
    assert few["p_value"] == pytest.approx(2 / 32) and (few["n_nonzero"], few["n_zero"]) == (5, 1)
    assert "cannot reach 0.05" in few["note"] and "0.0625" in few["note"]
    assert outcome(0.0009, True) == "tie" and outcome(-0.001, True) == "tie"
    assert outcome(0.002, True) == "B better" and outcome(0.002, False) == "A better"
    assert outcome(0.002, True, tolerance=0.01) == "tie"
    assert bootstrap_interval([0.25] * 5) == (0.25, 0.25)
    values = np.random.default_rng(3).normal(0.05, 0.1, size=30)
    low, high = bootstrap_interval(values, seed=5)
    assert bootstrap_interval(values, seed=5) == (low, high)  # seeded
    assert bootstrap_interval(values, seed=6) != (low, high)
    # the percentile interval of the mean is about mean -+ 1.96 standard errors for 30 normal values
    se = values.std(ddof=0) / np.sqrt(values.size)
    assert low == pytest.approx(values.mean() - 1.96 * se, abs=0.25 * se)
    assert high == pytest.approx(values.mean() + 1.96 * se, abs=0.25 * se)


def test_refusals_name_the_patients_options_and_metrics(summaries, tmp_path):
    a, b = summaries
    fewer = {p: v for p, v in PATIENTS.items() if p not in ("P03", "P10")}
    other = dict(fewer, P99=(True, 1, 1, 0, 0))
    with pytest.raises(ComparisonRefused, match=r"only in A: P03, P10; only in B: P99"):
        paired_comparison(a, evaluate(tmp_path / "other", 1, other))
    with pytest.raises(ComparisonRefused, match=r"no post-processing option 'tta\+crf'.*tta\+lcc"):
        paired_comparison(a, b, option="tta+crf")
    with pytest.raises(ComparisonRefused, match=r"'nonsense' is no per-patient metric.*dice.*hd95"):
        paired_comparison(a, b, metric="nonsense")
    lesion_moved = dict(PATIENTS, P09=(True, 0, 0, 0, 12))
    with pytest.raises(ComparisonRefused, match=r"true masks differ.*P09"):
        paired_comparison(a, evaluate(tmp_path / "moved", 1, lesion_moved))
    with pytest.raises(ComparisonRefused, match="no per-patient records"):
        paired_comparison({"aggregates": {}}, b)


def test_an_undefined_hd95_is_left_out_and_named(tmp_path):
    patients = {"P01": (True, 6, 0, 0, 0), "P02": (True, 6, 9, 0, 0), "P03": (True, 12, 3, 0, 0)}
    result = paired_comparison(
        evaluate(tmp_path / "a", 0, patients), evaluate(tmp_path / "b", 1, patients), metric="hd95"
    )
    assert [r["patient"] for r in result["undefined"]] == ["P01"] and result["undefined"][0]["b"] is None
    assert [r["patient"] for r in result["patients"]] == ["P02", "P03"]


def test_the_paired_plot_draws_one_line_per_patient_and_the_lesion_free_apart(summaries):
    result = paired_comparison(*summaries)
    fig = paired_figure(result, ("A: one", "B: two"))
    paired_ax, free_ax = fig.axes
    lines = {line.get_gid(): line for line in paired_ax.lines}
    assert set(lines) == {f"P0{i}" for i in range(1, 9)} | {"mean"}
    for patient, (_, k_a, k_b, _, _) in PATIENTS.items():
        if patient in lines:
            assert list(lines[patient].get_ydata()) == pytest.approx([hand_dice(k_a), hand_dice(k_b)])
    assert lines["P01"].get_color() == "tab:green" and lines["P03"].get_color() == "tab:red"
    assert lines["P02"].get_color() == "0.55"
    free = {line.get_gid(): list(line.get_ydata()) for line in free_ax.lines if line.get_gid()}
    assert free == {"P09": [0, 12], "P10": [3, 0]}
    assert [t.get_text() for t in paired_ax.get_xticklabels()] == ["A: one", "B: two"]
    assert fig.get_suptitle().startswith(f"B - A: mean {result['mean_difference']:+.4f}, 95% CI [")
    # with a metric defined on lesion-free patients they are paired, dashed, and no panel is apart
    fig = paired_figure(paired_comparison(*summaries, metric="fp_aware_dice"))
    assert len(fig.axes) == 1
    styles = {line.get_gid(): line.get_linestyle() for line in fig.axes[0].lines}
    assert styles["P09"] == "--" and styles["P01"] == "-"


# -- MLflow: a SQLite store and a real tracking server ----------------------------------------------


def evaluated_runs(uri: str, tmp_path, patients=PATIENTS, evaluated=(True, True)) -> tuple[str, str]:
    """Two runs "run-a", "run-b" in experiment lgg-segmentation; each evaluated one logs its
    summary.json as an evaluation does: EvaluationTracking, traced back through mlflow_run.json."""
    from mlflow import MlflowClient

    from pipeline.tracking.evaluation_run import EvaluationTracking
    from pipeline.tracking.run_files import write_run_record

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name("lgg-segmentation")
    location = (tmp_path / "artifacts").as_uri() if uri.startswith("sqlite") else None
    experiment_id = found.experiment_id if found else client.create_experiment("lgg-segmentation", location)
    ids = []
    for which, name in enumerate(("run-a", "run-b")):
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        client.log_metric(run_id, "val_volume_dice", 0.5 + which / 10, step=1)
        client.set_terminated(run_id)
        run_dir = tmp_path / name
        write_run_record(run_dir, run_id, uri, "lgg-segmentation")
        if evaluated[which]:
            tracking = EvaluationTracking(str(run_dir / "models" / "model.pt"), learning_curves=False)
            evaluate(run_dir / "evaluation", which, patients, tracking)
            assert tracking.run_id == run_id
        ids.append(run_id)
    return ids[0], ids[1]


def check_cli_comparison(uri: str, tmp_path, capsys) -> None:
    from mlflow import MlflowClient

    a, b = evaluated_runs(uri, tmp_path)
    out = tmp_path / "out" / "paired.png"
    assert cli.main(["compare", "--runs", a, b, "--paired", "--tracking-uri", uri, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lesion = [p for p, v in PATIENTS.items() if v[0]]
    mean = np.mean([hand_dice(PATIENTS[p][2]) - hand_dice(PATIENTS[p][1]) for p in lesion])
    assert f"mean difference {mean:+.4f}" in text and "p = 0.07812" in text
    assert (
        "B better 5, A better 2, ties 1" in text
        and "P09: false-positive voxels A 0 B 12 (detected in B)" in text
    )
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["run_a"]["run_id"] == a and written["mean_difference"] == pytest.approx(mean)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("lgg-segmentation")
    logged = client.search_runs([experiment.experiment_id], "tags.`pipeline.kind` = 'comparison'")
    assert len(logged) == 1
    run = logged[0]
    assert run.info.run_name == "compare run-a vs run-b" and run.info.status == "FINISHED"
    assert (run.data.tags["compare.run_a"], run.data.tags["compare.run_b"]) == (a, b)
    assert run.data.metrics["paired_mean_difference"] == pytest.approx(mean)
    assert run.data.metrics["paired_wilcoxon_p"] == pytest.approx(2 * 5 / 128)
    assert run.data.params["option"] == "threshold" and run.data.params["metric"] == "dice"
    names = sorted(f.path for f in client.list_artifacts(run.info.run_id, "comparison"))
    assert names == ["comparison/paired.json", "comparison/paired.png"]
    back = client.download_artifacts(run.info.run_id, "comparison/paired.json", str(tmp_path / "back"))
    assert json.loads(Path(back).read_text())["patients"] == written["patients"]

    # the comparison run stays out of the table of the experiment's runs
    # (the newest run of the two latest: two training runs are still listed)
    table_args = ["compare", "--tracking-uri", uri, "--max-runs", "2", "--out", str(tmp_path / "table.png")]
    assert cli.main(table_args) == 0
    table = capsys.readouterr().out
    assert "run-a" in table and "run-b" in table and "compare run-a" not in table


def test_paired_cli_on_a_sqlite_store(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    check_cli_comparison(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, capsys)


def test_paired_cli_against_a_tracking_server(mlflow_server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    check_cli_comparison(mlflow_server, tmp_path, capsys)


def test_paired_cli_refuses_without_an_evaluation_or_the_same_patients(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    a, b = evaluated_runs(uri, tmp_path / "one", evaluated=(True, False))
    args = ["compare", "--paired", "--tracking-uri", uri, "--out", str(tmp_path / "p.png"), "--runs"]
    assert cli.main([*args, a, b]) == 1
    assert f"run run-b ({b}) has no evaluation" in caplog.text
    assert (
        "bundle/configs/evaluate.json" in caplog.text and "outputs/runs/run-b/models/model.pt" in caplog.text
    )
    assert cli.main([*args, a]) == 1 and "--paired compares two runs" in caplog.text
    assert cli.main([*args, a, a]) == 1 and "twice" in caplog.text
    caplog.clear()
    fewer = {p: v for p, v in PATIENTS.items() if p != "P05"}
    c, d = evaluated_runs(uri, tmp_path / "two", patients=fewer)
    assert cli.main([*args, a, c]) == 1
    assert "only in A" in caplog.text and "P05" in caplog.text and "only in B: none" in caplog.text
    assert cli.main([*args, c, d, "--metric", "val_volume_dice"]) == 1
    assert "'val_volume_dice' is no per-patient metric" in caplog.text and "fp_aware_dice" in caplog.text
    assert cli.main([*args, c, d, "--option", "crf"]) == 1 and "tta+lcc" in caplog.text
    assert not (tmp_path / "p.png").exists()


def test_paired_cli_option_and_no_log(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    a, b = evaluated_runs(uri, tmp_path)
    out = tmp_path / "tta.png"
    args = ["compare", "--paired", "--runs", a, b, "--tracking-uri", uri, "--out", str(out)]
    assert cli.main([*args, "--option", "tta", "--no-log", "--tie-tolerance", "0"]) == 0
    text = capsys.readouterr().out
    assert "dice of option tta" in text and "p n/a" in text and "ties 8 (|B - A| <= 0)" in text
    assert "logged to MLflow" not in text and out.is_file()
    assert json.loads(out.with_suffix(".json").read_text())["option"] == "tta"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name("lgg-segmentation").experiment_id
    assert client.search_runs([experiment_id], "tags.`pipeline.kind` = 'comparison'") == []
