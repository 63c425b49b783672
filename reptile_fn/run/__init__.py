"""The shell around the pure core: build a run from a config, train it, report on it.

- ``build``: Config -> ``Run`` (tasks, model, loss, inner loop, meta-step, starting parameters); ``load``
  rebuilds a saved run.
- ``loop``: ``train`` (sample -> step -> log -> evaluate -> checkpoint, resume).
- ``report``: the final evaluation against baselines, adaptation speed, figures, tables.
- ``compare``: ``compare_runs``, several runs' results in one table.
- ``files``: the run directory's layout.
"""

from reptile_fn.run.build import Keys, Run, build, evaluation_loop, load, run_keys
from reptile_fn.run.compare import compare_runs
from reptile_fn.run.files import ADAPTER_DIR, CHECKPOINT, METRICS, SUMMARY, stored_config
from reptile_fn.run.loop import train
from reptile_fn.run.report import (
    baseline_inits,
    default_baselines,
    evaluate_init,
    final_evaluation,
    format_results,
    format_speed,
    ms_per_step,
    peft_summary,
    write_figures,
)

__all__ = ["ADAPTER_DIR", "CHECKPOINT", "METRICS", "SUMMARY", "Keys", "Run", "baseline_inits", "build", "compare_runs",
           "default_baselines", "evaluate_init", "evaluation_loop", "final_evaluation", "format_results",
           "format_speed", "load", "ms_per_step", "peft_summary", "run_keys", "stored_config", "train",
           "write_figures"]
