"""Diffusion schedulers for Stable Diffusion in numpy, numerically matching diffusers (0.39) for the same model
outputs and the same noise: euler_a (EulerAncestralDiscreteScheduler, the default), euler (EulerDiscreteScheduler),
ddim (DDIMScheduler), dpmpp_2m (DPMSolverMultistepScheduler, solver_order 2, dpmsolver++, optional Karras sigmas)
and lcm (LCMScheduler).

Configuration works like diffusers' `Scheduler.from_config(pipeline_scheduler_config)`: every key of the
pipeline's `scheduler/scheduler_config.json` that the target scheduler accepts is used, the rest keep that
scheduler's own defaults. So SD 1.5's PNDM config (scaled_linear 0.00085..0.012, steps_offset 1, no
timestep_spacing key) gives euler its default "linspace" spacing and ddim "leading", while a config saved by a
recent diffusers (which writes PNDM's timestep_spacing "leading") gives "leading" to all, as in diffusers.

Precision: diffusers computes the schedule in float32 torch (betas, cumprod, sigmas) and steps in float32; we do the
same operations in float32 numpy, so trajectories agree to 1.3e-6 relative (max |diff| / max |ref| over the test
cases); the only systematic difference is torch.linspace's vectorised float32 rounding of the betas, which also
moves euler's fractional Karras timesteps by up to 6e-6 relative. Noise: the stochastic samplers (euler_a every
step, lcm every step but the last, ddim with eta > 0) draw `rng.standard_normal(shape, dtype=float32)` from the
numpy Generator passed to step(), once per step, exactly when diffusers draws its randn_tensor -- so a seed fixes
the image, and the tests feed diffusers the same arrays.

Usage (as in diffusers' pipeline):
    sched = make_scheduler("euler_a", "model/scheduler")
    sched.set_timesteps(20)
    x = rng.standard_normal(shape, dtype=np.float32) * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = unet(sched.scale_model_input(x, t), t, ...)
        x = sched.step(eps, t, x, rng)
Reference: diffusers/schedulers/scheduling_{euler_ancestral_discrete,euler_discrete,ddim,dpmsolver_multistep,lcm}.py
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

F32 = np.float32


def load_scheduler_config(path) -> dict:
    """A scheduler config: a dict, a scheduler_config.json file or the folder holding it (None -> {})."""
    if path is None:
        return {}
    if isinstance(path, dict):
        return dict(path)
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "scheduler_config.json")
    if not os.path.isfile(p):
        raise FileNotFoundError(f"scheduler config {p} not found (expected a diffusers scheduler/ folder)")
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def draw_noise(rng: np.random.Generator, shape) -> np.ndarray:
    """The one way every scheduler draws its noise (the tests inject the same draws into diffusers)."""
    return rng.standard_normal(tuple(shape), dtype=np.float32)


def _betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas) -> np.ndarray:
    if trained_betas is not None:
        return np.asarray(trained_betas, dtype=F32)
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, num_train_timesteps).astype(F32)
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps).astype(F32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        n = num_train_timesteps
        return np.asarray([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=F32)
    raise NotImplementedError(f"scheduler: beta_schedule {beta_schedule!r} is not supported "
                              "(linear, scaled_linear, squaredcos_cap_v2)")


def _spaced_timesteps(spacing: str, n: int, train: int, steps_offset: int) -> np.ndarray:
    """Timesteps (float64, descending) of diffusers' three spacings, before each scheduler's own cast."""
    if spacing == "linspace":
        return np.linspace(0, train - 1, n)[::-1].copy()
    if spacing == "leading":
        ratio = train // n
        return (np.arange(0, n) * ratio).round()[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        ratio = train / n
        return np.arange(train, 0, -ratio).round() - 1
    raise ValueError(f"scheduler: timestep_spacing {spacing!r} is not supported (linspace, leading, trailing)")


def _sigma_to_t(sigma, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of a sigma by interpolating log sigma (diffusers' _sigma_to_t)."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


def _or(value, default):
    """A config value, or the default when it is absent/None (0.0 is a value)."""
    return default if value is None else value


def _karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) sigmas, float64: equal steps in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


class Scheduler:
    """Common part: the config (class defaults overridden by the accepted keys of a diffusers config), the beta
    schedule in float32, the step index (set from the first timestep seen, as diffusers does)."""

    name = ""
    DEFAULTS: dict = {}
    UNSUPPORTED: dict = {"thresholding": False, "rescale_betas_zero_snr": False}  # key -> the only value we run

    def __init__(self, **config):
        self.config = dict(self.DEFAULTS)
        self.config.update({k: v for k, v in config.items() if k in self.DEFAULTS})
        for key, ok in self.UNSUPPORTED.items():
            if key in self.config and self.config[key] != ok:
                raise NotImplementedError(f"{self.name} scheduler: {key}={self.config[key]!r} is not supported")
        c = self.config
        if c["prediction_type"] not in ("epsilon", "v_prediction"):
            raise ValueError(f"{self.name} scheduler: prediction_type {c['prediction_type']!r} is not supported "
                             "(epsilon, v_prediction)")
        self.betas = _betas(c["num_train_timesteps"], c["beta_start"], c["beta_end"], c["beta_schedule"],
                            c.get("trained_betas"))
        self.alphas_cumprod = np.cumprod(F32(1.0) - self.betas).astype(F32)  # sequential float32, like torch
        if "set_alpha_to_one" in self.DEFAULTS:   # DDIM, LCM: the alpha product "before" step 0
            self.final_alpha_cumprod = F32(1.0) if c["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.num_inference_steps = None
        self.timesteps = None
        self._step_index = None

    @classmethod
    def from_config(cls, config=None, **overrides) -> "Scheduler":
        cfg = load_scheduler_config(config)
        cfg.update(overrides)
        return cls(**cfg)

    @property
    def prediction_type(self) -> str:
        return self.config["prediction_type"]

    def _train_sigmas(self) -> np.ndarray:
        ac = self.alphas_cumprod
        return ((F32(1) - ac) / ac) ** F32(0.5)

    def _need_timesteps(self) -> None:
        if self.timesteps is None:
            raise ValueError(f"{self.name} scheduler: call set_timesteps() before scale_model_input()/step()")

    def _validate_steps(self, n) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{self.name} scheduler: number of steps must be an integer >= 1, got {n!r}")
        return int(n)

    def _init_step_index(self, t) -> None:
        if self._step_index is None:
            hits = np.nonzero(self.timesteps == t)[0]
            if len(hits) == 0:
                raise ValueError(f"{self.name} scheduler: timestep {t!r} is not one of .timesteps")
            self._step_index = int(hits[1] if len(hits) > 1 else hits[0])

    @staticmethod
    def _check(model_output, sample, name):
        model_output = np.asarray(model_output)
        sample = np.asarray(sample)
        if model_output.shape != sample.shape:
            raise ValueError(f"{name} scheduler step: model_output shape {model_output.shape} != sample shape "
                             f"{sample.shape}")
        return model_output.astype(F32, copy=False), sample.astype(F32, copy=False)

    @staticmethod
    def _noise(rng, noise, shape, name):
        if noise is not None:
            noise = np.asarray(noise, dtype=F32)
            if noise.shape != tuple(shape):
                raise ValueError(f"{name} scheduler step: noise shape {noise.shape} != sample shape {tuple(shape)}")
            return noise
        if rng is None:
            raise ValueError(f"{name} scheduler step: this sampler adds noise; pass rng (a numpy Generator)")
        return draw_noise(rng, shape)

    def scale_model_input(self, sample, t):
        self._need_timesteps()
        return sample

    def __repr__(self):
        return f"{type(self).__name__}({self.name}, steps={self.num_inference_steps})"


class _SigmaScheduler(Scheduler):
    """Euler-family (k-diffusion style) schedulers: sigmas per step, input scaled by 1/sqrt(sigma^2 + 1)."""

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._validate_steps(num_inference_steps)
        c = self.config
        timesteps = _spaced_timesteps(c["timestep_spacing"], n, c["num_train_timesteps"], c["steps_offset"])
        timesteps = timesteps.astype(F32)
        train_sigmas = self._train_sigmas()
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        if c.get("use_karras_sigmas"):
            log_sigmas = np.log(train_sigmas)
            sigmas = _karras(_or(c.get("sigma_min"), sigmas[-1].item()), _or(c.get("sigma_max"), sigmas[0].item()), n)
            timesteps = np.array([_sigma_to_t(s, log_sigmas) for s in sigmas]).astype(F32)
        last = self._train_sigmas()[0] if c.get("final_sigmas_type", "zero") == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(F32)
        self.timesteps = timesteps
        self.num_inference_steps = n
        self._step_index = None

    @property
    def init_noise_sigma(self):
        m = self.sigmas.max() if self.timesteps is not None else self._train_sigmas().max()
        return m if self.config["timestep_spacing"] in ("linspace", "trailing") else (m ** 2 + F32(1)) ** F32(0.5)

    def scale_model_input(self, sample, t):
        self._need_timesteps()
        self._init_step_index(t)
        sigma = self.sigmas[self._step_index]
        return np.asarray(sample, dtype=F32) / (sigma ** 2 + F32(1)) ** F32(0.5)

    def _x0(self, model_output, sample, sigma, sigma_hat):
        if self.prediction_type == "epsilon":
            return sample - sigma_hat * model_output
        return model_output * (-sigma / (sigma ** 2 + F32(1)) ** F32(0.5)) + sample / (sigma ** 2 + F32(1))


class EulerAncestral(_SigmaScheduler):
    """euler_a: Euler step to sigma_down, plus fresh noise of std sigma_up (eta = 1)."""

    name = "euler_a"
    DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, prediction_type="epsilon", timestep_spacing="linspace", steps_offset=0,
                    rescale_betas_zero_snr=False)

    def step(self, model_output, t, sample, rng=None, noise=None) -> np.ndarray:
        self._need_timesteps()
        model_output, sample = self._check(model_output, sample, self.name)
        self._init_step_index(t)
        i = self._step_index
        sigma = self.sigmas[i]
        x0 = self._x0(model_output, sample, sigma, sigma)
        sigma_to = self.sigmas[i + 1]
        sigma_up = (sigma_to ** 2 * (sigma ** 2 - sigma_to ** 2) / sigma ** 2) ** F32(0.5)
        sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** F32(0.5)
        prev = sample + (sample - x0) / sigma * (sigma_down - sigma)
        prev = prev + self._noise(rng, noise, sample.shape, self.name) * sigma_up
        self._step_index += 1
        return prev


class Euler(_SigmaScheduler):
    """euler: deterministic Euler (s_churn = 0); `use_karras_sigmas` supported as in diffusers."""

    name = "euler"
    DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, prediction_type="epsilon", interpolation_type="linear",
                    use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False, sigma_min=None,
                    sigma_max=None, timestep_spacing="linspace", timestep_type="discrete", steps_offset=0,
                    rescale_betas_zero_snr=False, final_sigmas_type="zero")
    UNSUPPORTED = dict(Scheduler.UNSUPPORTED, interpolation_type="linear", use_exponential_sigmas=False,
                       use_beta_sigmas=False, timestep_type="discrete")

    def step(self, model_output, t, sample, rng=None, noise=None) -> np.ndarray:
        self._need_timesteps()
        model_output, sample = self._check(model_output, sample, self.name)
        self._init_step_index(t)
        i = self._step_index
        sigma = self.sigmas[i]
        sigma_hat = sigma * F32(1.0)  # gamma = 0 (no churn)
        x0 = self._x0(model_output, sample, sigma, sigma_hat)
        prev = sample + (sample - x0) / sigma_hat * (self.sigmas[i + 1] - sigma_hat)
        self._step_index += 1
        return prev


class DDIM(Scheduler):
    """ddim: deterministic for eta = 0 (the pipeline default); eta > 0 adds noise."""

    name = "ddim"
    DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                    prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                    clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading",
                    rescale_betas_zero_snr=False, eta=0.0)
    init_noise_sigma = F32(1.0)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._validate_steps(num_inference_steps)
        c = self.config
        train = c["num_train_timesteps"]
        if n > train:
            raise ValueError(f"ddim scheduler: {n} steps > num_train_timesteps {train}")
        if c["timestep_spacing"] == "linspace":  # DDIM rounds linspace to integers
            ts = np.linspace(0, train - 1, n).round()[::-1].copy()
        else:
            ts = _spaced_timesteps(c["timestep_spacing"], n, train, c["steps_offset"])
        self.timesteps = ts.astype(np.int64)
        self.num_inference_steps = n

    def step(self, model_output, t, sample, rng=None, noise=None) -> np.ndarray:
        self._need_timesteps()
        model_output, sample = self._check(model_output, sample, self.name)
        c = self.config
        t = int(t)
        prev_t = t - c["num_train_timesteps"] // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = F32(1) - a_t
        if self.prediction_type == "epsilon":
            x0 = (sample - b_t ** F32(0.5) * model_output) / a_t ** F32(0.5)
            eps = model_output
        else:
            x0 = a_t ** F32(0.5) * sample - b_t ** F32(0.5) * model_output
            eps = a_t ** F32(0.5) * model_output + b_t ** F32(0.5) * sample
        if c["clip_sample"]:
            r = F32(c["clip_sample_range"])
            x0 = np.clip(x0, -r, r)
        eta = F32(c["eta"])
        variance = (F32(1) - a_prev) / b_t * (F32(1) - a_t / a_prev)
        std = eta * variance ** F32(0.5)
        prev = a_prev ** F32(0.5) * x0 + (F32(1) - a_prev - std ** 2) ** F32(0.5) * eps
        if eta > 0:
            prev = prev + std * self._noise(rng, noise, sample.shape, self.name)
        return prev


class DPMSolverPP2M(Scheduler):
    """dpmpp_2m: DPM-Solver++ multistep, order 2 (first order on the first and, with few steps or final sigma 0,
    the last step). `karras=True` / use_karras_sigmas: Karras sigmas with rounded timesteps."""

    name = "dpmpp_2m"
    DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, solver_order=2, prediction_type="epsilon", thresholding=False,
                    dynamic_thresholding_ratio=0.995, sample_max_value=1.0, algorithm_type="dpmsolver++",
                    solver_type="midpoint", lower_order_final=True, euler_at_final=False, use_karras_sigmas=False,
                    use_exponential_sigmas=False, use_beta_sigmas=False, use_lu_lambdas=False,
                    use_flow_sigmas=False, final_sigmas_type="zero", lambda_min_clipped=-float("inf"),
                    variance_type=None, timestep_spacing="linspace", steps_offset=0, rescale_betas_zero_snr=False)
    UNSUPPORTED = dict(Scheduler.UNSUPPORTED, use_exponential_sigmas=False, use_beta_sigmas=False,
                       use_lu_lambdas=False, use_flow_sigmas=False, variance_type=None)
    init_noise_sigma = F32(1.0)

    def __init__(self, **config):
        super().__init__(**config)
        # The sampler's name fixes the method: whatever the pipeline's config says, 2nd-order DPM-Solver++.
        self.config.update(solver_order=2, algorithm_type="dpmsolver++")
        if self.config["solver_type"] not in ("midpoint", "heun"):
            raise NotImplementedError(f"dpmpp_2m scheduler: solver_type {self.config['solver_type']!r}")
        lam = np.log(np.sqrt(self.alphas_cumprod)) - np.log(np.sqrt(F32(1) - self.alphas_cumprod))
        self._lambda_t = lam.astype(F32)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._validate_steps(num_inference_steps)
        c = self.config
        train = c["num_train_timesteps"]
        clipped = int(np.searchsorted(self._lambda_t[::-1], c["lambda_min_clipped"]))
        last = train - clipped
        spacing = c["timestep_spacing"]
        if spacing == "linspace":
            ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif spacing == "leading":
            ratio = last // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + c["steps_offset"]
        elif spacing == "trailing":
            ts = np.arange(last, 0, -train / n).round().astype(np.int64) - 1
        else:
            raise ValueError(f"dpmpp_2m scheduler: timestep_spacing {spacing!r} is not supported")
        train_sigmas = self._train_sigmas()
        if c["use_karras_sigmas"]:
            log_sigmas = np.log(train_sigmas)
            flipped = train_sigmas[::-1]
            sigmas = _karras(_or(c.get("sigma_min"), flipped[-1].item()), _or(c.get("sigma_max"), flipped[0].item()),
                             n)
            ts = np.array([_sigma_to_t(s, log_sigmas) for s in sigmas])
            if c["beta_schedule"] != "squaredcos_cap_v2":
                ts = ts.round()
        else:
            sigmas = np.interp(ts, np.arange(len(train_sigmas)), train_sigmas)
        last_sigma = train_sigmas[0] if c["final_sigmas_type"] == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last_sigma]]).astype(F32)
        self.timesteps = ts.astype(np.int64)
        self.num_inference_steps = len(ts)
        self._outputs = [None, None]
        self._lower_order_nums = 0
        self._step_index = None

    @staticmethod
    def _alpha_sigma(sigma):
        alpha = F32(1) / (sigma ** 2 + F32(1)) ** F32(0.5)
        return alpha, sigma * alpha

    def _index_for(self, t) -> int:
        hits = np.nonzero(self.timesteps == t)[0]
        if len(hits) == 0:
            return len(self.timesteps) - 1  # diffusers' fallback for an unknown timestep
        return int(hits[1] if len(hits) > 1 else hits[0])

    def step(self, model_output, t, sample, rng=None, noise=None) -> np.ndarray:
        self._need_timesteps()
        model_output, sample = self._check(model_output, sample, self.name)
        c = self.config
        if self._step_index is None:
            self._step_index = self._index_for(t)
        i, n = self._step_index, len(self.timesteps)
        # diffusers' lower_order_second only matters at order 3; at order 2 the last step may drop to order 1.
        lower_final = i == n - 1 and (c["euler_at_final"] or (c["lower_order_final"] and n < 15)
                                      or c["final_sigmas_type"] == "zero")
        alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[i])
        if self.prediction_type == "epsilon":
            x0 = (sample - sigma_s0 * model_output) / alpha_s0
        else:
            x0 = alpha_s0 * sample - sigma_s0 * model_output
        self._outputs = [self._outputs[1], x0]
        with np.errstate(divide="ignore"):  # final sigma 0: lambda_t = +inf, exp(-h) = 0, as in torch
            alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i + 1])
            lam_t = np.log(alpha_t) - np.log(sigma_t)
            lam_s0 = np.log(alpha_s0) - np.log(sigma_s0)
            h = lam_t - lam_s0
            em1 = np.exp(-h) - F32(1.0)
            if self._lower_order_nums < 1 or lower_final:
                prev = sigma_t / sigma_s0 * sample - alpha_t * em1 * x0
            else:
                alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[i - 1])
                lam_s1 = np.log(alpha_s1) - np.log(sigma_s1)
                r0 = (lam_s0 - lam_s1) / h
                m0, m1 = self._outputs[1], self._outputs[0]
                d1 = F32(1.0) / r0 * (m0 - m1)
                if c["solver_type"] == "midpoint":
                    prev = sigma_t / sigma_s0 * sample - alpha_t * em1 * m0 - F32(0.5) * (alpha_t * em1) * d1
                else:
                    prev = (sigma_t / sigma_s0 * sample - alpha_t * em1 * m0
                            + alpha_t * (em1 / h + F32(1.0)) * d1)
        if self._lower_order_nums < 2:
            self._lower_order_nums += 1
        self._step_index += 1
        return prev.astype(F32, copy=False)


class LCM(Scheduler):
    """lcm: Latent Consistency Model multistep sampling (for LCM / LCM-LoRA UNets); noise on all but the last step."""

    name = "lcm"
    DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    trained_betas=None, original_inference_steps=50, clip_sample=False, clip_sample_range=1.0,
                    set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon", thresholding=False,
                    dynamic_thresholding_ratio=0.995, sample_max_value=1.0, timestep_spacing="leading",
                    timestep_scaling=10.0, rescale_betas_zero_snr=False)
    init_noise_sigma = F32(1.0)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._validate_steps(num_inference_steps)
        c = self.config
        original = c["original_inference_steps"]
        if original > c["num_train_timesteps"]:
            raise ValueError(f"lcm scheduler: original_inference_steps {original} > num_train_timesteps")
        if n > original:
            raise ValueError(f"lcm scheduler: {n} steps > original_inference_steps {original}")
        k = c["num_train_timesteps"] // original
        origin = (np.arange(1, original + 1) * k - 1)[::-1].copy()
        idx = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        self.timesteps = origin[idx].astype(np.int64)
        self.num_inference_steps = n
        self._step_index = None

    def step(self, model_output, t, sample, rng=None, noise=None) -> np.ndarray:
        self._need_timesteps()
        model_output, sample = self._check(model_output, sample, self.name)
        c = self.config
        self._init_step_index(t)
        i = self._step_index
        t = int(t)
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else t
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t, b_prev = F32(1) - a_t, F32(1) - a_prev
        scaled = F32(t) * F32(c["timestep_scaling"])
        c_skip = F32(0.25) / (scaled ** 2 + F32(0.25))  # sigma_data = 0.5
        c_out = scaled / (scaled ** 2 + F32(0.25)) ** F32(0.5)
        if self.prediction_type == "epsilon":
            x0 = (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t)
        else:
            x0 = np.sqrt(a_t) * sample - np.sqrt(b_t) * model_output
        if c["clip_sample"]:
            r = F32(c["clip_sample_range"])
            x0 = np.clip(x0, -r, r)
        denoised = c_out * x0 + c_skip * sample
        if i != self.num_inference_steps - 1:
            prev = np.sqrt(a_prev) * denoised + np.sqrt(b_prev) * self._noise(rng, noise, sample.shape, self.name)
        else:
            prev = denoised
        self._step_index += 1
        return prev


SCHEDULERS = {"euler_a": EulerAncestral, "euler": Euler, "ddim": DDIM, "dpmpp_2m": DPMSolverPP2M, "lcm": LCM}
DEFAULT_SCHEDULER = "euler_a"


def make_scheduler(name: str = DEFAULT_SCHEDULER, config=None, karras: bool = False, **overrides) -> Scheduler:
    """A scheduler by sampler name, configured from a diffusers scheduler config (dict, json file or folder).
    karras=True selects Karras sigmas (dpmpp_2m and euler)."""
    cls = SCHEDULERS.get(name)
    if cls is None:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if karras:
        if "use_karras_sigmas" not in cls.DEFAULTS:
            raise ValueError(f"sampler {name!r} has no Karras sigma option (dpmpp_2m and euler have)")
        overrides["use_karras_sigmas"] = True
    return cls.from_config(config, **overrides)
