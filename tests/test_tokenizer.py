"""Tokeniser and reverse complement against Biopython."""

from __future__ import annotations

import numpy as np
import torch
from Bio.Seq import Seq

from longseq.data.tokenizer import MASK, PAD, N, decode, encode, reverse_complement

IUPAC = "RYKMSWBDHV"


def test_encode_maps_case_and_ambiguity_codes():
    tokens = encode("ACGTacgtN" + IUPAC + IUPAC.lower() + "-*")
    assert tokens.tolist()[:8] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert (tokens[8:] == N).all()
    assert tokens.dtype == torch.int64


def test_encode_accepts_bytes_and_arrays():
    s = "GATTACA"
    assert torch.equal(encode(s), encode(s.encode()))
    assert torch.equal(encode(s), encode(np.frombuffer(s.encode(), dtype=np.uint8)))
    assert decode(encode(s)) == s


def test_reverse_complement_matches_biopython():
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGTNacgtn"), size=5000))
    ours = decode(reverse_complement(encode(seq)))
    theirs = str(Seq(seq.upper()).reverse_complement())
    assert ours == theirs


def test_reverse_complement_is_an_involution_and_keeps_special_tokens():
    tokens = torch.randint(0, 7, (3, 257))
    assert torch.equal(reverse_complement(reverse_complement(tokens)), tokens)
    special = torch.tensor([N, PAD, MASK])
    assert torch.equal(reverse_complement(special), special.flip(0))


def test_windows_of_a_million_bases_are_one_lookup():
    seq = np.random.default_rng(1).choice(np.frombuffer(b"ACGTacgtN", dtype=np.uint8), size=1_000_000)
    tokens = encode(seq)
    assert tokens.shape == (1_000_000,)
    assert int((tokens > N).sum()) == 0
