"""Model-registry hooks: quantize every opted-in model version automatically.

- ``ptqflow hook serve`` (``server``): receives MLflow's HMAC-signed registry webhooks, qualifies the model
  version and triggers the pipeline on Airflow (REST API) or Kubeflow Pipelines (``kfp.Client``).
- ``ptqflow hook poll`` (``poll``): the same for registries without webhooks, one pass per call.

The triggered run fetches ``models:/<name>/<version>`` and, after the gate passed, its ``publish`` step
registers the INT8 version back (``ptqflow.pipeline.steps.publish``). Configuration: ``config.HookConfig`` (hook.yaml);
secrets only from the environment or files (``config.secret``).
"""
