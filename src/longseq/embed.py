"""Export embeddings of a trained DNA encoder: per window (mean over its bases) and optionally per base.

``python -m longseq.embed --checkpoint <run>/checkpoints/last.ckpt --fasta genome.fa --out emb/``
(or ``python scripts/embed.py ...``). Any checkpoint written by ``train.py`` works (pretraining or
fine-tuning): the encoder is rebuilt from the model config saved in it (``longseq_model_config``)
and only its weights (``model.*``) are loaded; task heads are ignored.

Windows: without ``--bed`` every sequence is tiled from its start with ``--stride`` (default: the
window length, no overlap); with ``--bed`` each interval (``chrom start end [name]``, 0-based,
half-open) is tiled the same way and windows never cross its ends. The last window of a sequence or
interval is shorter: it is padded and masked, so padding never enters an embedding.

Output folder (format ``longseq-embeddings/1``)::

    manifest.json         format, checkpoint, FASTA, BED, seq_len, stride, d_model, dtype, pooling,
                          n_windows, per_base, model config, and the shard list in order
    windows.tsv           one row per window, in order: index, name, start, end (0-based, half-open),
                          length (= end - start), shard, row (within the shard), interval (BED name or .)
    pooled-00000.npy      (windows in shard, d_model): the mean of the final hidden states over the
                          window's real bases
    per_base-00000.npy    with --per-base: (windows in shard, seq_len, d_model); positions at or after
                          `length` are zeros (padding)

Window ``index`` lives in shard ``shard`` at row ``row``; :func:`load_embeddings` reads it all back.
Shards hold at most ``--shard-mb`` MiB each, so per-base exports of long genomes stay manageable.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from longseq.data.fasta import FastaReader, ensure_index
from longseq.data.tokenizer import PAD, encode, reverse_complement
from longseq.errors import UserError
from longseq.models.pretrained import MODEL_CONFIG_KEY, load_encoder, read_checkpoint

FORMAT = "longseq-embeddings/1"
COLUMNS = ("index", "name", "start", "end", "length", "shard", "row", "interval")


@dataclass(frozen=True)
class Window:
    name: str
    start: int
    end: int
    interval: str = "."


def read_regions(path: str | Path, lengths: dict[str, int]) -> list[tuple[str, int, int, str]]:
    """``(name, start, end, label)`` from a BED (``chrom start end [name]``); names and bounds checked."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"BED file not found: {p}")
    out: list[tuple[str, int, int, str]] = []
    missing: set[str] = set()
    with open(p) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) < 3:
                raise UserError(f"{p}:{lineno}: expected at least 3 tab-separated columns (chrom, start, end), got {len(cols)}")
            try:
                start, end = int(cols[1]), int(cols[2])
            except ValueError:
                raise UserError(f"{p}:{lineno}: start/end must be integers, got {cols[1]!r}, {cols[2]!r}") from None
            if cols[0] not in lengths:
                missing.add(cols[0])
                continue
            if not 0 <= start < end <= lengths[cols[0]]:
                raise UserError(f"{p}:{lineno}: interval {cols[0]}:{start}-{end} lies outside the sequence (length {lengths[cols[0]]})")
            out.append((cols[0], start, end, cols[3] if len(cols) > 3 and cols[3] else "."))
    if missing:
        raise UserError(f"{p} names sequences absent from the FASTA: {', '.join(sorted(missing))} (FASTA has: {', '.join(list(lengths)[:5])})")
    if not out:
        raise UserError(f"{p} holds no intervals")
    return out


def tile(regions: Sequence[tuple[str, int, int, str]], seq_len: int, stride: int) -> list[Window]:
    """Windows of at most ``seq_len`` bases every ``stride`` bases inside each region."""
    windows = []
    for name, start, end, label in regions:
        for s in range(start, end, stride):
            e = min(s + seq_len, end)
            windows.append(Window(name, s, e, label))
            if e == end:
                break
    return windows


class _Windows(Dataset):
    def __init__(self, reader: FastaReader, windows: list[Window], seq_len: int) -> None:
        self.reader, self.windows, self.seq_len = reader, windows, seq_len

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        w = self.windows[i]
        real = encode(self.reader.fetch(w.name, w.start, w.end))
        tokens = torch.full((self.seq_len,), PAD, dtype=torch.long)
        tokens[: real.numel()] = real
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[: real.numel()] = True
        return {"tokens": tokens, "padding_mask": mask}


