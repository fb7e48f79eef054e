"""Training the Fashion-MNIST feature network of the sample-quality measure (``diffmia train-features``).

The network and the KID live in ``quality.py``; this module only makes the shipped weights (seeded, bit-identical
when rerun) and measures the network's accuracy.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .quality import (FEATURES_FILE, FeatureNet, _load, _test_features, features, file_sha256, kid,
                      record_path)


@torch.inference_mode()
def accuracy(net: FeatureNet, data, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``net`` on a labelled Dataset."""
    from .data import to_model_input

    device = next(net.parameters()).device
    hits = 0
    for i in range(0, len(data), batch_size):
        pred = net(to_model_input(data.images[i:i + batch_size]).to(device)).argmax(1).cpu().numpy()
        hits += int((pred == data.labels[i:i + batch_size]).sum())
    return hits / len(data)


def train_feature_net(out=FEATURES_FILE, epochs: int = 4, seed: int = 0, batch_size: int = 128, lr: float = 2e-3,
                      data_root=None, threads: int | None = None, command: str | None = None,
                      progress: bool = True) -> dict:
    """Train :class:`FeatureNet` on the Fashion-MNIST train set (Adam, cosine learning rate, random horizontal
    flips; batches and flips seeded), on the CPU; write the weights (safetensors) and a JSON record beside them
    (test accuracy, command, seconds, sha256, the member gap of the module docstring). Returns the record."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from .data import load_fashion_mnist, to_model_input
    from .provenance import git_commit, hardware, library_versions

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    train, test = load_fashion_mnist(data_root, "train"), load_fashion_mnist(data_root, "test")
    torch.manual_seed(seed)
    net = FeatureNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    total = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    g = torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(train.labels)
    net.train()
    bar = tqdm(total=total, disable=not progress, desc="train-features")
    for epoch in range(epochs):
        perm = np.random.default_rng([seed, epoch]).permutation(len(train))
        for i in range(0, len(train), batch_size):
            idx = perm[i:i + batch_size]
            x = to_model_input(train.images[idx])
            x = torch.where((torch.rand(len(idx), generator=g) < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
            loss = torch.nn.functional.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    net.eval()
    seconds = time.perf_counter() - start
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out)
    _load.cache_clear()
    _test_features.cache_clear()
    test_acc = accuracy(net, test)
    # the member gap: do images the network was trained on look different to it than unseen ones?
    tf = features(to_model_input(test.images), net)
    seen = features(to_model_input(train.images[:2000]), net)
    record = {
        "file": out.name, "sha256": file_sha256(out), "bytes": out.stat().st_size,
        "test_accuracy": test_acc, "train_accuracy_first_10000": accuracy(net, train.subset(train.ids[:10000])),
        "command": command, "seconds": round(seconds, 1), "epochs": epochs, "seed": seed, "batch_size": batch_size,
        "lr": lr, "parameters": sum(p.numel() for p in net.parameters()), "feature_dim": net.head.in_features,
        "trained_on": f"fashion-mnist:train ({len(train)} images)", "evaluated_on": f"fashion-mnist:test ({len(test)})",
        "member_gap": {"kid_mean_std_train_2000_vs_test_8000": kid(tf[2000:], seen, 20, 1000),
                       "kid_mean_std_test_2000_vs_test_8000": kid(tf[2000:], tf[:2000], 20, 1000)},
        "hardware": hardware(torch.device("cpu")), "versions": library_versions(), "git_commit": git_commit(),
    }
    record_path(out).write_text(json.dumps(record, indent=1) + "\n")
    return record
