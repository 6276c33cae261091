"""The Lightning task modules and what the command-line tools do around them.

Importing the package registers the config resolvers the configs use, so that every way of
composing them (the tools, the benchmarks, the tests) resolves them alike:

* ``${less_than:A,B}`` - whether ``A < B``; e.g. the fine-tuning presets keep batch-norm statistics
  frozen below a per-device batch (``model.frozen_bn: ${less_than:${data.batch_size},16}``).
"""

from omegaconf import OmegaConf

OmegaConf.register_new_resolver("less_than", lambda a, b: a < b, replace=True)
