"""``eval.lm_eval_model: creditbench-hf``: lm-eval's HF model with its batches decoded by
the engine's loop, against lm-eval's own ``hf`` on the warm-started tiny model."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lm_eval")

from creditbench.lmeval import evaluate_suites  # noqa: E402
from creditbench.lmeval_hf import CreditbenchLM, generation_processors  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _responses(path) -> list[str]:
    return [json.loads(x)["response"] for x in path.with_suffix(".samples.jsonl").open()]


def test_greedy_evaluation_equals_lm_evals_hf_sample_for_sample(small_experiment, tmp_path):
    base, data = small_experiment["base"], small_experiment["data"]
    records = {}
    for backend in ("hf", "creditbench-hf"):
        out = tmp_path / f"{backend}.json"
        records[backend] = evaluate_suites(
            base,
            {"chains_test": (out, data / "test.jsonl")},
            backend=backend,
            limit=48,
            batch_size=16,
        )["chains_test"]
    hf, ours = records["hf"], records["creditbench-hf"]
    assert ours["backend"] == "lm-eval/creditbench-hf" and ours["n"] == hf["n"] == 48
    assert ours["accuracy"] == hf["accuracy"]
    assert _responses(tmp_path / "creditbench-hf.json") == _responses(tmp_path / "hf.json")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"do_sample": True, "temperature": 1.0},
        {"do_sample": True, "temperature": 0.7, "top_p": 0.9},
    ],
)
def test_one_row_samples_what_lm_evals_hf_samples_for_the_same_seed(small_experiment, kwargs):
    """One row: the loop draws the random numbers that ``generate`` draws, with the
    processors ``generate`` builds from the model's generation config (its top-k
    included), so the two models' ``_model_generate`` give the same tokens."""
    from lm_eval.models.huggingface import HFLM

    base = str(small_experiment["base"])
    theirs = HFLM(pretrained=base, device="cpu", batch_size=1)
    ours = CreditbenchLM(pretrained=base, device="cpu", batch_size=1)
    tok = theirs.tokenizer
    for seed, prompt in enumerate(["3+4*2-1\n", "9-8*7+5\n", "1+1\n"]):
        ctx = torch.tensor([tok(prompt)["input_ids"]])
        outs = []
        for lm in (theirs, ours):
            torch.manual_seed(seed)
            outs.append(
                lm._model_generate(
                    ctx,
                    max_length=ctx.size(1) + 40,
                    stop=["\n\n", tok.eos_token],
                    attention_mask=torch.ones_like(ctx),
                    **dict(kwargs),
                )[0, ctx.size(1) :].tolist()
            )
        a, b = outs  # generate pads after a stop; the loop leaves its pad token there too
        n = next((i + 1 for i, t in enumerate(a) if t == tok.eos_token_id), len(a))
        assert b[:n] == a[:n] and n > 1


def test_a_processor_that_reads_the_ids_is_refused_by_name(small_experiment):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_experiment["base"])
    procs, greedy, eos = generation_processors(model, {"do_sample": True, "top_k": 5}, 4)
    assert [type(p).__name__ for p in procs] == ["TopKLogitsWarper"] and not greedy
    assert eos == [model.generation_config.eos_token_id]
    with pytest.raises(ValueError, match="RepetitionPenaltyLogitsProcessor"):
        generation_processors(model, {"repetition_penalty": 1.3}, 4)
