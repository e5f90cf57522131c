"""Every detector threshold, as one documented, validated settings block.

Each default is either taken from a published source, named beside it and in
``stabcheck explain``, or — where the literature gives no number — marked as stabcheck's own
default with the reasoning behind it. Users override any of them under ``thresholds:`` in the
config.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Every threshold is bounded: a count over MAX_STEPS_THRESHOLD steps (no probe is longer) or
# a ratio over MAX_RATIO_THRESHOLD means a typo, and a window of 1e9 steps would only fail
# after the whole audit had run (allocating it).
MAX_STEPS_THRESHOLD = 1_000_000
MAX_RATIO_THRESHOLD = 1e12


class Thresholds(BaseModel):
    """Detector thresholds. Field descriptions double as documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # --- loss and gradient-norm spikes (OLMo-core StabilityMonitorCallback: a value above the
    # mean of the previous 128 values by more than 6 standard deviations) ---
    spike_sigma: float = Field(6.0, gt=0, description="rolling z-score above which a loss or "
                               "gradient-norm step is a spike: its jump above the local trend "
                               "over a robust (MAD) spread of the previous steps' changes "
                               "(OLMo-core: 6 sigma).")
    spike_window: int = Field(128, ge=4, description="trailing steps the spread is measured "
                              "over (OLMo-core: 128).")
    spike_min_history: int = Field(16, ge=3, description="steps of history needed before a "
                                   "spike can be called (stabcheck: probes are short, so the "
                                   "window may be partly filled).")
    spike_min_range_fraction: float = Field(0.1, ge=0, description="a spike must also rise "
                                            "above the local trend by this fraction of the "
                                            "range the series has covered so far, so that noise "
                                            "on a converged, near-zero loss is not called a "
                                            "spike (stabcheck).")
    spike_noise_steps: int = Field(5, ge=0, description="a loss spike back to its pre-spike "
                                   "level within this many steps is mini-batch noise, reported "
                                   "as information (stabcheck: every recovered spike of a "
                                   "healthy probe in the calibration corpus was back within "
                                   "4 steps).")
    spike_recovery_steps: int = Field(20, ge=1, description="steps after a spike within which "
                                      "the loss must come back to within a quarter of the jump "
                                      "above its pre-spike value to count as recovered "
                                      "(stabcheck).")
    grad_spike_response_steps: int = Field(3, ge=0, description="a gradient-norm spike is a "
                                           "warning when the loss spikes within this many "
                                           "steps after it (stabcheck).")
    grad_spike_fraction: float = Field(0.1, gt=0, le=1, description="... or when more than "
                                       "this fraction of the probe's steps are gradient-norm "
                                       "spikes after the early steps (stabcheck: 10%, twice "
                                       "the most a healthy probe of the calibration corpus "
                                       "showed).")
    adaptive_early_steps: int = Field(10, ge=0, description="with Adam, AdamW or RMSprop, "
                                      "gradient-norm spikes in the first max(this, "
                                      "warmup_steps) steps are expected while the "
                                      "second-moment estimate settles (stabcheck).")
    # --- divergence (fastai's LR finder stops once the loss passes 4x its best) ---
    divergence_factor: float = Field(3.0, gt=1, description="a finite loss whose final value "
                                     "(median of the last steps) ends above this multiple of "
                                     "the best 5-step running median it reached has diverged "
                                     "(fastai LR finder: 4x the best; stabcheck: 3, from its "
                                     "calibration corpus).")
    divergence_floor: float = Field(0.1, ge=0, description="... and must end above the best by "
                                    "at least this fraction of the initial loss, so noise on a "
                                    "loss trained to nearly zero is no runaway (stabcheck).")
    divergence_noise_sigma: float = Field(2.0, ge=0, description="a loss that ends above the "
                                          "initial loss has diverged only when it ends above "
                                          "it by more than this many robust standard "
                                          "deviations of one step's loss (the initial loss is "
                                          "one batch's; stabcheck).")
    blowup_factor: float = Field(2.0, gt=1, description="a step whose loss exceeds this "
                                 "multiple of the initial loss is a transient blow-up, even "
                                 "when the probe recovers (stabcheck: 2x, the rise at which a "
                                 "person reading the curve stops calling it healthy; "
                                 "calibration corpus).")
    progress_fraction: float = Field(0.1, gt=0, lt=1, description="relative decrease of the "
                                     "loss that counts as progress: a probe that makes less "
                                     "while a lower LR of the same batch size made this much "
                                     "has failed (stabcheck: 10%, calibration corpus).")
    # --- stagnation and oscillation ---
    stagnation_min_decrease: float = Field(0.01, ge=0, description="relative decrease of the "
                                           "loss (start vs end) under which a probe stagnates "
                                           "(stabcheck: 1%).")
    oscillation_z: float = Field(4.0, gt=0, description="turning-point test statistic above "
                                 "which the loss alternates more than noise would (Kendall & "
                                 "Stuart's turning-point test; 4 sigma).")
    # --- gradients (Bengio et al. 1994; Pascanu et al. 2013) ---
    grad_growth_factor: float = Field(10.0, gt=1, description="median gradient norm of the last "
                                      "quarter over that of the first quarter above which the "
                                      "growth counts as explosion (stabcheck: 10x).")
    vanishing_ratio: float = Field(1e-3, gt=0, lt=1, description="RMS gradient of the first "
                                   "weight layer over that of the last below which gradients "
                                   "vanish through depth (stabcheck: three orders of "
                                   "magnitude).")
    # --- clipping (Google's Deep Learning Tuning Playbook) ---
    clip_fraction_warn: float = Field(0.5, gt=0, le=1, description="fraction of clipped steps "
                                      "above which clipping is too aggressive (tuning playbook: "
                                      "50%).")
    clip_percentile: float = Field(90.0, gt=0, lt=100, description="percentile of unclipped "
                                   "gradient norms in healthy probes recommended as the clip "
                                   "threshold (tuning playbook: 90th).")
    # --- sweep ---
    stability_margin: float = Field(2.0, ge=1, description="max stable LR / target_lr under "
                                    "which the target LR is too close to the divergence "
                                    "boundary (stabcheck: 2x).")
    seed_spread: float = Field(0.5, gt=0, description="(max - min) of the final loss across "
                               "the seeds of a healthy cell, over how far the loss fell, above "
                               "which the result depends on the seed (stabcheck).")
    min_finished_fraction: float = Field(0.5, gt=0, le=1, description="fraction of probes that "
                                         "must finish for the audit to reach a verdict "
                                         "(stabcheck).")
    # --- init checks ---
    init_loss_tolerance: float = Field(0.5, gt=0, description="initial loss above (1 + this) x "
                                       "ln(num_classes) means an over-confident init (Karpathy, "
                                       "'A Recipe for Training Neural Networks', 2019).")
    dead_relu_fraction: float = Field(0.5, gt=0, le=1, description="fraction of ReLU units that "
                                      "never fire on the init batch above which a layer is "
                                      "dead (stabcheck; Lu et al. 2019 'Dying ReLU').")
    saturation_fraction: float = Field(0.5, gt=0, le=1, description="fraction of tanh/sigmoid "
                                       "outputs in the flat tails (|tanh| > 0.99, sigmoid < "
                                       "0.01 or > 0.99) above which a layer is saturated.")
    activation_scale_ratio: float = Field(100.0, gt=1, description="change of the output RMS "
                                          "from the first weight layer to the last (either "
                                          "way) that counts as broken signal propagation "
                                          "(stabcheck: two orders of magnitude).")
    weight_kurtosis: float = Field(3.0, gt=0, description="excess kurtosis of an initial weight "
                                   "matrix above which its init is heavy-tailed (3 = a Laplace "
                                   "distribution; Gaussian 0, uniform -1.2).")
    # --- curvature (Cohen et al. 2021/2022) ---
    eos_ratio: float = Field(1.0, gt=0, description="sharpness / stability limit above which a "
                             "probe is past the edge of stability.")
    lipschitz_growth: float = Field(10.0, gt=1, description="factor by which the Lipschitz "
                                    "upper bound (product of weight spectral norms) may grow "
                                    "within a probe before it is reported (stabcheck: one "
                                    "order of magnitude).")

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if field is None or isinstance(value, bool) or \
                        not isinstance(value, int | float):
                    continue
                limit = MAX_STEPS_THRESHOLD if field.annotation is int else MAX_RATIO_THRESHOLD
                if value > limit:
                    raise ValueError(f"{key}: {value:g} is over the limit of {limit:g}")
        return data
