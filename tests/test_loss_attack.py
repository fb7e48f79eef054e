"""The loss attack on a memorised model (separation) and an untrained one (chance); determinism; queries."""

import numpy as np
import pytest
import torch

from diffmia import metrics
from diffmia.attacks import ATTACKS, LossAttack
from diffmia.errors import DiffmiaError


def test_separates_members_of_memorised_model(memorised_target, eval_set):
    x, is_member, ids = eval_set
    s = LossAttack(timesteps=(100,)).score(memorised_target, x, seeds=ids)
    assert s.shape == (len(x),) and np.isfinite(s).all()
    assert metrics.auc(is_member, s) >= 0.9


def test_chance_on_untrained_model(untrained_target, eval_set):
    x, is_member, ids = eval_set
    s = LossAttack(timesteps=(100,)).score(untrained_target, x, seeds=ids)
    assert abs(metrics.auc(is_member, s) - 0.5) < 0.2


def test_deterministic_batch_independent_and_counts_queries(memorised_target, eval_set):
    x, _, ids = eval_set
    atk = LossAttack(timesteps=(50, 200))
    memorised_target.queries = 0
    f = atk.features(memorised_target, x, seeds=ids)
    assert memorised_target.queries == 2 * len(x) == atk.queries_per_sample() * len(x)
    again = atk.features(memorised_target, x[5:9], seeds=ids[5:9])
    # the same noise per sample id in any batch; conv kernels may round differently per batch size
    assert np.allclose(f["l_50"][5:9], again["l_50"], rtol=1e-4)
    assert np.array_equal(f["l_50"], atk.features(memorised_target, x, seeds=ids)["l_50"])
    v = atk.scores(f)
    assert list(v) == ["loss", "loss[t=50]", "loss[t=200]"]
    assert np.allclose(v["loss"], -(f["l_50"] + f["l_200"]) / 2)


def test_registry_and_bad_input(memorised_target):
    assert ATTACKS["loss"] is LossAttack and LossAttack().get_params() == {"timesteps": [200], "seed": 0}
    with pytest.raises(DiffmiaError, match="timesteps"):
        LossAttack(timesteps=(1000,)).score(memorised_target, torch.zeros(2, 1, 32, 32))
    with pytest.raises(DiffmiaError, match="N x C x H x W"):
        LossAttack().score(memorised_target, torch.zeros(1, 32, 32))
    with pytest.raises(DiffmiaError, match="NaN"):
        LossAttack().score(memorised_target, torch.full((2, 1, 32, 32), float("nan")))
