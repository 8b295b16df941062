"""Stage 4, delivery: result objects sent to their destinations by C-STORE or STOW-RS (send)."""
