"""The reference trainer and evaluator (``python -m trainer.X``). They need the ``train`` extra, which augcl's bare
install (the engine alone) leaves out: ``pip install 'augcl[train]'``."""
import importlib.util as _util

_missing = [m for m in ("torchvision", "matplotlib", "tqdm") if _util.find_spec(m) is None]
if _missing:
    raise ImportError(f"trainer needs {', '.join(_missing)}, which augcl's bare install leaves out: "
                      "pip install 'augcl[train]'")
