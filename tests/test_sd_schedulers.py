"""Diffusion schedulers (onnxstream_py/sd/schedulers.py) against diffusers.

Reference: diffusers 0.39 trajectories stored by scripts/make_scheduler_fixtures.py in
tests/fixtures/sd/scheduler_trajectories.npz (CI has no torch), and live when torch + diffusers are importable.
Protocol (tests/sd_scheduler_protocol.py): fixed fake model eps = 0.1 * x_in + 0.05 * sin(t), the same PCG64 noise
for the initial latents and for every noise draw. "Relative" error = max|ours - ref| / max|ref|, bar 1e-5.
"""
import importlib.util
import json
import os

import pytest

import onnxstream_py  # noqa: F401  (before numpy: thread settings)
import numpy as np

from onnxstream_py.sd.schedulers import (DDIM, SCHEDULERS, DPMSolverPP2M, Euler, EulerAncestral, draw_noise,
                                         load_scheduler_config, make_scheduler)
from sd_scheduler_protocol import CASES, CONFIGS, SEED, SHAPE, case_key, fake_model, run_diffusers, run_ours

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "sd", "scheduler_trajectories.npz")
HAVE_DIFFUSERS = (importlib.util.find_spec("diffusers") is not None
                  and importlib.util.find_spec("torch") is not None)


def rel_err(ours, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as z:
        data = {k: z[k] for k in z.files}
    data["index"] = {str(k): i for i, k in enumerate(data["keys"])}
    return data


def test_fixture_matches_protocol(ref):
    assert [case_key(*c) for c in CASES] == list(ref["keys"]), "cases changed: rerun make_scheduler_fixtures.py"
    # The fixture's noise came from this Generator stream; if numpy ever changed it, say so here.
    np.testing.assert_array_equal(draw_noise(np.random.default_rng(SEED), (8,)), ref["noise_probe"])


@pytest.mark.parametrize("case", CASES, ids=[case_key(*c) for c in CASES])
def test_matches_diffusers_fixture(ref, case):
    i = ref["index"][case_key(*case)]
    timesteps, sigmas, traj = run_ours(*case)
    n = case[3]
    np.testing.assert_allclose(timesteps.astype(np.float64), ref["timesteps"][i, :n], rtol=1e-5, atol=1e-4)
    assert np.isnan(ref["timesteps"][i, n:]).all()
    if sigmas is not None:
        assert rel_err(sigmas, ref["sigmas"][i, :n + 1]) <= 1e-5
    assert rel_err(traj[0], ref["first"][i]) <= 1e-5
    assert rel_err(traj[-1], ref["last"][i]) <= 1e-5


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="torch + diffusers not installed (fixture comparison still runs)")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own numpy-2 deprecation notices
def test_matches_diffusers_live_every_step():
    import diffusers
    diffusers.utils.logging.set_verbosity_error()
    for case in CASES:
        ts_o, sg_o, tr_o = run_ours(*case)
        ts_d, sg_d, tr_d = run_diffusers(*case)
        assert ts_o.dtype == ts_d.dtype, case
        np.testing.assert_allclose(ts_o.astype(np.float64), ts_d.astype(np.float64), rtol=1e-5, atol=1e-4)
        if sg_o is not None:
            assert rel_err(sg_o, sg_d) <= 1e-5, case
        for k in range(len(tr_d)):
            assert rel_err(tr_o[k], tr_d[k]) <= 1e-5, (case, k)


def test_spacing_follows_each_scheduler_default_as_diffusers_from_config():
    cfg = CONFIGS["sd15"]  # no timestep_spacing key: each scheduler keeps its own default
    e = make_scheduler("euler_a", cfg)
    e.set_timesteps(10)
    np.testing.assert_allclose(e.timesteps, np.linspace(0, 999, 10)[::-1])  # linspace
    assert e.timesteps.dtype == np.float32
    assert e.init_noise_sigma == e.sigmas.max()
    d = make_scheduler("ddim", cfg)
    d.set_timesteps(10)
    assert d.timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]  # leading + steps_offset
    e2 = make_scheduler("euler_a", CONFIGS["sd15_leading"])
    e2.set_timesteps(10)
    assert e2.timesteps.tolist() == d.timesteps.tolist()
    np.testing.assert_allclose(e2.init_noise_sigma, np.sqrt(e2.sigmas.max() ** 2 + 1), rtol=1e-6)
    lcm = make_scheduler("lcm", cfg)
    lcm.set_timesteps(4)
    assert lcm.timesteps.tolist() == [999, 759, 499, 259]


