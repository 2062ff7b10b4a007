import sys
from pathlib import Path

# benchmarks/ (the calibration script and the ResNet-50 builder) is imported by the tests.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
