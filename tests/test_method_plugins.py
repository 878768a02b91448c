"""A method is one file plus a config entry: discovery, validation, and a dropped-in method trains."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
from conftest import small_config
from safetensors.torch import load_file

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


# A method from a user folder that owns trainable state: a learned baseline b (one
# parameter), A = R - b, b trained by SGD on (R - b)^2 after each policy update.
BASELINE = textwrap.dedent(
    '''
    """A learned scalar baseline (a test method that owns trainable state)."""
    import torch
    from pydantic import BaseModel, ConfigDict

    from creditbench.rollouts import Group


    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        baseline_lr: float = 0.5


    class Baseline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.zeros(()))

        def forward(self, attention_mask):
            return self.b.expand(attention_mask.size(0))


    class Method:
        def __init__(self, params, ctx):
            self.params, self.ctx = params, ctx
            module = Baseline()
            opt = torch.optim.SGD(module.parameters(), lr=params.baseline_lr)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            self.state = ctx.own("baseline", module, opt, sched)

        def collect(self, problems, step):
            n = self.ctx.run.train.group_size
            return [Group(t) for t in self.ctx.rollout(problems, n, purpose="rollout")]

        def _mask(self, trajs):
            return torch.ones(len(trajs), 1, device=self.state.unwrapped.b.device)

        def advantages(self, groups):
            trajs = [t for g in groups for t in g.trajectories]
            with torch.no_grad():
                b = self.state(attention_mask=self._mask(trajs)).detach()
            return [t.set_credit(t.reward - float(v)) for t, v in zip(trajs, b)]

        def update(self, trained, step):
            r = torch.tensor([t.reward for t in trained], device=self.state.unwrapped.b.device)
            loss = ((r - self.state(attention_mask=self._mask(trained))) ** 2).mean()
            self.state.backward(loss)
            self.state.step()
            return {"baseline/b": float(self.state.unwrapped.b)}
    '''
)


def test_a_user_method_file_owns_trainable_state_checkpointed_and_resumed(
    small_experiment, tmp_path
):
    """The file lives in a user folder and the engine is not touched: the baseline is
    placed, stepped, charged to the ledger, checkpointed and restored (optimiser and
    scheduler included), and a run stopped at step 3 resumes to the uninterrupted result."""
    import torch

    methods = tmp_path / "user_methods"
    methods.mkdir()
    (methods / "learned_baseline.py").write_text(BASELINE)
    cfg = small_config(methods_dir=str(methods), runs={"b": {"method": "learned_baseline"}})
    run = cfg.run("b")
    exp = small_experiment

    def trainer(out):
        return Trainer(run, 0, exp["base"], exp["data"], out, methods)

    full = trainer(tmp_path / "full")
    ledger = full.train()
    assert full.method.state.steps == run.train.steps == 4
    assert full.method.state.scheduler.get_last_lr() == [0.5 * 0.5**4]
    rows = [json.loads(r) for r in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all("baseline/b" in r for r in rows) and rows[-1]["baseline/b"] != 0.0
    # the forward in advantages (no gradient) and the one in update (gradient): one token
    # per trajectory (the attention mask's sum), 16 trajectories a step
    assert ledger["forwarded_tokens"]["baseline_forward"] == 4 * 16
    assert ledger["forwarded_tokens"]["baseline_update"] == 4 * 16
    saved = torch.load(tmp_path / "full" / "owned" / "baseline.pt", weights_only=True)
    assert float(saved["b"]) == rows[-1]["baseline/b"]

    first = trainer(tmp_path / "resumed")
    first.train(until_step=3)
    state = torch.load(
        tmp_path / "resumed" / "checkpoints" / "step_000003" / "state.pt", weights_only=False
    )
    assert state["owned"]["baseline"]["steps"] == 3
    assert state["owned"]["baseline"]["scheduler"]["last_epoch"] == 3
    second = trainer(tmp_path / "resumed")
    assert second.try_resume() and second.method.state.steps == 3
    assert float(second.method.state.unwrapped.b) == float(first.method.state.unwrapped.b)
    second.train()
    again = torch.load(tmp_path / "resumed" / "owned" / "baseline.pt", weights_only=True)
    assert torch.equal(again["b"], saved["b"])
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a checkpoint without the method's state (another method's) is refused by name
    grpo = small_config().run("grpo")
    Trainer(grpo, 0, exp["base"], exp["data"], tmp_path / "other").train(until_step=2)
    with pytest.raises(RuntimeError, match="no state for the method's 'baseline'"):
        trainer(tmp_path / "other").try_resume()
