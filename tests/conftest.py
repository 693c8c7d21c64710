import sys
from pathlib import Path

# Make tests/builders.py importable as `builders` from every test module.
sys.path.insert(0, str(Path(__file__).parent))
