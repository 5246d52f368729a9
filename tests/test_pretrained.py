"""`init_from`: encoder weights load into a fresh model; incompatible checkpoints are clear errors."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from longseq.errors import UserError
from longseq.models.dna import DNAEncoder
from longseq.models.pretrained import MODEL_CONFIG_KEY, load_encoder

SDPA = {"_target_": "longseq.attention.sdpa.SDPAttention", "_partial_": True}
ELU = {"_target_": "longseq.attention.linear_elu.LinearEluAttention", "_partial_": True}


def encoder(d_model: int = 32, attention: dict = SDPA) -> DNAEncoder:
    return DNAEncoder(7, 64, instantiate(attention), d_model=d_model, n_layers=2, n_heads=2)


def save(tmp_path, model: DNAEncoder, attention: dict = SDPA):
    path = tmp_path / "pre.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["head.0.weight"] = torch.zeros(3, 3)  # task heads are not loaded
    torch.save({"state_dict": state, MODEL_CONFIG_KEY: {"attention": attention}}, path)
    return path


def test_encoder_weights_load_and_heads_are_ignored(tmp_path):
    torch.manual_seed(0)
    pre = encoder()
    path = save(tmp_path, pre)
    fresh = encoder()
    loaded = load_encoder(fresh, path, {"attention": SDPA})
    assert len(loaded) == len(pre.state_dict())
    tokens = torch.randint(0, 5, (2, 64))
    assert torch.equal(fresh(tokens), pre(tokens))


def test_shape_mismatch_is_a_clear_error(tmp_path):
    path = save(tmp_path, encoder(d_model=32))
    with pytest.raises(UserError, match="does not match this encoder.*shape mismatches"):
        load_encoder(encoder(d_model=64), path)


def test_other_attention_is_refused(tmp_path):
    path = save(tmp_path, encoder(), attention=SDPA)
    with pytest.raises(UserError, match="trained with attention SDPAttention.*LinearEluAttention"):
        load_encoder(encoder(attention=ELU), path, {"attention": ELU})


def test_missing_or_unreadable_checkpoint(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_encoder(encoder(), tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_encoder(encoder(), junk)
