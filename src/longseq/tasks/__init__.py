"""LightningModules: one task per file (masked-LM, ...), sharing the optimiser set-up."""
