"""Offline screen of the post-processing candidates on finished runs (binary targets).

Every network of each run predicts its validation and test cases (stored slice frame, threshold
0.5); the validation choice is made twice, with an old and a new candidate set (default: the
candidates that existed before ``near:D``, and today's ``CANDIDATES``), and both choices are
scored on the test cases. Test cases never enter a choice.

    python benchmarks/postprocess_screen.py RUN [RUN ...] --out postprocess-screen.json \
        [--old none,largest,...] [--new none,largest,...]
"""
import json, sys
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from semicml.data.store import SliceStore
from semicml.engine.validation import val_probabilities
from semicml.hardware import resolve_device, resolve_precision
from semicml.inference.weights import load_weights
from semicml.inference.postprocess import apply_postprocess, choose_postprocess, CANDIDATES
from semicml.evaluation.metrics import case_metrics
torch.set_num_threads(1)
args = sys.argv[1:]
OPTIONS = ("--out", "--old", "--new")
def option(name, default):
    return args[args.index(name) + 1] if name in args else default
out_path = Path(option("--out", "postprocess-screen.json"))
OLD = tuple(option("--old", "none,min-size:100,min-size:1000,min-size:5000,largest").split(","))
EXT = tuple(option("--new", ",".join(CANDIDATES)).split(","))
runs = [a for i, a in enumerate(args) if a not in OPTIONS and (i == 0 or args[i - 1] not in OPTIONS)]
res = {}
for run in map(Path, runs):
    info = json.loads((run / "run.json").read_text())
    store = SliceStore(info["store"]); dev = resolve_device("cpu")
    nets = {m: load_weights(run, m, dev)[0] for m in info["modalities"]}
    P = {}
    for part in ("val", "test"):
        P[part] = val_probabilities(store, info["splits"][part], nets, dev, resolve_precision("fp32", dev))
    for m in nets:
        vp, vl, vs = [p[:, 0] for p in P["val"][0][m]], [y[:, 0] for y in P["val"][1]], P["val"][2]
        old = choose_postprocess(vp, vl, vs, candidates=OLD)["choice"]
        newc = choose_postprocess(vp, vl, vs, candidates=EXT)
        new = newc["choice"]
        tp, tl, ts = [p[:, None, 0] for p in P["test"][0][m]], P["test"][1], P["test"][2]
        def test(spec):
            rows = [case_metrics(apply_postprocess(p[:, 0] > 0.5, spec, sp), y[:, 0], sp) for p, y, sp in zip(tp, tl, ts)]
            return {k: float(np.mean([r[k] for r in rows])) for k in ("dice", "hd95", "components")}, rows
        to, ro = test(old); tn, rn = test(new)
        allc = {c: test(c)[0] for c in dict.fromkeys(OLD + EXT)}
        res[f"{run}/{m}"] = {"old": old, "new": new, "val": newc["candidates"], "test_old": to, "test_new": tn, "test_all": allc}
        print(run, m, "old", old, {k: round(v, 3) for k, v in to.items()}, "| new", new, {k: round(v, 3) for k, v in tn.items()}, flush=True)
        print("   test per candidate:", {c: (round(v["dice"], 3), round(v["hd95"], 1), v["components"]) for c, v in allc.items()}, flush=True)
        print("   val  per candidate:", {c: (round(v["dice"], 3), round(v["hd95"], 1), v["components"]) for c, v in newc["candidates"].items()}, flush=True)
out_path.write_text(json.dumps(res, indent=1))
