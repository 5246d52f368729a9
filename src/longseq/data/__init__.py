"""Data: FASTA access, tokenisation, window datasets and Lightning data modules."""
