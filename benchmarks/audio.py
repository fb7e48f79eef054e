"""The controlled mel-spectrogram vs waveform experiment (benchmarks/AUDIO.md).

Attacks both audio targets (trained by ``diffmia train-audio`` on the same corpus members) with PIA, PIAN,
SecMI and the loss attack on the same members and non-members and the same calibration half, and writes:
  <out>/{mel,wave}/           each target's run (metrics.json, per-sample scores, ROC figures)
  benchmarks/results/audio.json   both reports plus the paired differences
  benchmarks/audio_roc_loglog.png  test-half ROC of every attack on both targets, log-log
and prints the markdown tables of AUDIO.md.

The difference mel - wave of each attack's test AUC gets a paired, stratified bootstrap CI: both targets are
scored on the same test rows, so one resample of rows serves both AUCs.

    python benchmarks/audio.py --corpus runs/audio-corpus --mel runs/audio-mel --wave runs/audio-wave
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from diffmia import metrics
from diffmia.audio_attack import AUDIO_ATTACKS, attack_audio
from diffmia.data.audio_corpus import load_audio_corpus
from diffmia.report import chosen_variant
from diffmia.scores import Scores

HERE = Path(__file__).parent
# each attack at its paper default and at smaller t (fractions of T), chosen per target on the calibration half:
# the waveforms' standard deviation (0.11) is a quarter of the mel-spectrograms' (0.45), so under the same SDE a
# waveform is drowned by the noise at a smaller t
SWEEP = [0.01, 0.02, 0.05, 0.1, 0.2]
PARAMS = {"pia": {"t": SWEEP}, "pian": {"t": SWEEP}, "loss": {"timesteps": SWEEP}}


def paired_auc_difference(y, a, b, groups, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUC(a) - AUC(b) on the same rows, with a 95% paired bootstrap interval that resamples whole sentences
    (``groups``), members and non-members separately."""
    diffs = []
    for rows in metrics.bootstrap_rows(y, n_boot, seed, groups):
        diffs.append(metrics.auc(y[rows], a[rows]) - metrics.auc(y[rows], b[rows]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"difference": metrics.auc(y, a) - metrics.auc(y, b), "ci": [float(lo), float(hi)],
            "p_wave_at_least_mel": float(np.mean(np.asarray(diffs) <= 0))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--mel", required=True, help="the mel-spectrogram target folder")
    p.add_argument("--wave", required=True, help="the waveform target folder")
    p.add_argument("--out", default="runs/audio-attack")
    p.add_argument("--n-nonmembers", type=int, default=None)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. x4 for a rescaled waveform target)")
    a = p.parse_args(argv)
    tag = f"-{a.tag}" if a.tag else ""
    reports, scores = {}, {}
    for modality, target in (("mel", a.mel), ("wave", a.wave)):
        run = Path(a.out) / modality
        reports[modality] = attack_audio(target, a.corpus, run, params=PARAMS, n_nonmembers=a.n_nonmembers,
                                         n_boot=a.n_boot, seed=a.seed)
        scores[modality] = {n: Scores.load(run / f"{n}.npz") for n in reports[modality]["attacks"]}
    corpus = load_audio_corpus(a.corpus)
    text = dict(zip(corpus.ids.tolist(), corpus.text.tolist()))
    ids = scores["mel"]["pia"].ids
    sentences = np.unique([text[i] for i in ids.tolist()], return_inverse=True)[1]
    diffs = {}
    for n in AUDIO_ATTACKS:
        sm, sw = scores["mel"][n], scores["wave"][n]
        assert np.array_equal(sm.ids, sw.ids) and np.array_equal(sm.calibration, sw.calibration)
        test = ~sm.calibration
        vm = chosen_variant(reports["mel"], n, sm)[1][test]
        vw = chosen_variant(reports["wave"], n, sw)[1][test]
        diffs[n] = paired_auc_difference(sm.is_member[test], vm, vw, sentences[test], seed=a.seed)
    out = {"reports": reports, "mel_minus_wave_auc": diffs}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"audio{tag}.json").write_text(json.dumps(out, indent=1, default=float))
    figure(reports, scores, HERE / f"audio_roc_loglog{tag}.png")
    print(tables(reports, diffs))
    return 0


def figure(reports, scores, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharey=True)
    for ax, modality in zip(axes, ("mel", "wave")):
        n_neg = 1
        for i, n in enumerate(scores[modality]):
            sc = scores[modality][n]
            test = ~sc.calibration
            fpr, tpr, _ = metrics.roc(sc.is_member[test], chosen_variant(reports[modality], n, sc)[1][test])
            style = dict(color="grey", ls="--") if n == "blind" else dict(color=plt.get_cmap("tab10")(i))
            ax.plot(fpr, tpr, lw=1.4, **style,
                    label=f"{n} (AUC {reports[modality]['attacks'][n]['auc']:.3f})")
            n_neg = int((~sc.is_member[test]).sum())
        lo = 1.0 / n_neg
        grid = np.logspace(np.log10(lo), 0, 100)
        ax.plot(grid, grid, "k:", lw=0.8, label="chance")
        ax.set(xscale="log", yscale="log", xlim=(lo, 1), ylim=(lo, 1.02), xlabel="false positive rate (test half)",
               title=f"{modality} target ({reports[modality]['n_members']} members"
                     + (f", samples x {reports[modality]['scale']:g})" if reports[modality]["scale"] != 1 else ")"))
        ax.axvline(0.01, color="grey", lw=0.5)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("true positive rate (test half)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tables(reports, diffs) -> str:
    f = metrics.fmt
    lines = ["| attack | mel AUC [95% CI] | mel TPR@1%FPR | wave AUC [95% CI] | wave TPR@1%FPR | mel - wave AUC [95% CI] |",
             "|---|---|---|---|---|---|"]
    for n in AUDIO_ATTACKS:
        m, w, d = reports["mel"]["attacks"][n], reports["wave"]["attacks"][n], diffs[n]
        lines.append(f"| {n} | {f(m['auc'])} [{f(m['auc_ci'][0], 2)}, {f(m['auc_ci'][1], 2)}] | "
                     f"{f(m['tpr_at_1pct_fpr'])} | {f(w['auc'])} [{f(w['auc_ci'][0], 2)}, {f(w['auc_ci'][1], 2)}] | "
                     f"{f(w['tpr_at_1pct_fpr'])} | {d['difference']:+.3f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] |")
    b = reports["mel"]["attacks"].get("blind")
    if b:            # the same rows and log-mels on both targets: one number
        lines.append(f"| blind (never queries) | {f(b['auc'])} [{f(b['auc_ci'][0], 2)}, {f(b['auc_ci'][1], 2)}] | "
                     f"{f(b['tpr_at_1pct_fpr'])} | same rows, same scores | | |")
    sh = reports["mel"]["shift"]
    lines += ["", f"Shift test (log-mels, one rendering per sentence): MMD^2 {sh['mmd2']:.2e}, permutation p = "
                  f"{sh['p_value']:.3f}; warnings: {reports['mel']['warnings'] + reports['wave']['warnings'] or 'none'}"]
    lines += ["", "| target | attack | variant (chosen on calibration) | empirical eps >= | queries/sample | s |",
              "|---|---|---|---|---|---|"]
    for modality in ("mel", "wave"):
        for n, r in reports[modality]["attacks"].items():
            eps = r["empirical_epsilon"]["lower_bound"]
            lines.append(f"| {modality} | {n} | {r['variant']} | {f(float(eps), 2)} | "
                         f"{r['queries_per_sample']} | {r['seconds']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
