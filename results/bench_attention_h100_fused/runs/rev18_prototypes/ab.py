"""rev16_prototypes/ab_favor_kernels.py (same arguments), then each file's tuned picks: the three fastest candidates
per tuned kernel, so a prototype's best configuration can be read against the tree's."""
import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
g = runpy.run_path(os.path.join(here, "..", "rev16_prototypes", "ab_favor_kernels.py"), run_name="__main__")
for f, m in g["mods"].items():
    for name in dir(m):
        obj = getattr(m, name)
        if isinstance(obj, m._Tuned) and obj.trials:
            for key, tr in obj.trials.items():
                best = sorted(tr.items(), key=lambda kv: kv[1])[:3]
                print(f"  {os.path.basename(f)} {name} N={key[0]}: " + "; ".join(
                    f"{c.kwargs} w{c.num_warps} st{c.num_stages} {t:.3f}" for c, t in best))
sys.stdout.flush()
