"""Mel vs waveform over several training seeds (benchmarks/AUDIO.md, "Training seeds").

Each seed is one pair of targets trained by ``diffmia train-audio --seed S`` on the same corpus members (the
seed changes the initial weights, the batches and the training noise, not the members). Every pair is attacked
as in ``benchmarks/audio.py`` (same rows, calibration half and variant sweep); this prints, per attack, each
seed's test AUCs and their mel - wave difference, and the mean and standard deviation over seeds, and writes
``benchmarks/results/audio-seeds[-TAG].json``. The spread over seeds is the training randomness that one
seed's bootstrap CI (which resamples sentences, not training runs) does not show.

    python benchmarks/audio_seeds.py --corpus runs/audio-corpus \\
        --mel runs/audio/mel runs/audio-seeds/mel-s1 runs/audio-seeds/mel-s2 \\
        --wave runs/audio/wave runs/audio-seeds/wave-s1 runs/audio-seeds/wave-s2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from audio import PARAMS            # benchmarks/audio.py: the same variant sweep
from diffmia.audio_attack import AUDIO_ATTACKS, attack_audio

HERE = Path(__file__).parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--mel", nargs="+", required=True, help="mel target folders, one per seed")
    p.add_argument("--wave", nargs="+", required=True, help="waveform target folders, in the same seed order")
    p.add_argument("--out", default="runs/audio-seeds-attack")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--tag", default="")
    a = p.parse_args(argv)
    if len(a.mel) != len(a.wave):
        p.error(f"--mel has {len(a.mel)} folders and --wave {len(a.wave)}: give one of each per seed")
    rows = []
    for k, (mel, wave) in enumerate(zip(a.mel, a.wave)):
        rec = {m: json.loads((Path(d) / "training.json").read_text()) for m, d in (("mel", mel), ("wave", wave))}
        if rec["mel"]["seed"] != rec["wave"]["seed"]:
            p.error(f"{mel} and {wave} were trained with different seeds")
        row = {"seed": rec["mel"]["seed"], "mel": mel, "wave": wave, "epochs": {m: r["epochs"] for m, r in rec.items()},
               "final_loss": {m: r["final_loss"] for m, r in rec.items()}, "label": f"seed {rec['mel']['seed']}"}
        for modality, target in (("mel", mel), ("wave", wave)):
            r = attack_audio(target, a.corpus, Path(a.out) / Path(target).name, params=PARAMS, n_boot=a.n_boot)
            row[modality] = {n: {"auc": r["attacks"][n]["auc"], "auc_ci": r["attacks"][n]["auc_ci"],
                                 "tpr_at_1pct_fpr": r["attacks"][n]["tpr_at_1pct_fpr"],
                                 "variant": r["attacks"][n]["variant"]} for n in (*AUDIO_ATTACKS, "blind")}
        rows.append(row)
        print(f"{row['label']}: " + ", ".join(f"{n} {row['mel'][n]['auc']:.3f} vs {row['wave'][n]['auc']:.3f}"
                                                  for n in AUDIO_ATTACKS), flush=True)
    if len({r["epochs"]["wave"] for r in rows}) > 1:        # e.g. one waveform target trained for longer
        for r in rows:
            r["label"] += f", wave {r['epochs']['wave']} epochs"
    summary = {}
    for n in AUDIO_ATTACKS:
        m = np.array([r["mel"][n]["auc"] for r in rows])
        w = np.array([r["wave"][n]["auc"] for r in rows])
        d = m - w
        sd = (lambda x: float(x.std(ddof=1)) if len(x) > 1 else None)  # noqa: E731
        summary[n] = {"mel_mean": float(m.mean()), "mel_sd": sd(m), "wave_mean": float(w.mean()), "wave_sd": sd(w),
                      "difference_mean": float(d.mean()), "difference_sd": sd(d),
                      "difference_min": float(d.min()), "difference_max": float(d.max())}
    tag = f"-{a.tag}" if a.tag else ""
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"audio-seeds{tag}.json").write_text(json.dumps({"seeds": rows, "summary": summary},
                                                                        indent=1, default=float))
    print(table(rows, summary))
    return 0


def table(rows, summary) -> str:
    head = " | ".join(f"{r['label']}: mel / wave (diff)" for r in rows)
    lines = [f"| attack | {head} | mean mel / wave | mel - wave mean +- sd [min, max] |",
             "|---" * (len(rows) + 3) + "|"]
    for n, s in summary.items():
        cells = " | ".join(f"{r['mel'][n]['auc']:.3f} / {r['wave'][n]['auc']:.3f} ({r['mel'][n]['auc'] - r['wave'][n]['auc']:+.3f})"
                           for r in rows)
        pm = f" +- {s['difference_sd']:.3f}" if s["difference_sd"] is not None else ""
        lines.append(f"| {n} | {cells} | {s['mel_mean']:.3f} / {s['wave_mean']:.3f} | "
                     f"{s['difference_mean']:+.3f}{pm} [{s['difference_min']:+.3f}, {s['difference_max']:+.3f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
