"""archnet's integer NPU simulator: bit-exact execution and per-chip cost, usable alone.

Never imports torch or archnet.
"""
__version__ = "0.1.0"
