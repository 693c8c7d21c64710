import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT / "tests", ROOT / "components"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import os
import tempfile

# Airflow reads its home at import: keep its config and SQLite DB out of ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="ptqflow-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
