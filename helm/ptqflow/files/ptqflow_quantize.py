"""ptqflow INT8 quantization DAG (Airflow 3). Mode: PTQFLOW_AIRFLOW_MODE / Variable ptqflow_mode
(local | kubernetes); the DAG is built by ptqflow.orchestration.airflow_face, see its docstring and docs/airflow.md."""

from ptqflow.orchestration.airflow_face import build_dag

dag = build_dag("ptqflow_quantize")
