import sys
from pathlib import Path

# The shared synthetic-results builder lives with the fixtures.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
