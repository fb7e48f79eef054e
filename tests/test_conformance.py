"""Every registered attack honours the shared contract (run over the ATTACKS registry, like
torchattacks' and scikit-learn's conformance suites). Separation/chance tests live in the per-paper files."""

import numpy as np
import pytest

from diffmia.attacks import ATTACKS

THREATS = {"white-box", "gray-box", "black-box", "no access"}


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


@pytest.mark.parametrize("name", sorted(n for n, c in ATTACKS.items() if c.access == "model"))
def test_model_attack_features_scores_contract(name, memorised_target, eval_set):
    x, is_member, ids = eval_set
    sel = np.r_[0:6, 32:38]                                # 6 members, 6 non-members
    atk = ATTACKS[name]()
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
