"""Which K ``alps label --clusters auto`` picks on the label_quality sets, and the ceilings at that K.

Reads the mask tables that ``benchmarks/label_quality.py --work DIR`` caches under ``DIR`` (trees and
medical sets, LiteMedSAM and SLIC masks), runs phase B's K choice on each (``choose_clusters``, default
candidates, seed 0) and scores mini-batch fits with ``sam`` features at the chosen K, at the set's
default K and at 92 (seeds 0, 1, 2): mask ceiling, cluster ceiling and majority IoU of the
foreground class, as in label_quality's ablation. Prints one JSON document.

    python benchmarks/label_quality_auto_k.py --work /tmp/lq/work --out label_quality_auto_k.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from alps.labeling.cluster import TableFeatures
from alps.labeling.config import DEFAULT_CANDIDATES
from alps.labeling.stages import choose_clusters

sys.path.insert(0, str(Path(__file__).parent))
import label_quality as lq

SETS = (("trees", ("not tree", "tree"), 46), ("medical", ("not lesion", "lesion"), 16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="label_quality.py's --work directory")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {"candidates": list(DEFAULT_CANDIDATES), "sets": {}}
    for name, classes, k_default in SETS:
        data = lq.LabelSet(name, args.work / name, classes)
        for masks in ("sam", "slic"):
            out = data.root / f"label_{masks}"
            tables = sorted((out / "tables").glob("*.parquet"))
            if not tables:
                raise SystemExit(f"no mask tables under {out}: run label_quality.py --work {args.work} first")
            start = time.perf_counter()
            k, choice, _notes = choose_clusters(TableFeatures.of(tables), DEFAULT_CANDIDATES, 0)
            seconds = time.perf_counter() - start
            images = lq.load_images(data, out, ["sam"], masks)
            ceilings = {}
            for kk in sorted({k, k_default, 92}):
                runs = [lq.score(images, "sam", kk, seed, 0, 1) for seed in (0, 1, 2)]
                s = lq.summarise(runs)
                ceilings[kk] = {key: s[key] for key in ("mask_ceiling", "cluster_ceiling", "iou_majority")}
            entry = {
                "chosen": k,
                "choose_seconds": round(seconds, 1),
                "n_masks": sum(len(i.clusters) for i in images),
                "table": [
                    (r["k"], round(r["inertia"], 2), round(r["silhouette"], 4)) for r in choice["candidates"]
                ],
                "ceilings": ceilings,
            }
            result["sets"][f"{name}/{masks}"] = entry
            print(json.dumps({f"{name}/{masks}": entry}), file=sys.stderr, flush=True)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
