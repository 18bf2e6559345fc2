"""trainer.run: the one list of settings that do not change a pretraining run, used by resume and by the ablation."""
from __future__ import annotations

from dataclasses import asdict, fields

import pytest
import torch

from trainer import run
from trainer.common import UsageError
from trainer.pretrain import PretrainConfig

CONFIG = asdict(PretrainConfig(steps=10))
DEFAULTS = asdict(PretrainConfig())
OFF_LIST = [f.name for f in fields(PretrainConfig) if f.name not in run.SAME_RUN and f.name != "data"]


def _other(value):
    """A different value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    return value + "-other"


def _checkpoint(config: dict, step: int = 4) -> dict:
    return {"config": dict(config), "step": step, "rng": [{}], "device_type": "cpu"}


def test_the_list_names_pretrain_config_fields():
    assert set(run.SAME_RUN) <= {f.name for f in fields(PretrainConfig)}
    # ablation.py's list at ba874d8: the fingerprint.json of every ablation run written since stays valid
    assert set(run.SAME_RUN) == {"out", "resume", "overwrite", "device", "checkpoint_every", "num_workers", "steps",
                                 "backend", "threads"}


@pytest.mark.parametrize("name", run.SAME_RUN)
def test_a_resume_may_change_a_field_on_the_list(name):
    new = CONFIG | {name: _other(CONFIG[name])}
    run.check_resumable(_checkpoint(CONFIG), new, DEFAULTS, 1, torch.device("cpu"))


@pytest.mark.parametrize("name", OFF_LIST)
def test_a_resume_that_changes_a_field_off_the_list_is_refused_naming_it(name):
    new = CONFIG | {name: _other(CONFIG[name])}
    with pytest.raises(UsageError, match=f"--{name.replace('_', '-')} "):
        run.check_resumable(_checkpoint(CONFIG), new, DEFAULTS, 1, torch.device("cpu"))


def test_a_resume_below_the_checkpoint_step_is_refused():
    with pytest.raises(UsageError, match="--steps 3 is below the checkpoint's step 4"):
        run.check_resumable(_checkpoint(CONFIG), CONFIG | {"steps": 3}, DEFAULTS, 1, torch.device("cpu"))


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    (root / "store.json").write_text('{"clips": 3}')
    return root


def test_the_ablation_reuses_a_run_that_differs_only_on_the_list(store, tmp_path):
    folder = tmp_path / "run"
    run.claim_run_dir(folder, run.pretrain_record(CONFIG, store))
    on_list = CONFIG | {name: _other(CONFIG[name]) for name in run.SAME_RUN}
    assert run.pretrain_record(on_list, store) == run.pretrain_record(CONFIG, store)
    run.claim_run_dir(folder, run.pretrain_record(on_list, store))  # the same run: accepted
    for name in OFF_LIST + ["data"]:
        with pytest.raises(UsageError, match=f"differs in {name}\\)"):
            run.claim_run_dir(folder, run.pretrain_record(CONFIG | {name: _other(CONFIG[name])}, store))


def test_the_ablation_fingerprint_follows_the_data_not_its_path(store, tmp_path):
    record = run.pretrain_record(CONFIG, store)
    (store / "store.json").write_text('{"clips": 4}')
    assert run.pretrain_record(CONFIG, store)["data_fingerprint"] != record["data_fingerprint"]
