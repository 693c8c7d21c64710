"""ptqflow's Kubeflow Pipelines components and pipeline (definitions live in ptqflow.orchestration.kfp_face and
ptqflow.orchestration.kfp_local). Recompile the checked-in YAML after changing them:

    python components/ptqflow_components.py [--device cpu|cuda|npu] [--kind container|local] [--out FILE]
                                            [--placement FILE]

--placement takes a placement file or the Helm chart's placement ConfigMap (``helm template ...
--show-only templates/placement-configmap.yaml``), so the pipeline uses the chart's images and placement.
"""

import argparse

from ptqflow.orchestration import STEP_INPUTS
from ptqflow.orchestration.kfp_face import build_pipeline, compile_pipeline
from ptqflow.orchestration.kfp_local import STEP_COMPONENTS as LOCAL_COMPONENTS

CHECKED_IN = "components/ptqflow_pipeline.yaml"  # container kind, cpu placement

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"])
    ap.add_argument("--kind", default="container", choices=["container", "local"])
    ap.add_argument("--out", default=CHECKED_IN)
    ap.add_argument("--placement", default=None,
                    help="placement file (default: PTQFLOW_PLACEMENT_FILE, else the built-in table)")
    a = ap.parse_args()
    print(compile_pipeline(a.out, a.kind, a.device, a.placement))
