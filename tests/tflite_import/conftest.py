import sys
from pathlib import Path

# the TFLite writer (benchmarks/tflite_writer.py) builds the test graphs.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
