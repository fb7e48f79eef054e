"""Every registered attack honours the shared contract (run over the ATTACKS registry, like
torchattacks' and scikit-learn's conformance suites). Separation/chance tests live in the per-paper files."""

from pathlib import Path

import numpy as np
import pytest

from diffmia.attacks import ATTACKS

THREATS = {"white-box", "gray-box", "black-box", "no access"}
# Inputs an attack cannot work without (no paper default exists): refcal's reference models.
REQUIRED = {"refcal": {"references": str(Path(__file__).parent / "fixtures" / "references")}}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_declares_paper_threat_model_and_params(name):
    cls = ATTACKS[name]
    assert cls.name == name and cls.paper and cls.threat_model in THREATS
    assert cls.access in {"model", "api", "none"}
    assert (cls.__doc__ or "").strip() and (cls.__module__ and __import__(cls.__module__, fromlist=["x"]).__doc__)
    atk = cls()                                           # paper defaults
    params = atk.get_params()
    assert list(params) == cls._param_names()
    assert cls(**params).get_params() == params           # the constructor only stores
    q = atk.queries_per_sample()
    assert isinstance(q, (int, np.integer)) and q >= 0
    if cls.access == "none":
        assert q == 0


@pytest.mark.parametrize("name", sorted(n for n, c in ATTACKS.items() if c.access == "model" and not c.needs_text))
def test_model_attack_features_scores_contract(name, memorised_target, eval_set):
    x, is_member, ids = eval_set
    sel = np.r_[0:6, 32:38]                                # 6 members, 6 non-members
    atk = ATTACKS[name](**REQUIRED.get(name, {}))
    memorised_target.queries = 0
    f = atk.features(memorised_target, x[sel], seeds=ids[sel])
    assert memorised_target.queries == atk.queries_per_sample() * len(sel)   # counted, not declared
    assert all(len(v) == len(sel) for v in f.values())
    again = atk.features(memorised_target, x[sel], seeds=ids[sel])
    assert all(np.array_equal(f[k], again[k]) for k in f)                    # same seed, same features
    if atk.learned:
        atk.fit(f, is_member[sel])
    v = atk.scores(f)
    assert v and all(s.shape == (len(sel),) and np.isfinite(s).all() for s in v.values())


def test_file_names_equal_registry_names():
    """One file per registry entry, named after it; helpers shared by two attacks start with '_'."""

    import diffmia.attacks as pkg

    for name, cls in ATTACKS.items():
        assert cls.__module__ == f"diffmia.attacks.{name}", (name, cls.__module__)
    files = {p.stem for p in Path(pkg.__file__).parent.glob("*.py")}
    assert {f for f in files if not f.startswith("_")} - {"base"} == set(ATTACKS)


# Small parameters so that every attack's features run in well under a second on the fixture.
SMALL = {"forensics": {"grid_stride": 250}, "secmi": {"t_sec": 20}, "secmi_nns": {"t_sec": 20},
         "forensics_graybox": {"t_start": 20, "num_steps": 2}, "observers": {"t_start": 20, "num_steps": 2},
         "ganleaks": {"n_generated": 4, "cache_dir": False}, "monte_carlo_set": {"n_generated": 4, "cache_dir": False}}


@pytest.fixture(scope="module")
def sd_target(sd_dir):
    from diffmia.targets.stable_diffusion import LatentDiffusersTarget

    return LatentDiffusersTarget.from_pretrained(sd_dir, device="cpu")


