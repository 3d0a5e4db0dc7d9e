"""The lesion segmenter as MLflow loads it: the code file of the logged model ("models from code").

MLflow runs this file when the model is loaded (``mlflow.pyfunc.load_model``, ``mlflow models
serve``); nothing is unpickled. The network is rebuilt from the model config (``network``:
``_target_`` and its arguments) with the ``networks`` package shipped in the model's ``code/``
folder, and its weights are a plain state_dict, loaded weights-only. Built and logged by
:mod:`pipeline.tracking.logged_model`.

Input: float32 ``(N, 3, H, W)`` slices prepared as in training (scaled to [0, 1] per slice or,
for ``intensity`` "volume", by the patient's per-channel bounds; resized to ``image_size``); H and
W divisible by ``2**(depth-1)``. Output: ``probabilities`` float32 ``(N, 1, H, W)`` (sigmoid of
the logits) and ``mask`` uint8 ``(N, 1, H, W)``, 1 where the probability is above ``threshold``.
"""

from __future__ import annotations

import importlib
from typing import Any

import mlflow
import numpy as np
import torch


class LesionSegmenter(mlflow.pyfunc.PythonModel):
    """Per-pixel lesion probabilities and the 0/1 mask of prepared slices.

    Model config (``model_config`` of the logged model; any key can be overridden at load time):
        network: ``{"_target_": "networks.UNet", ...}`` the network's class and arguments.
        image_size: side of the square slices the network was trained on.
        threshold: probability above which a pixel is lesion. Default 0.5.
        batch_size: slices per forward pass. Default 8.
        device: "cpu", "cuda", ... Default: "cuda" when available, else "cpu".
    """

    def load_context(self, context: Any) -> None:
        config = dict(context.model_config or {})
        settings = dict(config["network"])
        module, _, name = settings.pop("_target_").rpartition(".")
        self.network = getattr(importlib.import_module(module), name)(**settings)
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.network.load_state_dict(state)
        self.device = torch.device(config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network.to(self.device).eval()
        self.channels = int(settings.get("channels_in", 3))
        self.threshold = float(config.get("threshold", 0.5))
        self.batch_size = max(1, int(config.get("batch_size", 8)))

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict | None = None
    ) -> dict[str, np.ndarray]:
        """``{"probabilities", "mask"}`` of ``model_input``, float32 ``(N, C, H, W)``.

        Raises:
            ValueError: the input is not ``(N, C, H, W)`` with the network's C channels.
        """
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"expected float32 slices (N, {self.channels}, H, W) prepared as in training, got shape "
                f"{tuple(x.shape)}"
            )
        with torch.no_grad():
            chunks = [torch.sigmoid(self.network(b.to(self.device))).cpu() for b in x.split(self.batch_size)]
        probabilities = torch.cat(chunks) if chunks else torch.zeros((0, 1, *x.shape[2:]))
        mask = (probabilities > self.threshold).to(torch.uint8)
        return {"probabilities": probabilities.numpy(), "mask": mask.numpy()}


mlflow.models.set_model(LesionSegmenter())
