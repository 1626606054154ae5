import json, sys, numpy as np
d = json.load(open(sys.argv[1]))
def choose(scores, cands):
    best = max(scores[c]["dice"] for c in cands)
    close = [c for c in cands if scores[c]["dice"] >= best - 0.005]
    bh = min(scores[c]["hd95"] for c in close)
    near = [c for c in close if scores[c]["hd95"] <= bh + 1.0]
    return min(near, key=lambda c: (scores[c]["components"], cands.index(c)))
TODAY = "none,min-size:100,min-size:1000,min-size:5000,near:50,near:30,near:20,near:10,largest".split(",")
def with_combo(v):
    out = []
    for c in TODAY:
        out.append(c)
        if c.startswith("near:"):
            out.append(f"{c}+min-size:{v}")
    return out
SETS = {"today": TODAY, "+combo100": with_combo(100), "+combo1000": with_combo(1000),
        "+both": [c for c in with_combo(100) if c not in TODAY] and sorted(set(with_combo(100)) | set(with_combo(1000)), key=lambda c: (with_combo(100)+with_combo(1000)).index(c))}
for mod in ("t2", "t1ce"):
    keys = [k for k in d if k.endswith("/" + mod)]
    print(f"{mod}: {len(keys)} runs")
    for name, cands in SETS.items():
        picks = [choose(d[k]["val"], cands) for k in keys]
        t = [d[k]["test_all"][p] for k, p in zip(keys, picks)]
        print(f"  {name:11s} dice {np.mean([x['dice'] for x in t]):.4f} hd95 {np.mean([x['hd95'] for x in t]):5.1f} comps {np.mean([x['components'] for x in t]):.2f}  picks {sorted(set(picks))}")
FINAL = []
for c in TODAY:
    FINAL.append(c)
    if c.startswith("near:"):
        FINAL += [f"{c}+min-size:100", f"{c}+min-size:1000"]
print("FINAL", FINAL)
for mod in ("t2", "t1ce"):
    keys = [k for k in d if k.endswith("/" + mod)]
    for name, cands in (("today", TODAY), ("final", FINAL)):
        picks = [choose(d[k]["val"], cands) for k in keys]
        t = [d[k]["test_all"][p] for k, p in zip(keys, picks)]
        print(f"{mod} {name:6s} dice {np.mean([x['dice'] for x in t]):.4f} hd95 {np.mean([x['hd95'] for x in t]):5.1f} comps {np.mean([x['components'] for x in t]):.2f} changed {sum(p != choose(d[k]['val'], TODAY) for k, p in zip(keys, picks))}/{len(keys)}")
