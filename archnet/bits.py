"""The bit widths archnet converts to: the Arch-Net paper's (2-bit weights with 4-bit
activations, 4w4a, 8w8a), the ones its command line takes, its bit allocation tries and its
results report. torch-free, so the command line parses without importing torch."""

SUPPORTED_BITS = ("2w4a", "4w4a", "8w8a")

__all__ = ["SUPPORTED_BITS"]
