"""Regenerate tests/baselines/<chip>.json: ``python tests/cost/make_baselines.py [chip ...]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cost_baselines import write  # noqa: E402
from simulator.profiles import list_profiles  # noqa: E402

if __name__ == "__main__":
    for chip in sys.argv[1:] or list_profiles():
        print(f"wrote {write(chip)}")
