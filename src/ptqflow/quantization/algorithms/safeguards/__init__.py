"""Automatic safeguards (``advanced.auto_safeguards``, each with its own switch read through
``advanced.safeguard(name)``): after the statistics pass, each looks at the plan and what was observed and
decides which activation quantizers to keep in float, returning those decisions (``{"tensor", "reason"}``);
``keep_in_float`` records them in the plan and drops the quantizers.

- ``outlier`` (``safeguard_outliers``): tensors with extreme ranges;
- ``depthwise`` (``safeguard_depthwise``): two-sided inputs of depthwise convolutions with widely differing channel
  ranges;
- ``sensitivity_keep`` (``sensitivity_search``): the quantizers whose removal alone cuts the model's output error
  the most.
"""

from __future__ import annotations


def keep_in_float(plan: dict, decisions: list[dict]) -> None:
    """Record ``decisions`` in ``plan["float_tensors"]`` and drop their tensors from ``plan["activations"]``."""
    if decisions:
        plan.setdefault("float_tensors", []).extend(decisions)
    drop = {d["tensor"] for d in decisions}
    plan["activations"] = [p for p in plan["activations"] if p["tensor"] not in drop]
