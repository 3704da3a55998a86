"""How fast the static site renders and how large it is.

Part ``index``: synthetic runs of 10 and 10,000 latents (and ``--sizes`` more; three scorers with intervals,
chance and controls, seeded), written with ``write_site(..., pages=[])`` (index only), then opened from
file:// in headless Chromium (Debian's, via Selenium). The time is the page's own navigation timing
(``loadEventEnd``: HTML parsed, plotly.js and the data parsed, every figure drawn and the first 100 table rows
rendered), the median of ``--repeats`` cold loads; the 10-latent index is the baseline in the same run.

Part ``pages``: a real run (embedded SmolLM2 and SAE, top-tokens explainer, the embedding scorer: no LLM),
then the site with a page per latent: seconds and bytes per latent page.

    python benchmarks/dashboard.py --part index
    python benchmarks/dashboard.py --part pages --n-latents 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import sae_lens_autointerp as sai
from sae_lens_autointerp.report import load, write_site
from sae_lens_autointerp.report.browser import chromium_driver

WORDS = "month digit return bracket python token code list string number name file class error value".split()


def synthetic_run(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` finished latents scored by detection, fuzzing and embedding, with controls (seeded)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "results.jsonl", "w") as fh:
        for latent in range(n):
            scores, controls = {}, {}
            quality = rng.uniform(0.4, 1.0)
            for name, metric in (
                ("detection", "balanced_accuracy"),
                ("fuzzing", "balanced_accuracy"),
                ("embedding", "auc"),
            ):
                s = float(np.clip(quality + rng.normal(0, 0.08), 0, 1))
                c = float(np.clip(0.5 + rng.normal(0, 0.08), 0, 1))
                preds = [
                    {
                        "token_id": i,
                        "label": i < 5,
                        "prediction": bool(rng.random() < s),
                        "probability": float(rng.random()),
                    }
                    for i in range(10)
                ]
                scores[name] = {
                    "score": s,
                    "low": max(s - 0.1, 0),
                    "high": min(s + 0.1, 1),
                    "metric": metric,
                    "chance": 0.5,
                    "n_examples": 40,
                    "n_failed": int(rng.random() < 0.02),
                    "predictions": preds,
                    "error": None,
                }
                controls[name] = {
                    "score": c,
                    "low": max(c - 0.15, 0),
                    "high": min(c + 0.15, 1),
                    "metric": metric,
                    "chance": 0.5,
                }
            text = " ".join(rng.choice(WORDS, size=6))
            record = {
                "run_key": "k",
                "latent": latent,
                "stats": {"frequency": float(rng.uniform(1e-4, 0.05))},
                "explanation": {"latent": latent, "text": text, "explainer": "synthetic", "failed": False},
                "scores": scores,
                "controls": controls,
            }
            fh.write(json.dumps(record) + "\n")
    (folder / "run.json").write_text(
        json.dumps({"run_key": "k", "explainer": "synthetic", "scorers": ["detection", "fuzzing", "embedding"]})
    )


def load_seconds(driver, url: str) -> float:
    driver.get("about:blank")
    driver.get(url)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if errors:
        raise RuntimeError(f"console errors on {url}: {errors[:3]}")
    rows = driver.execute_script("return document.querySelectorAll('#latents tbody tr').length")
    if rows == 0:
        raise RuntimeError(f"{url}: the table rendered no rows")
    return float(driver.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd")) / 1000


def part_index(sizes: list[int], repeats: int, out: Path) -> None:
    driver = chromium_driver()
    base = None
    print(f"{'latents':>8} {'write s':>8} {'index MB':>9} {'load s (median)':>16} {'vs 10':>7}")
    try:
        for n in sizes:
            folder = out / f"run-{n}"
            synthetic_run(folder, n)
            result = load(folder)
            t = time.perf_counter()
            index = write_site(result, out / f"site-{n}", pages=[])
            write = time.perf_counter() - t
            times = [load_seconds(driver, index.as_uri()) for _ in range(repeats)]
            median = statistics.median(times)
            base = base or median
            print(f"{n:>8} {write:>8.2f} {index.stat().st_size / 1e6:>9.2f} {median:>16.3f} {median / base:>6.2f}x")
    finally:
        driver.quit()


def part_pages(n_latents: int, out: Path) -> None:
    from sae_lens_autointerp.cli import pick_latents

    sae, model = sai.embedded.load_sae(), sai.embedded.load_model()
    store = sae.autointerp.harvest(
        model, sai.embedded.load_corpus(), n_tokens=30_000, ctx_len=128, batch_size=16, progress=False
    )
    latents = pick_latents(store, n_latents)
    result = sae.autointerp.run(
        model,
        store=store,
        latents=latents,
        explainer="top-tokens",
        scorers=["embedding"],
        out_dir=out / "run",
        progress=False,
    )
    t = time.perf_counter()
    index = write_site(result, out / "site")
    seconds = time.perf_counter() - t
    pages = list((out / "site").glob("latents/*/*.html"))
    sizes = [p.stat().st_size for p in pages]
    print(
        f"{len(pages)} latent pages in {seconds:.2f} s: {seconds / len(pages) * 1000:.0f} ms per latent (with the index)"
    )
    print(f"bytes per latent page: median {statistics.median(sizes) / 1e3:.0f} kB, max {max(sizes) / 1e3:.0f} kB")
    print(
        f"assets (plotly.js, styles, script, once per site): {sum(f.stat().st_size for f in (out / 'site' / 'assets').iterdir()) / 1e6:.1f} MB"
    )
    print(f"index: {index.stat().st_size / 1e3:.0f} kB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["index", "pages"], default="index")
    p.add_argument(
        "--sizes", default="10,10000", help="latent counts of the synthetic runs (the first is the baseline)"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-latents", type=int, default=20)
    p.add_argument("--out", default=None, help="folder for the runs and sites (default: a temporary one)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sai-dashboard-"))
    print(f"writing under {out}", file=sys.stderr)
    if args.part == "index":
        part_index([int(s) for s in args.sizes.split(",")], args.repeats, out)
    else:
        part_pages(args.n_latents, out)


if __name__ == "__main__":
    main()
