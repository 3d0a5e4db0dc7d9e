"""The learning curves of ``compare``: the x axis says what the MLflow step counts (epoch for the
per-epoch metrics, iteration for the per-iteration ones), read from the drawn figure."""

from __future__ import annotations

from pipeline.tracking.curves import learning_curves, learning_curves_figure, x_label


def test_per_epoch_metrics_are_drawn_against_the_epoch_and_per_iteration_ones_the_iteration(tmp_path):
    histories = {
        "run": {
            "train_loss": [(1, 0.9), (2, 0.5)],
            "val_volume_dice": [(2, 0.6)],
            "train_loss_iter": [(1, 1.0), (2, 0.8), (3, 0.7)],
            "lr": [(1, 0.01), (2, 0.02), (3, 0.03)],
        }
    }
    metrics = ["train_loss", "val_volume_dice", "train_loss_iter", "lr", "lr_group_1"]
    fig = learning_curves_figure(histories, metrics)
    assert [ax.get_xlabel() for ax in fig.axes] == ["epoch", "epoch", "iteration", "iteration", "iteration"]
    assert [ax.get_title() for ax in fig.axes] == metrics
    assert [x_label(m) for m in ("val_dice", "val_fp_aware_dice", "epoch_seconds")] == ["epoch"] * 3
    # the PNG is the same figure: one subplot per metric at 4.5 x 3.5 inches each
    import matplotlib.image as mpimg

    pixels = mpimg.imread(learning_curves(histories, tmp_path / "c.png", metrics, dpi=20))
    assert pixels.shape[:2] == (round(3.5 * 20), round(5 * 4.5 * 20))
