"""The embedding writer: coordinates, shapes, shards, round trip against the model, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from longseq.data.tokenizer import PAD, encode
from longseq.embed import load_embeddings, main, write_embeddings
from longseq.errors import UserError
from longseq.models.pretrained import MODEL_CONFIG_KEY

CONFIG = {
    "_target_": "longseq.models.dna.DNAEncoder",
    "vocab_size": 7,
    "max_seq_len": 1000,
    "d_model": 16,
    "n_layers": 2,
    "n_heads": 2,
    "attention": {"_target_": "longseq.attention.linear_elu.LinearEluAttention", "_partial_": True},
}


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint laid out as train.py writes it: task state dict (encoder under model.) + model config."""
    torch.manual_seed(0)
    model = instantiate(CONFIG).eval()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["head.weight"] = torch.zeros(4, 16)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, MODEL_CONFIG_KEY: CONFIG}, path)
    return path, model


def states_of(model, fasta, name, start, end, seq_len=1000):
    from pyfaidx import Fasta

    seq = str(Fasta(str(fasta))[name][start:end])
    tokens = torch.full((1, seq_len), PAD, dtype=torch.long)
    tokens[0, : end - start] = encode(seq)
    mask = torch.zeros(1, seq_len, dtype=torch.bool)
    mask[0, : end - start] = True
    with torch.no_grad():
        return model(tokens, mask)[0, : end - start].numpy()


def test_round_trip_per_window_and_per_base(checkpoint, tiny_fasta, tmp_path):
    path, model = checkpoint
    out = tmp_path / "emb"
    # shard_mb=0 -> one window per shard: exercises shard boundaries inside a batch.
    write_embeddings(path, tiny_fasta, out, per_base=True, batch_size=4, shard_mb=0, index_cache_dir=tmp_path / "cache", progress=False)
    emb = load_embeddings(out)
    m = emb.manifest
    assert m["n_windows"] == 12 + 9 + 1 and m["seq_len"] == 1000 and m["d_model"] == 16 and len(m["shards"]) == 22
    starts = [(w["name"], w["start"], w["end"]) for w in emb.windows]
    assert starts[:2] == [("chrA", 0, 1000), ("chrA", 1000, 2000)] and starts[-1] == ("chrC", 0, 500)
    assert emb.windows[-1]["length"] == 500 and [w["index"] for w in emb.windows] == list(range(22))
    assert emb.pooled.shape == (22, 16) and emb.pooled.dtype == np.float32
    for i in (0, 13, 21):  # chrA, chrB, the short chrC
        w = emb.windows[i]
        expected = states_of(model, tiny_fasta, w["name"], w["start"], w["end"])
        np.testing.assert_allclose(emb.per_base(i), expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(emb.pooled[i], expected.mean(0), rtol=1e-4, atol=1e-5)
    raw = np.load(out / m["shards"][21]["per_base"])
    assert raw.shape == (1, 1000, 16) and not raw[0, 500:].any()  # padding written as zeros


def test_bed_intervals_stride_and_float16(checkpoint, tiny_fasta, tmp_path):
    path, _ = checkpoint
    bed = tmp_path / "genes.bed"
    bed.write_text("chrA\t1000\t3000\tg1\nchrB\t6000\t6500\tg4\n")
    out = write_embeddings(
        path, tiny_fasta, tmp_path / "emb", bed=bed, seq_len=800, stride=600, dtype="float16",
        index_cache_dir=tmp_path / "cache", progress=False,
    )
    emb = load_embeddings(out)
    got = [(w["name"], w["start"], w["end"], w["interval"]) for w in emb.windows]
    assert got == [
        ("chrA", 1000, 1800, "g1"), ("chrA", 1600, 2400, "g1"), ("chrA", 2200, 3000, "g1"),  # never past the end
        ("chrB", 6000, 6500, "g4"),
    ]
    assert emb.pooled.dtype == np.float16 and emb.pooled.shape == (4, 16)
    with pytest.raises(UserError, match="without --per-base"):
        emb.per_base(0)
    assert json.loads((out / "manifest.json").read_text())["bed"].endswith("genes.bed")


def test_bad_input_is_a_one_line_error(checkpoint, tiny_fasta, tmp_path, capsys):
    path, _ = checkpoint
    no_config = tmp_path / "plain.ckpt"
    torch.save({"state_dict": torch.load(path, weights_only=False)["state_dict"]}, no_config)
    with pytest.raises(UserError, match="has no saved model config"):
        write_embeddings(no_config, tiny_fasta, tmp_path / "e", progress=False)
    with pytest.raises(UserError, match=r"--checkpoint=.*nope\.ckpt does not exist"):
        write_embeddings(tmp_path / "nope.ckpt", tiny_fasta, tmp_path / "e", progress=False)
    other = dict(CONFIG, d_model=32)
    mismatched = tmp_path / "mismatched.ckpt"
    torch.save({"state_dict": torch.load(path, weights_only=False)["state_dict"], MODEL_CONFIG_KEY: other}, mismatched)
    with pytest.raises(UserError, match="does not match this encoder"):
        write_embeddings(mismatched, tiny_fasta, tmp_path / "e", progress=False)
    bed = tmp_path / "bad.bed"
    bed.write_text("chr4\t0\t100\n")
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(path), "--fasta", str(tiny_fasta), "--bed", str(bed), "--out", str(tmp_path / "e"),
              "--index-cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "absent from the FASTA: chr4" in err[0]
