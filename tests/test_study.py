"""``diffmia study``: a grid of defended targets on the same members, each attacked; resumable stage by stage."""

import json

import pytest

from diffmia.cli import main

TINY = """
out = "{out}"
attacks = ["loss"]
n_nonmembers = 12
n_boot = 20
[params.loss]
timesteps = [100]
[base]
n_members = 12
channels = [8, 16]
norm_num_groups = 4
steps = 6
batch_size = 4
warmup_steps = 1
checkpoint_every = 3
sample_grid = 0
threads = 1
[defences.none]
[defences.hflip]
hflip = true
[defences.members-6]
n_members = 6
"""


def _study(tmp_path, text=TINY):
    f = tmp_path / "study.toml"
    f.write_text(text.format(out=tmp_path / "study"))
    return f


def test_a_study_trains_attacks_and_tabulates_every_defence(tmp_path, chunk_calls, capsys):
    f = _study(tmp_path)
    assert main(["study", str(f), "--quiet"]) == 0
    out = tmp_path / "study"
    res = json.loads((out / "study.json").read_text())
    assert list(res["rows"]) == ["none", "hflip", "members-6"]
    split = json.loads((out / "split.json").read_text())
    for name, n in (("none", 12), ("hflip", 12), ("members-6", 6)):
        own = json.loads((out / "targets" / name / "split.json").read_text())
        assert own["members"] == split["members"][:n]                # the same members (a prefix)
        assert own["nonmembers"] == split["nonmembers"]              # and the same non-members
        assert json.loads((out / "targets" / name / "training.json").read_text())["steps"] == 6
        assert res["rows"][name]["attacks"]["loss"]["auc"] is not None
    cfg = json.loads((out / "targets" / "hflip" / "train_config.json").read_text())
    assert cfg["hflip"] is True and cfg["channels"] == [8, 16]
    table = (out / "STUDY.md").read_text()
    assert "| hflip | hflip=True | 12 | 6 / 6 |" in table and "| members-6 | n_members=6 | 6 | 3 / 6 |" in table
    assert (out / "study.png").stat().st_size > 1000
    n_chunks = len(chunk_calls)
    capsys.readouterr()
    assert main(["study", str(f), "--quiet"]) == 0                  # resumed: nothing trained or attacked again
    assert "[study]" not in capsys.readouterr().out and len(chunk_calls) == n_chunks


@pytest.mark.parametrize("extra, needle", [
    ("[defences.bad]\nhlfip = true\n", "[defences.bad] has no training option ['hlfip']"),
    ("colour = 1\n", "unknown keys ['colour']"),
])
def test_a_study_file_is_checked_before_any_work(tmp_path, capsys, extra, needle):
    text = TINY.replace('out = "{out}"', 'out = "{out}"\n' + extra) if "colour" in extra else TINY + extra
    f = _study(tmp_path, text)
    assert main(["study", str(f)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "study" / "targets").exists()


@pytest.mark.parametrize("preset", ["study_small.toml", "study_full.toml"])
def test_the_shipped_presets_are_valid_studies(preset):
    from pathlib import Path

    from diffmia.study import load_study

    cfg = load_study(Path(__file__).resolve().parent.parent / "benchmarks" / preset)
    assert {"none", "hflip", "cutout", "randaugment", "weight-decay", "dp-eps1", "dp-eps8", "dp-eps50",
            "long"} <= set(cfg.defences)
    assert [d["dp_epsilon"] for n, d in cfg.defences.items() if n.startswith("dp-")] == [50.0, 8.0, 1.0]


def test_jobs_train_targets_side_by_side_with_the_weights_they_get_alone(tmp_path, capsys):
    """--jobs 2 trains the targets in two processes; each target's weights are those of the sequential run
    (same recipe, same thread count), so the table is the same."""
    from safetensors.torch import load_file

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    assert main(["study", str(_study(one)), "--quiet"]) == 0
    assert main(["study", str(_study(two)), "--quiet", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 at a time, 1 thread(s) each" in out and out.count("[study] trained ") == 3
    for name in ("none", "hflip", "members-6"):
        w1 = load_file(one / "study" / "targets" / name / "unet" / "diffusion_pytorch_model.safetensors")
        w2 = load_file(two / "study" / "targets" / name / "unet" / "diffusion_pytorch_model.safetensors")
        assert w1.keys() == w2.keys() and all(w1[k].equal(w2[k]) for k in w1)
    r1 = json.loads((one / "study" / "study.json").read_text())["rows"]
    r2 = json.loads((two / "study" / "study.json").read_text())["rows"]
    assert {n: r["attacks"] for n, r in r1.items()} == {n: r["attacks"] for n, r in r2.items()}
    assert main(["study", str(_study(two)), "--jobs", "0"]) == 2
    assert "jobs must be a positive integer" in capsys.readouterr().err