@pytest.fixture(scope="module")
def fixture_api(memorised_dir):
    from diffmia.targets import DiffusersAPI

    return DiffusersAPI.from_pretrained(memorised_dir, device="cpu", generate_sampler="ddim", generate_steps=2)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_features_leave_the_attack_unchanged_and_reuse_the_callers_cache(name, memorised_target, fixture_api,
                                                                        sd_target, eval_set):
    import pickle

    x, _, ids = eval_set
    cls = ATTACKS[name]
    target = {"model": sd_target if cls.needs_text else memorised_target, "api": fixture_api, "none": None}[cls.access]
    cond = ["a photo of a light, wide sandal", "a photo of a dark, narrow shirt", ""] if cls.needs_text else None
    atk = cls(**SMALL.get(name, {}), **REQUIRED.get(name, {}))
    before = pickle.dumps(atk)
    cache: dict = {}
    calls = fixture_api.generate_calls
    f = atk.features(target, x[:3], cond=cond, seeds=ids[:3], cache=cache)
    assert pickle.dumps(atk) == before and set(vars(atk)) == set(cls._param_names())   # no side effect
    again = atk.features(target, x[:3], cond=cond, seeds=ids[:3], cache=cache)
    assert all(np.array_equal(f[k], again[k]) for k in f)
    if name in ("ganleaks", "monte_carlo_set"):          # the generated set came from the cache the 2nd time
        assert fixture_api.generate_calls == calls + 1 and cache
    if name == "observers":
        assert any(k[0] == "feature_net" for k in cache)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_parameter_is_declared_and_checked(name):
    from diffmia.errors import DiffmiaError

    cls = ATTACKS[name]
    assert set(cls._parameter_constraints) == set(cls._param_names()), "declare a constraint per parameter"
    for param, constraint in cls._parameter_constraints.items():
        if constraint.ok(object()):                       # 'anything' (paths, devices, API objects)
            continue
        with pytest.raises(DiffmiaError, match=f"{name}: {param} must be"):
            cls(**{param: object()}).check_params()
        with pytest.raises(DiffmiaError, match=f"{name}: {param} must be"):
            cls(**{param: object()}).queries_per_sample()
    if cls.learned:
        with pytest.raises(DiffmiaError, match="learned attack: call fit"):
            cls().scores({})


# Every timestep parameter as a fraction of T (f -> step round(f*T) - 1) and as the index it means.
FRACTIONS = {"pia": ({"t": 0.2}, {"t": 199}), "pian": ({"t": 0.2}, {"t": 199}), "sima": ({"t": 0.2}, {"t": 199}),
             "noise_aggregation": ({"t": 0.2}, {"t": 199}), "loss": ({"timesteps": (0.2,)}, {"timesteps": (199,)}),
             "forensics": ({"grid_stride": 250, "t_trunc": 0.3, "time_truncations": (None, 0.1)},
                           {"grid_stride": 250, "t_trunc": 299, "time_truncations": (None, 99)}),
             "secmi": ({"t_sec": 0.021}, {"t_sec": 20}), "secmi_nns": ({"t_sec": 0.021}, {"t_sec": 20}),
             "forensics_graybox": ({"t_start": 0.021, "num_steps": 2, "t_trunc": 0.011},
                                   {"t_start": 20, "num_steps": 2, "t_trunc": 10}),
             "observers": ({"t_start": 0.021, "num_steps": 2}, {"t_start": 20, "num_steps": 2})}


def test_every_timestep_parameter_takes_a_fraction():
    from diffmia.attacks._timesteps import timestep_params

    have = {n for n, c in ATTACKS.items() if timestep_params(c())}
    assert have == set(FRACTIONS), "add the attack's timestep parameters to FRACTIONS"
    for n, (frac, _) in FRACTIONS.items():
        assert any(isinstance(v, float) or isinstance(v, tuple) and any(isinstance(u, float) for u in v)
                   for v in frac.values()), n


@pytest.mark.parametrize("name", sorted(FRACTIONS))
def test_a_fraction_gives_exactly_its_index(name, memorised_target, fixture_api, eval_set):
    x, is_member, ids = eval_set
    target = fixture_api if ATTACKS[name].access == "api" else memorised_target
    frac, idx = (ATTACKS[name](**p) for p in FRACTIONS[name])
    ff, fi = frac.features(target, x[:3], seeds=ids[:3]), idx.features(target, x[:3], seeds=ids[:3])
    assert set(ff) == set(fi) | {"num_train_timesteps"}
    assert all(np.array_equal(ff[k], fi[k]) for k in fi)
    assert frac.queries_per_sample() == idx.queries_per_sample()
    if not frac.learned:
        sf, si = frac.scores(ff), idx.scores(fi)
        assert list(sf) == list(si) and all(np.array_equal(sf[k], si[k]) for k in si)
