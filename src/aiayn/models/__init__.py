"""Stage 2, the networks: the paper's layers and the Transformer (§3)."""
