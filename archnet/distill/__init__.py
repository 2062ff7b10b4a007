"""Label-free blockwise distillation (Arch-Net): schedule, taps, adapters, losses, the loop."""
