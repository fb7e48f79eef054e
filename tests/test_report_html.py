"""report.html: one self-contained page per run (figures inlined, nothing fetched), its sections only when their
data exists, every text escaped; and a headless Chromium renders it without console errors."""

import base64
import re
import shutil
import subprocess

import numpy as np
import pytest

from diffmia.report_html import write_html
from diffmia.run import RunConfig, run_attacks
from diffmia.scores import Scores

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"')


@pytest.fixture(scope="module")
def run(tmp_path_factory, memorised_dir):
    """A real small run: loss sweeps two timesteps (so it has a sweep), pia has one variant, blind is added."""
    out = tmp_path_factory.mktemp("html-run")
    report = run_attacks(RunConfig(target=str(memorised_dir), out=str(out), attacks=["loss", "pia"],
                                   params={"loss": {"timesteps": [50, 200]}}, n_boot=50, device="cpu",
                                   progress=False))
    scores = {n: Scores.load(out / "scores" / f"{n}.npz") for n in report["attacks"]}
    return out, report, scores


def images(page: str) -> dict[str, bytes]:
    return {alt: base64.b64decode(data) for data, alt in IMG.findall(page)}


def test_run_writes_a_self_contained_page(run, memorised_dir):
    out, report, _ = run
    page = (out / "report.html").read_text()
    imgs = images(page)
    expected = {"ROC", "ROC log-log", "score histogram loss", "score histogram pia", "score histogram blind",
                "sweep loss", "samples from the target"}
    assert set(imgs) == expected
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in imgs.values())
    assert imgs["samples from the target"] == (memorised_dir / "samples.png").read_bytes()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for name in ("loss", "pia", "blind"):
        assert f"<td>{name}</td>" in page
    assert "Blind baseline" in page and "Shift diagnostic" in page and "<h2>Cost</h2>" in page
    assert f"AUC {report['attacks']['pia']['auc']:.3f}" in page           # the interpretation sentence
    assert report["warnings"] == [] and "Warning:" not in page


def test_warnings_shown_and_every_text_escaped(run, tmp_path):
    _, report, scores = run
    bad = "<script>alert(1)</script> & \"quotes\""
    rep = {**report, "target": bad, "warnings": ["members differ from non-members", bad]}
    page = write_html(tmp_path, rep, scores).read_text()
    assert page.count("Warning:") == 2 and "members differ from non-members" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;" in page


def test_sections_only_when_their_data_exists(run, tmp_path, monkeypatch):
    _, report, scores = run
    bare = {k: v for k, v in report.items() if k not in ("shift", "warnings")}
    bare["attacks"] = {n: {k: v for k, v in r.items() if k != "sweep"} for n, r in report["attacks"].items()}
    page = write_html(tmp_path, bare, {}, samples=tmp_path / "missing.png").read_text()
    for absent in ("Sweeps", "Score histograms", "ROC", "Samples from the target", "Shift diagnostic", "<img"):
        assert absent not in page, absent
    assert "<td>loss</td>" in page and "<h2>Cost</h2>" in page    # the tables need no scores
    # histograms (and ROC) use the variant the report chose, else the scores' first one
    import diffmia.report_html as rh

    drawn, real = [], rh.histogram_figure
    monkeypatch.setattr(rh, "histogram_figure",
                        lambda name, variant, *a: drawn.append(variant) or real(name, variant, *a))
    attacks = {n: dict(r) for n, r in report["attacks"].items()}
    attacks["loss"]["variant"] = "loss[t=50]"        # a choice other than the first variant is honoured
    del attacks["pia"]["variant"]                     # no choice: the first one
    assert list(scores["loss"].variants)[0] != "loss[t=50]"
    write_html(tmp_path, {**report, "attacks": attacks}, scores)
    assert drawn == ["loss[t=50]", "pia", "blind"]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium binary: `make test` installs the Debian package chromium (apt-get install chromium); "
                    "install Chromium to run this test")
    return exe


def render(exe: str, html_path, png_path, profile) -> str:
    """Screenshot ``html_path`` headless; returns the browser's console lines (`--enable-logging=stderr` prints
    every console message, error or not, as ``...:CONSOLE...`` on stderr)."""
    r = subprocess.run([exe, "--headless=new", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
                        "--enable-logging=stderr", "--v=0", f"--screenshot={png_path}", "--window-size=1200,2000",
                        html_path.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return "\n".join(line for line in r.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line)


def test_chromium_renders_the_report_without_console_errors(run, tmp_path):
    exe = chromium()
    out, _, _ = run
    # the capture itself works: a page with a console error and an uncaught exception is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('boom'); nope();</script></body></html>")
    assert "boom" in render(exe, bad, tmp_path / "bad.png", tmp_path / "profile-bad")

    shot = tmp_path / "report.png"
    console = render(exe, out / "report.html", shot, tmp_path / "profile")
    assert console == "", console                     # the page has no script: any console line is an error
    import matplotlib.image

    px = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    assert px.shape[:2] == (2000, 1200)
    assert px.std() > 20 and len(np.unique(px.reshape(-1, 3), axis=0)) > 50     # not blank, not one colour
    # the inlined figures were decoded: the members' histogram bars (tab:red at alpha 0.55 over white) are drawn,
    # a colour that no text or table of the page has
    assert (np.abs(px - [233, 136, 137]).max(axis=-1) <= 12).sum() > 500
