"""Network architectures radnode builds and trains itself (weights under inference/weights/)."""