def load_model(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the encoder of a ``train.py`` checkpoint from its saved config and load its weights."""
    import hydra

    p = Path(checkpoint).expanduser()
    ckpt = read_checkpoint(p, "--checkpoint", "point --checkpoint at a run's checkpoints/last.ckpt")
    config = ckpt.get(MODEL_CONFIG_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(config, dict) or "_target_" not in config:
        raise UserError(f"{p} has no saved model config ({MODEL_CONFIG_KEY}): only checkpoints written by train.py can be embedded")
    try:
        model = hydra.utils.instantiate(config, _convert_="all")
    except Exception as exc:  # noqa: BLE001 - a config this version cannot build
        raise UserError(f"{p}: cannot rebuild its model from the saved config ({type(exc).__name__}: {exc})") from exc
    load_encoder(model, p, config, checkpoint=ckpt)  # shape / attention mismatches are clear errors there
    return model.eval(), config


def _batches_on(loader: DataLoader, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    for batch in loader:
        yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def write_embeddings(
    checkpoint: str | Path,
    fasta: str | Path,
    out: str | Path,
    bed: str | Path | None = None,
    seq_len: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    per_base: bool = False,
    dtype: str = "float32",
    device: str = "auto",
    shard_mb: int = 256,
    rc_average: bool = False,
    num_workers: int = 0,
    index_cache_dir: str | Path = "data/.index_cache",
    progress: bool = True,
) -> Path:
    """Embed every window and write the output folder described in the module docstring; returns it."""
    from tqdm.auto import tqdm

    if dtype not in ("float32", "float16"):
        raise UserError(f"--dtype must be float32 or float16, got {dtype!r}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available")
    model, config = load_model(checkpoint)
    model.to(dev)
    seq_len = int(seq_len or config.get("max_seq_len") or 1024)
    stride = int(stride or seq_len)
    if seq_len <= 0 or stride <= 0 or batch_size <= 0:
        raise UserError(f"--seq-len, --stride and --batch-size must be positive (got {seq_len}, {stride}, {batch_size})")
    reader = FastaReader(ensure_index(fasta, index_cache_dir))
    regions = read_regions(bed, reader.lengths) if bed else [(n, 0, length, ".") for n, length in reader.lengths.items()]
    windows = tile(regions, seq_len, stride)

    d = int(model.d_model)
    np_dtype = np.dtype(dtype)
    per_window = d * np_dtype.itemsize * (1 + (seq_len if per_base else 0))
    shard_windows = max(1, (shard_mb << 20) // per_window)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("pooled-*.npy"), *out.glob("per_base-*.npy")]:
        old.unlink()  # a rerun into the same folder must not leave shards of the previous one

    loader = DataLoader(_Windows(reader, windows, seq_len), batch_size=batch_size, num_workers=num_workers)
    shards: list[dict[str, Any]] = []
    pooled_buf: list[np.ndarray] = []
    base_buf: list[np.ndarray] = []

    def flush() -> None:
        if not pooled_buf:
            return
        k = len(shards)
        entry = {"pooled": f"pooled-{k:05d}.npy", "per_base": None, "windows": sum(len(b) for b in pooled_buf)}
        np.save(out / entry["pooled"], np.concatenate(pooled_buf))
        if per_base:
            entry["per_base"] = f"per_base-{k:05d}.npy"
            np.save(out / entry["per_base"], np.concatenate(base_buf))
        shards.append(entry)
        pooled_buf.clear()
        base_buf.clear()

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        bar = tqdm(total=len(windows), unit="win", desc="embedding", disable=not progress, file=sys.stderr)
        for batch in _batches_on(loader, dev):
            tokens, mask = batch["tokens"], batch["padding_mask"]
            states = model(tokens, mask).float()  # (batch, seq, d)
            if rc_average:
                states = (states + model(reverse_complement(tokens), mask.flip(-1)).float().flip(1)) / 2
            states = states * mask.unsqueeze(-1)  # zeros on padding
            pooled = states.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
            # Fill shard by shard: a batch may straddle a shard boundary.
            pooled_np, states_np = pooled.cpu().numpy().astype(np_dtype), states.cpu().numpy().astype(np_dtype) if per_base else None
            lo = 0
            while lo < len(pooled_np):
                room = shard_windows - sum(len(b) for b in pooled_buf)
                hi = min(len(pooled_np), lo + room)
                pooled_buf.append(pooled_np[lo:hi])
                if per_base:
                    base_buf.append(states_np[lo:hi])
                lo = hi
                if sum(len(b) for b in pooled_buf) == shard_windows:
                    flush()
            bar.update(len(pooled_np))
        bar.close()
    flush()

    with open(out / "windows.tsv", "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for i, w in enumerate(windows):
            writer.writerow([i, w.name, w.start, w.end, w.end - w.start, i // shard_windows, i % shard_windows, w.interval])
    manifest = {
        "format": FORMAT,
        "checkpoint": str(Path(checkpoint).expanduser().resolve()),
        "fasta": str(Path(fasta).expanduser().resolve()),
        "bed": str(Path(bed).expanduser().resolve()) if bed else None,
        "seq_len": seq_len,
        "stride": stride,
        "d_model": d,
        "dtype": dtype,
        "pooling": "mean over real bases",
        "rc_average": rc_average,
        "per_base": per_base,
        "n_windows": len(windows),
        "windows_per_shard": shard_windows,
        "shards": shards,
        "model_config": config,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


@dataclass
class Embeddings:
    """An output folder read back: ``windows`` rows (dicts), ``pooled`` ``(n, d)``, per-base on demand."""

    folder: Path
    manifest: dict[str, Any]
    windows: list[dict[str, Any]]
    pooled: np.ndarray

    def per_base(self, index: int) -> np.ndarray:
        """``(length, d_model)`` states of window ``index`` (padding cut off); memory-mapped read."""
        if not self.manifest["per_base"]:
            raise UserError(f"{self.folder} was written without --per-base")
        w = self.windows[index]
        shard = np.load(self.folder / self.manifest["shards"][w["shard"]]["per_base"], mmap_mode="r")
        return np.asarray(shard[w["row"], : w["length"]])


def load_embeddings(folder: str | Path) -> Embeddings:
    """Read an output folder of :func:`write_embeddings`."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise UserError(f"{folder} is not a {FORMAT} folder (format: {manifest.get('format')})")
    with open(folder / "windows.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    ints = ("index", "start", "end", "length", "shard", "row")
    windows = [{k: int(v) if k in ints else v for k, v in r.items()} for r in rows]
    parts = [np.load(folder / s["pooled"]) for s in manifest["shards"]]
    pooled = np.concatenate(parts) if parts else np.zeros((0, manifest["d_model"]), dtype=manifest["dtype"])
    return Embeddings(folder, manifest, windows, pooled)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m longseq.embed",
        description="Write per-window (and optionally per-base) embeddings of a trained DNA encoder. "
        "Output format: see the module docstring (manifest.json, windows.tsv, pooled-*.npy, per_base-*.npy).",
    )
    parser.add_argument("--checkpoint", required=True, help="a train.py checkpoint, e.g. <run>/checkpoints/last.ckpt")
    parser.add_argument("--fasta", required=True, help="plain or bgzip FASTA")
    parser.add_argument("--out", required=True, help="output folder (created; old shards in it are replaced)")
    parser.add_argument("--bed", default=None, help="embed only these intervals (chrom start end [name])")
    parser.add_argument("--seq-len", type=int, default=None, help="window length (default: the model's max_seq_len)")
    parser.add_argument("--stride", type=int, default=None, help="distance between window starts (default: seq-len)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--per-base", action="store_true", help="also write per-base states (large: seq_len x d_model per window)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--shard-mb", type=int, default=256, help="maximum size of one .npy shard in MiB")
    parser.add_argument("--rc-average", action="store_true", help="average each base's state over both strands")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--index-cache-dir", default="data/.index_cache", help="where FASTA indexes are built")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        out = write_embeddings(
            args.checkpoint, args.fasta, args.out, args.bed, args.seq_len, args.stride, args.batch_size,
            args.per_base, args.dtype, args.device, args.shard_mb, args.rc_average, args.num_workers,
            args.index_cache_dir, progress=not args.quiet,
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    m = json.loads((out / "manifest.json").read_text())
    print(f"wrote {m['n_windows']} windows x {m['d_model']} ({len(m['shards'])} shards) to {out}")


if __name__ == "__main__":
    main()
