"""ptqflow INT8 quantization DAG (Airflow 3). Mode: PTQFLOW_AIRFLOW_MODE / Variable ptqflow_mode
(local | kubernetes); the DAG is built by ptqflow.faces.airflow_face, see its docstring and docs/airflow.md."""

from ptqflow.faces.airflow_face import build_dag

dag = build_dag("ptqflow_quantize")
