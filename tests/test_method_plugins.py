"""A method is one file plus a config entry: discovery, validation, and a dropped-in method trains."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
from conftest import small_config

from creditbench.config import ConfigError
from creditbench.methods import DEFAULT_METHODS_DIR, available_methods, load_method
from creditbench.train import Trainer

# A throw-away method: GRPO's sampling, but credit only on the last completion token.
LAST_TOKEN = textwrap.dedent(
    '''
    """Credit on the last token only (a test method)."""
    from pydantic import BaseModel, ConfigDict

    from creditbench.rollouts import Group, group_normalise

    DEFAULTS = {"loss": {"clip": False}}


    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        scale: float = 1.0


    class Method:
        def __init__(self, params, ctx):
            self.params, self.ctx = params, ctx
            self.calls = 0

        def collect(self, problems, step):
            self.calls += 1
            n = self.ctx.run.train.group_size
            return [Group(t) for t in self.ctx.rollout(problems, n, purpose="rollout")]

        def advantages(self, groups):
            out = []
            for g in groups:
                for t, a in zip(g.trajectories, group_normalise(g.rewards)):
                    n = len(t.completion_ids)
                    mask = [0.0] * (n - 1) + [1.0]
                    out.append(t.set_credit(self.params.scale * float(a), mask))
            return out
    '''
)


def test_bundled_methods_are_discovered_by_file_name():
    assert "grpo" in available_methods()
    assert load_method("grpo").__file__ == str(DEFAULT_METHODS_DIR / "grpo.py")


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(KeyError, match="unknown method 'nope'.*grpo"):
        load_method("nope")


def test_a_dropped_in_method_file_is_validated_and_trained(small_experiment, tmp_path):
    methods = tmp_path / "methods"
    shutil.copytree(DEFAULT_METHODS_DIR, methods)  # a temporary copy of the folder
    (methods / "last_token.py").write_text(LAST_TOKEN)
    runs = {"last": {"method": "last_token", "scale": 2.0}}

    with pytest.raises(ConfigError, match="methods_dir|unknown method 'last_token'"):
        small_config(runs=runs)  # not in the bundled folder: rejected at load time
    with pytest.raises(ConfigError, match=r"runs\.last\.scal.*unknown key"):
        small_config(methods_dir=str(methods), runs={"last": {"method": "last_token", "scal": 2}})

    cfg = small_config(methods_dir=str(methods), runs=runs)
    run = cfg.run("last")
    assert run.params == {"scale": 2.0} and run.loss.clip is False  # the file's DEFAULTS apply
    trainer = Trainer(
        run, 0, small_experiment["base"], small_experiment["data"], tmp_path / "out", methods
    )
    trainer.train()
    assert trainer.method.calls == run.train.steps
    rows = [json.loads(r) for r in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, run.train.steps + 1))
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    assert json.loads((tmp_path / "out" / "ledger.json").read_text())["method"] == "last_token"


def test_a_method_file_without_the_interface_is_rejected(tmp_path):
    (tmp_path / "broken.py").write_text("x = 1\n")
    with pytest.raises(KeyError, match="does not define"):
        load_method("broken", tmp_path)
