"""Scale and trust: the query planner, torchrun ranks, the content-keyed cache, corrupt chunks, worker
processes that die with their parent, non-finite answers."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffmia.cli import main
from diffmia.run import RunConfig, run_attacks
from diffmia.scores import Scores

ROOT = Path(__file__).resolve().parent.parent
MEMORISED = ROOT / "tests" / "fixtures" / "memorised"
SMALL = dict(device="cpu", n_boot=1, blind=False, progress=False, n_members=16, n_nonmembers=16)


# ----------------------------------------------------------------------------- the query planner
def test_shared_queries_forward_each_distinct_row_once(memorised_target):
    from diffmia.planner import SharedQueries

    x = torch.randn(6, 1, 32, 32)
    plain = memorised_target.eps(x, 100)
    q = SharedQueries(memorised_target)
    m0 = memorised_target.queries
    a = q.eps(x, 100)
    assert torch.equal(a, plain)                        # a miss is the request as it came: bit-identical
    b = q.eps(torch.cat([x[2:4], torch.randn(1, 1, 32, 32)]), 100)   # two known rows, one new
    c = q.eps(x, torch.full((6,), 200))                # same x, another timestep: new question
    assert torch.equal(b[:2], plain[2:4])
    assert q.queries == 6 + 3 + 6                      # what the attacks asked for
    assert memorised_target.queries - m0 == 6 + 1 + 6 == q.model_calls - m0
    assert not torch.equal(c, a)
    q.clear()
    q.eps(x, 100)
    assert memorised_target.queries - m0 == 19         # cleared: asked again


def test_a_multi_attack_run_costs_its_distinct_queries(tmp_path):
    attacks = ["secmi", "secmi_nns", "pia", "pian", "sima", "loss", "forensics"]
    params = {"secmi_nns": {"epochs": 2}}
    together = run_attacks(RunConfig(target=str(MEMORISED), out=str(tmp_path / "all"), attacks=attacks,
                                     params=params, **SMALL))
    r = together["attacks"]
    # SecMI-NNs reuses SecMI's whole trajectory; PIA's eps(x0, 0) is SecMI's first inversion query; PIAN
    # and SimA (t=0) share it too; the loss at t=100 is one of Data Forensics' twenty steps.
    calls = {a: r[a]["model_calls_per_sample"] for a in attacks}
    assert calls == {"secmi": 11, "secmi_nns": 0, "pia": 1, "pian": 1, "sima": 5, "loss": 1, "forensics": 19}
    declared = {a: r[a]["queries_per_sample"] for a in attacks}
    assert declared == {a: r[a]["measured_queries_per_sample"] for a in attacks}
    n = together["n_members"] + together["n_nonmembers"]
    assert together["queries"] == {"requested": sum(declared.values()) * n, "model_calls": 38 * n}
    for a in ("pia", "loss", "sima"):                  # the same scores as the attack alone
        alone = run_attacks(RunConfig(target=str(MEMORISED), out=str(tmp_path / a), attacks=[a], **SMALL))
        assert alone["attacks"][a]["model_calls_per_sample"] == declared[a]
        s1, s2 = (Scores.load(tmp_path / d / "scores" / f"{a}.npz") for d in (a, "all"))
        np.testing.assert_allclose(s1.primary, s2.primary, rtol=1e-6)


# ----------------------------------------------------------------------------- torchrun
def test_two_torchrun_ranks_equal_one_process_and_resume_at_another_world_size(tmp_path, request):
    args = ["attack", "--target", str(MEMORISED), "--attacks", "pia,loss", "--chunk-size", "8", "--device", "cpu",
            "--n-members", "16", "--n-nonmembers", "16", "--n-boot", "1", "--quiet", "--no-blind"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "diffmia", *args, "--out", str(tmp_path / "two")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("run folder:") == 1            # only rank 0 reports
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["world_size"] == 2
    ranks = [r for chunks in info["chunks"].values() for r in chunks.values()]
    assert len(ranks) == 2 * 4 and sorted(set(ranks)) == [0, 1]     # 4 chunks per attack, both ranks worked
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    for a in ("pia", "loss"):
        s1, s2 = (Scores.load(tmp_path / d / "scores" / f"{a}.npz") for d in ("one", "two"))
        np.testing.assert_array_equal(s1.ids, s2.ids)
        np.testing.assert_allclose(s1.primary, s2.primary, rtol=1e-5)
    calls = request.getfixturevalue("chunk_calls")       # one process resumes the 2-rank run: nothing to do
    assert main([*args, "--out", str(tmp_path / "two")]) == 0
    assert calls == []


# ----------------------------------------------------------------------------- the cache key
def test_cache_follows_the_weights_content_not_the_folder(tmp_path, request):
    from safetensors.torch import load_file, save_file

    target = tmp_path / "target"
    shutil.copytree(MEMORISED, target)
    cfg = dict(target=str(target), out=str(tmp_path / "run"), attacks=["loss"], chunk_size=16, **SMALL)
    first = run_attacks(RunConfig(**cfg))["attacks"]["loss"]["auc"]
    calls = request.getfixturevalue("chunk_calls")
    run_attacks(RunConfig(**cfg))
    assert calls == []                                   # same inputs: resumed, nothing recomputed
    moved = tmp_path / "moved"
    target.rename(moved)                                 # the same weights elsewhere: still cached
    run_attacks(RunConfig(**{**cfg, "target": str(moved)}))
    assert calls == []
    run_attacks(RunConfig(**{**cfg, "target": str(moved), "weights": "raw"}))   # EMA -> raw: recomputed
    assert calls == ["loss", "loss"]
    w = moved / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(w)
    sd = {k: v * 0.5 if v.ndim == 4 else v for k, v in sd.items()}   # weights changed in place
    save_file(sd, w)
    again = run_attacks(RunConfig(**{**cfg, "target": str(moved)}))["attacks"]["loss"]["auc"]
    assert calls == ["loss"] * 4 and again != first


def test_a_corrupt_or_stale_chunk_is_reported_and_recomputed(tmp_path, request, capsys):
    cfg = RunConfig(target=str(MEMORISED), out=str(tmp_path / "run"), attacks=["loss"], chunk_size=16, **SMALL)
    run_attacks(cfg)
    before = Scores.load(tmp_path / "run" / "scores" / "loss.npz").primary
    chunk = sorted((tmp_path / "run" / "features").glob("loss-*/chunk_*.npz"))[1]
    chunk.write_bytes(chunk.read_bytes()[:200])          # what a full disk or a killed copy leaves
    calls = request.getfixturevalue("chunk_calls")
    run_attacks(cfg)
    err = capsys.readouterr().err
    assert f"diffmia: warning: {chunk}: unreadable" in err and err.count("\n") == 1
    assert calls == ["loss"]                             # only that chunk
    np.testing.assert_array_equal(before, Scores.load(tmp_path / "run" / "scores" / "loss.npz").primary)


def test_a_chunk_computed_on_other_input_bytes_is_recomputed(tmp_path):
    from diffmia.attacks import ATTACKS
    from diffmia.features import Chunks, Engine, Stage, check_chunks, plan

    x = np.random.default_rng(0).standard_normal((8, 1, 32, 32)).astype(np.float32)
    ids = np.arange(8)
    st = Stage("loss-x", ATTACKS["loss"](), tmp_path / "loss-x")
    chunks = Chunks(x, ids, None, 4)
    eng = Engine(str(MEMORISED), device="cpu")
    for i, names in plan([st], chunks):
        eng.compute([st], chunks, i, names)
    assert check_chunks([st], chunks) == [] and plan([st], chunks) == []
    x2 = x.copy()
    x2[5] += 0.1                                         # one image of the second chunk changed
    lines = check_chunks([st], Chunks(x2, ids, None, 4))
    assert len(lines) == 1 and "chunk_0000004.npz: its input images, ids or prompts changed" in lines[0]
    assert plan([st], chunks) == [(1, ["loss-x"])]


# ----------------------------------------------------------------------------- processes and bad answers
def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_worker_processes_die_with_their_parent(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "diffmia", "attack", "--target", str(MEMORISED), "--attacks",
                          "forensics", "--workers", "2", "--chunk-size", "2", "--device", "cpu", "--no-blind",
                          "--quiet", "--n-boot", "1", "--out", str(tmp_path / "run")], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.glob("run/features/*/chunk_*.npz")):
        time.sleep(0.2)
    workers = [c for c in _children(p.pid) if "spawn" in (Path("/proc") / str(c) / "cmdline").read_text()]
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert len(workers) >= 2, "the run did not start its worker processes"
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)


def test_a_nan_answer_names_the_attack_sample_and_timestep(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    target = tmp_path / "nan"
    shutil.copytree(MEMORISED, target)
    w = target / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(w)
    name = next(k for k, v in sd.items() if k.startswith("conv_out") and v.ndim == 1)
    sd[name] = torch.full_like(sd[name], float("nan"))
    save_file(sd, w)
    code = main(["attack", "--target", str(target), "--attacks", "pia", "--out", str(tmp_path / "run"),
                 "--device", "cpu", "--quiet", "--no-blind", "--n-members", "16", "--n-nonmembers", "16"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    first = json.loads((MEMORISED / "split.json").read_text())["members"][0]
    assert f"pia: the model answered nan at timestep 0 for sample id {first}" in err
