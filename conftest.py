"""Doctest collection skips the framework integrations whose framework is not installed
(they are optional extras: importing one without its framework raises PrunekitError)."""

import importlib.util

_OPTIONAL = {"src/prunekit/integrations/lightning.py": "lightning",
             "src/prunekit/integrations/hf_trainer.py": "transformers"}

collect_ignore = [path for path, module in _OPTIONAL.items() if importlib.util.find_spec(module) is None]
