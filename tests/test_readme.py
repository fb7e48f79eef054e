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
