"""Plain ``nn.Module`` building blocks (no Lightning, no Hydra): encoder, embeddings, positions."""
