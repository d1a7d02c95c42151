"""The scheduler comparison protocol shared by tests/test_sd_schedulers.py and scripts/make_scheduler_fixtures.py:
the configs, the cases, a fixed fake model and one sampling loop run with our schedulers or with diffusers' (fed
the same noise by replacing its randn_tensor with draws from the same numpy Generator)."""
import numpy as np

from onnxstream_py.sd.schedulers import SCHEDULERS, draw_noise, make_scheduler

SHAPE = (1, 4, 8, 8)
SEED = 1234
STEPS = (1, 4, 10, 25)

_SD = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, num_train_timesteps=1000,
           set_alpha_to_one=False, steps_offset=1, trained_betas=None, clip_sample=False)
CONFIGS = {
    # runwayml/stable-diffusion-v1-5 scheduler_config.json (PNDM, written by diffusers 0.6: no timestep_spacing)
    "sd15": dict(_SD, _class_name="PNDMScheduler", skip_prk_steps=True),
    # the same saved by a recent diffusers (PNDM's timestep_spacing "leading" is then passed to every sampler)
    "sd15_leading": dict(_SD, _class_name="PNDMScheduler", skip_prk_steps=True, timestep_spacing="leading",
                         prediction_type="epsilon"),
    # stabilityai/stable-diffusion-2-1 (DDIM, v_prediction)
    "sd2v": dict(_SD, _class_name="DDIMScheduler", prediction_type="v_prediction", skip_prk_steps=True),
    "trailing": dict(_SD, _class_name="DDIMScheduler", timestep_spacing="trailing"),
}
# (sampler, karras)
SAMPLERS = [("euler_a", False), ("euler", False), ("euler", True), ("ddim", False), ("dpmpp_2m", False),
            ("dpmpp_2m", True), ("lcm", False)]
CASES = ([(cfg, s, k, n) for cfg in ("sd15", "sd2v") for s, k in SAMPLERS for n in STEPS]
         + [("sd15_leading", s, k, 10) for s, k in SAMPLERS]
         + [("trailing", s, k, n) for s, k in SAMPLERS for n in (4, 10)])


def case_key(cfg, sampler, karras, steps):
    return f"{cfg}-{sampler}{'-karras' if karras else ''}-{steps}"


def fake_model(x, t):
    """eps (or v) = 0.1 * input + 0.05 * sin(t), in float32."""
    return (np.asarray(x, np.float32) * np.float32(0.1) + np.float32(0.05 * np.sin(float(t)))).astype(np.float32)


def run_ours(cfg, sampler, karras, steps):
    """(timesteps, sigmas or None, trajectory [steps, *SHAPE]) with onnxstream_py.sd.schedulers."""
    sched = make_scheduler(sampler, CONFIGS[cfg], karras=karras)
    sched.set_timesteps(steps)
    rng = np.random.default_rng(SEED)
    x = draw_noise(rng, SHAPE) * sched.init_noise_sigma
    traj = []
    for t in sched.timesteps:
        x = sched.step(fake_model(sched.scale_model_input(x, t), t), t, x, rng)
        traj.append(x)
    return np.asarray(sched.timesteps), getattr(sched, "sigmas", None), np.stack(traj)


_DIFFUSERS = {"euler_a": ("EulerAncestralDiscreteScheduler", "scheduling_euler_ancestral_discrete"),
              "euler": ("EulerDiscreteScheduler", "scheduling_euler_discrete"),
              "ddim": ("DDIMScheduler", "scheduling_ddim"),
              "dpmpp_2m": ("DPMSolverMultistepScheduler", "scheduling_dpmsolver_multistep"),
              "lcm": ("LCMScheduler", "scheduling_lcm")}
assert set(_DIFFUSERS) == set(SCHEDULERS)


def run_diffusers(cfg, sampler, karras, steps):
    """The same loop with diffusers' scheduler (needs torch + diffusers)."""
    import importlib
    import torch
    import diffusers
    cls_name, mod_name = _DIFFUSERS[sampler]
    cls = getattr(diffusers, cls_name)
    overrides = {}
    if karras:
        overrides["use_karras_sigmas"] = True
    if sampler == "dpmpp_2m":
        overrides.update(solver_order=2, algorithm_type="dpmsolver++")
    sched = cls.from_config(CONFIGS[cfg], **overrides)
    sched.set_timesteps(steps)
    rng = np.random.default_rng(SEED)
    module = importlib.import_module(f"diffusers.schedulers.{mod_name}")
    saved = getattr(module, "randn_tensor", None)
    module.randn_tensor = lambda shape, **kw: torch.from_numpy(draw_noise(rng, shape))
    try:
        x = torch.from_numpy(draw_noise(rng, SHAPE)) * sched.init_noise_sigma
        traj = []
        for t in sched.timesteps:
            xin = sched.scale_model_input(x, t)
            eps = torch.from_numpy(fake_model(xin.numpy(), t.item()))
            x = sched.step(eps, t, x).prev_sample
            traj.append(x.numpy().copy())
    finally:
        if saved is not None:
            module.randn_tensor = saved
    sigmas = sched.sigmas.numpy() if sampler in ("euler_a", "euler", "dpmpp_2m") else None
    return sched.timesteps.numpy(), sigmas, np.stack(traj)