def test_same_seed_same_result_and_noise_only_where_diffusers_draws():
    def run(name, seed):
        s = make_scheduler(name, CONFIGS["sd15"])
        s.set_timesteps(5)
        rng = np.random.default_rng(seed)
        x = draw_noise(rng, SHAPE) * s.init_noise_sigma
        for t in s.timesteps:
            x = s.step(fake_model(s.scale_model_input(x, t), t), t, x, rng)
        return x, rng.bit_generator.state["state"]["state"]

    for name in SCHEDULERS:
        a, state_a = run(name, 7)
        b, state_b = run(name, 7)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32 and a.shape == SHAPE
    # deterministic samplers leave the Generator where the initial latents left it
    after_init = np.random.default_rng(7)
    draw_noise(after_init, SHAPE)
    for name in ("euler", "ddim", "dpmpp_2m"):
        assert run(name, 7)[1] == after_init.bit_generator.state["state"]["state"]
    assert not np.array_equal(run("euler_a", 7)[0], run("euler_a", 8)[0])


def test_explicit_noise_equals_rng_draw():
    s1, s2 = make_scheduler("euler_a", CONFIGS["sd15"]), make_scheduler("euler_a", CONFIGS["sd15"])
    for s in (s1, s2):
        s.set_timesteps(3)
    x = np.ones(SHAPE, np.float32)
    t = s1.timesteps[0]
    eps = fake_model(s1.scale_model_input(x, t), t)
    s2.scale_model_input(x, t)
    noise = draw_noise(np.random.default_rng(3), SHAPE)
    np.testing.assert_array_equal(s1.step(eps, t, x, np.random.default_rng(3)), s2.step(eps, t, x, noise=noise))


def test_config_from_folder(tmp_path):
    folder = tmp_path / "scheduler"
    folder.mkdir()
    (folder / "scheduler_config.json").write_text(json.dumps(CONFIGS["sd2v"]))
    s = make_scheduler("dpmpp_2m", str(folder), karras=True)
    assert isinstance(s, DPMSolverPP2M) and s.prediction_type == "v_prediction"
    assert s.config["use_karras_sigmas"] and s.config["solver_order"] == 2
    assert load_scheduler_config(str(folder / "scheduler_config.json"))["prediction_type"] == "v_prediction"
    assert isinstance(make_scheduler(), EulerAncestral)  # default sampler, diffusers' class defaults
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        make_scheduler("euler", str(tmp_path))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown sampler 'heun'"):
        make_scheduler("heun")
    with pytest.raises(ValueError, match="Karras"):
        make_scheduler("euler_a", karras=True)
    with pytest.raises(NotImplementedError, match="thresholding"):
        DDIM(thresholding=True)
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        Euler(prediction_type="sample")
    s = make_scheduler("euler_a", CONFIGS["sd15"])
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 999.0, x, np.random.default_rng(0))
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        s.set_timesteps(0)
    s.set_timesteps(4)
    t = s.timesteps[0]
    with pytest.raises(ValueError, match="model_output shape"):
        s.step(x[:, :3], t, x, np.random.default_rng(0))
    with pytest.raises(ValueError, match="pass rng"):
        s.step(x, t, x)
    e = make_scheduler("euler", CONFIGS["sd15"])
    e.set_timesteps(4)
    with pytest.raises(ValueError, match="not one of .timesteps"):
        e.step(x, 123.5, x)
    with pytest.raises(ValueError, match="original_inference_steps"):
        make_scheduler("lcm").set_timesteps(51)
