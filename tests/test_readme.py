"""The README says what the code is: its results table comes from benchmarks/results.json, its layout
section names every module, and it cites no file the repository lacks."""

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _table_script():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_table_is_generated_from_results_json():
    mod = _table_script()
    rows = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    assert mod.extract(README) == mod.render(rows), "run: python benchmarks/readme_table.py --write"
    # and the rendering reads the numbers it claims: every attack's AUC appears in its line (on the pixel
    # target, the extended split's rows replace the original split's, except for attacks it left out)
    shown = "fmnist-ddpm-16k" if any(r.get("config") == "fmnist-ddpm-16k" for r in rows) else "fmnist-ddpm"
    on_shown = {r["attack"] for r in rows if r.get("config", "fmnist-ddpm") == shown}
    table = mod.extract(README)
    for r in rows:
        pixel = r.get("target", "fmnist-ddpm") == "fmnist-ddpm"
        if pixel and r.get("config", "fmnist-ddpm") != shown and r["attack"] in on_shown:
            continue
        assert re.search(rf"(^|[| ]){r['attack']}[| ][^\n]*{r['auc']:.3f}", table, re.M), (r["attack"], r.get("config"))


def test_layout_section_names_every_module():
    layout = README.split("## Layout", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    for path in sorted((ROOT / "diffmia").rglob("*.py")):
        rel = path.relative_to(ROOT / "diffmia")
        if rel.name in ("__init__.py", "__main__.py"):
            continue
        if len(rel.parts) == 1:
            assert re.search(rf"^\s+{re.escape(rel.name)}\s", layout, re.M), rel
        else:
            assert f"{rel.parts[0]}/" in layout and rel.name in layout, rel


def test_no_reference_to_files_the_repository_lacks():
    for path in [ROOT / "README.md", *(ROOT / "diffmia").rglob("*.py"), *(ROOT / "docs").rglob("*.md")]:
        text = path.read_text()
        assert not re.search(r"\bSPEC\b", text) and "../shared" not in text, path
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_python_example_runs(monkeypatch, capsys):
    """The README's Python section, executed as written (on the shipped reference target)."""
    import torch

    code = README.split("## Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    with torch.random.fork_rng():
        exec(compile(code, "README.md", "exec"), {})
    auc, tpr = capsys.readouterr().out.split(maxsplit=1)
    assert 0.75 < float(auc) <= 1.0                       # PIA on 128 + 128 reference samples


def test_readme_audio_numbers_are_the_benchmark_results():
    """The audio paragraph quotes benchmarks/results/audio*.json (written by benchmarks/audio.py and
    audio_seeds.py): rerunning the experiment without updating the README fails here."""
    res = ROOT / "benchmarks" / "results"
    raw = json.loads((res / "audio.json").read_text())
    x4 = json.loads((res / "audio-x4.json").read_text())
    seeds = json.loads((res / "audio-seeds.json").read_text())
    longest = max(json.loads((res / "audio-seeds-long.json").read_text())["seeds"], key=lambda r: r["epochs"]["wave"])
    pia = lambda r, m: r["reports"][m]["attacks"]["pia"]  # noqa: E731
    w = pia(raw, "wave")
    d = raw["mel_minus_wave_auc"]["pia"]
    for phrase in (f"PIA AUC {pia(raw, 'mel')['auc']:.3f} vs {w['auc']:.3f} [{w['auc_ci'][0]:.2f}, {w['auc_ci'][1]:.2f}]",
                   f"(difference {d['difference']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}])",
                   f"loss attack {raw['reports']['mel']['attacks']['loss']['auc']:.3f} vs "
                   f"{raw['reports']['wave']['attacks']['loss']['auc']:.3f}",
                   f"over {['no', 'one', 'two', 'three', 'four', 'five'][len(seeds['seeds'])]} training seeds",
                   f"PIA difference {seeds['summary']['pia']['difference_mean']:+.2f} +- "
                   f"{seeds['summary']['pia']['difference_sd']:.2f}",
                   f"PIA reaches {pia(x4, 'wave')['auc']:.3f} [{pia(x4, 'wave')['auc_ci'][0]:.2f}, "
                   f"{pia(x4, 'wave')['auc_ci'][1]:.2f}]",
                   f"longer ({longest['epochs']['wave']:,} epochs), the waveform model still leaks less (loss attack "
                   f"{longest['wave']['loss']['auc']:.3f})"):
        assert phrase in " ".join(README.split()), phrase
    assert all(min(r["mel"][n]["auc"] - r["wave"][n]["auc"] for r in seeds["seeds"]) > 0
               for n in ("pia", "pian", "secmi", "loss"))            # "leads under every attack in every seed"
    assert longest["wave"]["loss"]["auc"] < longest["mel"]["loss"]["auc"] and longest["wave"]["pia"]["auc"] < 0.5
