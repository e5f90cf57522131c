"""Every detector threshold, as one documented, validated settings block.

Each default comes from a published source, named beside it and in ``stabcheck explain``.
Users override any of them under ``thresholds:`` in the config or ``[tool.stabcheck.thresholds]``
in ``pyproject.toml``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Thresholds(BaseModel):
    """Detector thresholds. Field descriptions double as documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- loss spikes (OLMo-core's SpikeDetector: 6 sigma over the previous 128 steps) ---
    spike_sigma: float = Field(6.0, gt=0, description="z-score above which a step is a spike "
                               "(OLMo-core: 6).")
    spike_window: int = Field(128, ge=4, description="trailing steps the spike z-score is "
                              "computed over (OLMo-core: 128).")
    spike_min_history: int = Field(16, ge=3, description="steps of history needed before a "
                                   "spike can be called.")
    spike_recovery_steps: int = Field(20, ge=1, description="steps after a spike within which the "
                                      "loss must return under its pre-spike level to count as "
                                      "recovered.")
    # --- divergence (fastai's LR finder stops once the loss passes 4x its best) ---
    divergence_factor: float = Field(4.0, gt=1, description="a finite loss that ends above this "
                                     "multiple of its best value has diverged (fastai LR finder: "
                                     "4).")
    # --- stagnation / oscillation ---
    stagnation_min_decrease: float = Field(0.01, ge=0, description="relative decrease of the "
                                           "loss (start vs end) under which the probe stagnates.")
    oscillation_fraction: float = Field(0.7, gt=0.5, le=1.0, description="fraction of "
                                        "sign-alternating consecutive loss deltas that marks an "
                                        "oscillation near 2/lambda_max.")
    # --- gradients (Pascanu et al. 2013; Glorot & Bengio 2010) ---
    grad_growth_factor: float = Field(10.0, gt=1, description="sustained growth of the gradient "
                                      "norm (median of last quarter / median of first quarter) "
                                      "that counts as explosion.")
    grad_spike_sigma: float = Field(6.0, gt=0, description="z-score of a gradient-norm spike "
                                    "(same window as loss spikes).")
    vanishing_ratio: float = Field(1e-3, gt=0, lt=1, description="first-layer / last-layer "
                                   "gradient-norm ratio under which gradients vanish.")
    dead_layer_norm: float = Field(1e-8, ge=0, description="a layer whose gradient norm stays "
                                   "below this is reported as receiving no gradient.")
    # --- clipping (Google's Deep Learning Tuning Playbook) ---
    clip_fraction_warn: float = Field(0.5, gt=0, le=1, description="fraction of clipped steps "
                                      "above which clipping is too aggressive (tuning playbook: "
                                      "50%).")
    clip_percentile: float = Field(90.0, gt=0, lt=100, description="percentile of unclipped "
                                   "gradient norms recommended as the clip threshold (tuning "
                                   "playbook: 90th).")
    # --- sweep ---
    stability_margin: float = Field(2.0, ge=1, description="max stable LR / target_lr under "
                                    "which the target LR is too close to the divergence "
                                    "boundary.")
    min_finished_fraction: float = Field(0.5, gt=0, le=1, description="fraction of probes that "
                                         "must finish for the audit to reach a verdict.")
    # --- init checks ---
    init_loss_tolerance: float = Field(0.5, gt=0, description="allowed |initial loss - "
                                       "ln(num_classes)| relative to ln(num_classes) (Karpathy, "
                                       "'A Recipe for Training Neural Networks').")
    dead_relu_fraction: float = Field(0.5, gt=0, le=1, description="fraction of ReLU units that "
                                      "never fire on the init batch above which a layer is dead.")
    saturation_fraction: float = Field(0.5, gt=0, le=1, description="fraction of tanh/sigmoid "
                                       "units in their flat region above which a layer is "
                                       "saturated.")
    activation_scale_ratio: float = Field(100.0, gt=1, description="change of activation scale "
                                          "from first to last layer that counts as a signal-"
                                          "propagation problem.")
    weight_kurtosis: float = Field(3.0, gt=0, description="excess kurtosis of an initial weight "
                                   "matrix above which its init is heavy-tailed.")
    # --- curvature (Cohen et al. 2021/2022) ---
    eos_ratio: float = Field(1.0, gt=0, description="sharpness / stability limit above which a "
                                "probe is past the edge of stability.")
