"""Shared fixtures.

* ``memorised_target``: a 164k-parameter UNet2DModel that memorised 32 Fashion-MNIST members; committed
  under tests/fixtures/memorised, made by the command in its training.json (see tests/fixtures/README.md).
* ``dp_dir``: the same architecture and the same 32 members trained with DP-SGD (epsilon 1, delta 1e-5); committed
  under tests/fixtures/dp, made by the command in its training.json (see tests/fixtures/README.md).
* ``untrained_target``: the same architecture, randomly initialised (seeded): attacks must stay at chance.
* ``eval_set``: the fixture split's 32 members and the first 32 of its non-members, real Fashion-MNIST.
* ``sd_dir``: a tiny random Stable Diffusion folder (built from configs in seconds) with a split of 12 + 12
  Fashion-MNIST images and both captions files.
"""

from pathlib import Path

import pytest
import torch

# One torch thread per test process: the models here are tiny, so threads mostly wait at barriers, and
# `make test` runs two pytest-xdist workers on the 2 cores instead.
torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
MEMORISED = FIXTURES / "memorised"
DP = FIXTURES / "dp"


@pytest.fixture(scope="session")
def memorised_dir() -> Path:
    return MEMORISED


@pytest.fixture(scope="session")
def dp_dir() -> Path:
    return DP


@pytest.fixture(scope="session")
def memorised_target():
    from diffmia.targets import DiffusersTarget

    return DiffusersTarget.from_pretrained(MEMORISED, device="cpu")


@pytest.fixture(scope="session")
def untrained_target():
    from diffusers import DDPMScheduler, UNet2DModel

    from diffmia.targets import DiffusersTarget

    torch.manual_seed(0)
    unet = UNet2DModel.from_config(UNet2DModel.load_config(MEMORISED / "unet"))
    sched = DDPMScheduler.from_pretrained(MEMORISED / "scheduler")
    return DiffusersTarget(unet, sched.alphas_cumprod, device="cpu")


@pytest.fixture(scope="session")
def fmnist():
    from diffmia.data import load_fashion_mnist

    return load_fashion_mnist()


@pytest.fixture(scope="session")
def eval_set(fmnist):
    """(images [-1,1] N x 1 x 32 x 32, is_member bool [N], ids [N]) with 32 members + 32 non-members."""
    from diffmia.data import MembershipSplit, to_model_input

    split = MembershipSplit.load(MEMORISED / "split.json").limit(None, 32)
    data, is_member = split.select(fmnist)
    return to_model_input(data.images), is_member, data.ids


def reset_queries(target):
    target.queries = 0
    return target


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory, fmnist):
    """A tiny random SD folder with a split of Fashion-MNIST and both captions files."""
    import csv

    from diffmia.data import MembershipSplit
    from diffmia.data.captions import fashion_mnist_captions
    from diffmia.sd_parts import random_sd_folder

    out = tmp_path_factory.mktemp("tiny-sd")
    split = MembershipSplit.random(fmnist, 12, 12, seed=5)
    data, _ = split.select(fmnist)
    caps = fashion_mnist_captions(data.images, data.labels)
    repl = fashion_mnist_captions(data.images, data.labels, "replacement")
    folder = random_sd_folder(out, caps * 4)
    split.save(folder.split_path)
    for path, texts in ((folder.captions_csv, caps), (folder.replacement_captions_csv, repl)):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "caption"])
            w.writerows(zip(data.ids.tolist(), texts))
    return out


@pytest.fixture
def chunk_calls(monkeypatch) -> list:
    """The attack name of every feature chunk a run computes from now on (cached chunks are not computed)."""
    import diffmia.features as feats_mod

    calls = []
    real = feats_mod.Engine._one

    def spy(self, stage, *a, **k):
        calls.append(stage.attack.name)
        return real(self, stage, *a, **k)

    monkeypatch.setattr(feats_mod.Engine, "_one", spy)
    return calls
