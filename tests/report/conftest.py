import sys
from pathlib import Path

tests = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(tests / "data"))
# the steer arm's synthetic tables are shared with the analysis tests
sys.path.insert(0, str(tests / "analysis"))
