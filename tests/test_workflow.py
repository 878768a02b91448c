"""The Snakemake DAG: the smoke experiment end to end, idempotence, lint, validation, profiles."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"


def snakemake(
    *args: str, cwd: Path, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    cmd = ["snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *args]
    env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def smoke_config(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg.update(changes)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """The smoke experiment run once through every rule."""
    work = tmp_path_factory.mktemp("workflow")
    snakemake("--cores", "2", "--configfile", str(SMOKE), cwd=work)
    return work


def test_smoke_experiment_runs_every_rule_and_writes_the_output_contract(smoke_run):
    r = smoke_run / "results" / "smoke"
    assert (r / "base" / "warmstart.json").is_file()
    for run in ("grpo", "grpo_dapo"):
        for seed in (0, 1):
            d = r / "runs" / run / f"seed{seed}"
            assert (d / "model" / "config.json").is_file()
            assert len((d / "metrics.jsonl").read_text().splitlines()) == 3  # step 0 + 2 steps
            assert json.loads((d / "ledger.json").read_text())["steps"] == 2
            for suite in ("chains_test", "chains_test_long"):
                result = json.loads((d / "eval" / f"{suite}.json").read_text())
                assert result["backend"] == "lm-eval/hf" and result["n"] == 10
                assert 0.0 <= result["accuracy"] <= 1.0
                assert (d / "eval" / f"{suite}.samples.jsonl").is_file()
    for name in ("main", "efficiency"):
        for ext in ("md", "tex", "csv"):
            assert (r / "tables" / f"{name}.{ext}").stat().st_size > 0
    assert "grpo_dapo" in (r / "tables" / "main.md").read_text()
    for fig in ("accuracy_vs_step", "accuracy_vs_tokens", "accuracy_vs_seconds", "reward"):
        assert (r / "figures" / f"{fig}.png").stat().st_size > 0
        assert (r / "figures" / f"{fig}.pdf").stat().st_size > 0
    assert (r / "logs" / "warmstart.log").is_file()
    assert (r / "benchmarks" / "warmstart.tsv").is_file()


def test_every_training_job_starts_before_any_evaluation_or_diagnostic(smoke_run):
    """rule train's priority: on 2 cores the 4 training jobs (2 runs x 2 seeds) all start
    before the short jobs that become ready meanwhile, which then fill the cores."""
    log = sorted((smoke_run / ".snakemake" / "log").glob("*.snakemake.log"))[0].read_text()
    started = re.findall(r"^(?:local)?rule (\w+):$", log, flags=re.M)
    assert started.count("train") == 4, started
    last_train = max(i for i, name in enumerate(started) if name == "train")
    fillers = ("evaluate", "diagnostics")  # evaluate, evaluate_base, diagnostics_*
    assert any(n.startswith(fillers) for n in started[last_train:]), started
    assert not any(n.startswith(fillers) for n in started[:last_train]), started


def test_the_report_gathers_every_table_and_figure_with_its_caption(smoke_run, tmp_path):
    report = tmp_path / "report.html"
    snakemake("--report", str(report), "--configfile", str(SMOKE), cwd=smoke_run)  # no --cores
    html = report.read_text()
    for name in ("main.csv", "efficiency.csv", "accuracy_vs_step.png", "reward.png"):
        assert name in html, name
    assert "Held-out accuracy</strong> of every run" in html  # the tables' caption
    assert "Training reward</strong>" in html  # a figure's caption


def test_rerunning_a_finished_experiment_does_nothing(smoke_run):
    proc = snakemake("-n", "--cores", "2", "--configfile", str(SMOKE), cwd=smoke_run)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_training_job_killed_anywhere_resumes_to_the_uninterrupted_result(smoke_run, tmp_path):
    """SIGKILL during generation, the optimiser step, checkpoint writing and the final
    save, one after another; rerunning snakemake each time resumes, and the run ends
    bitwise equal to the uninterrupted one (CPU)."""
    work = tmp_path / "work"
    shutil.copytree(smoke_run, work)  # copy2: modification times kept, so nothing upstream reruns
    run = work / "results" / "smoke" / "runs" / "grpo" / "seed0"
    reference = load_file(run / "model" / "model.safetensors")
    reference_rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    reference_tokens = json.loads((run / "ledger.json").read_text())["total_generated_tokens"]
    shutil.rmtree(run)
    target = "results/smoke/runs/grpo/seed0/ledger.json"
    args = (target, "--cores", "1", "--configfile", str(SMOKE))  # --configfile takes nargs
    # the smoke run checkpoints every step; each fault hits step 2 of 2
    for fault in ("generate:2", "optimizer:2", "checkpoint:2", "finish:2"):
        proc = snakemake(*args, cwd=work, check=False, env={"CREDITBENCH_FAULT": fault})
        assert proc.returncode != 0 and "Error in rule train" in proc.stderr, fault
        assert not (run / "ledger.json").exists(), fault
        steps = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
        assert steps == (["step_000001", "step_000002"] if fault == "finish:2" else ["step_000001"])
    if (run / "checkpoints" / ".tmp_step_000002").exists():  # left by the checkpoint kill
        assert not (run / "checkpoints" / ".tmp_step_000002" / "COMPLETE").exists()
    snakemake(*args, cwd=work)

    resumed = load_file(run / "model" / "model.safetensors")
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for a, b in zip(rows, reference_rows, strict=True):
        for key in ("reward", "loss", "generated_tokens", "eval/test/accuracy"):
            assert a.get(key) == b.get(key), key
    assert json.loads((run / "ledger.json").read_text())["total_generated_tokens"] == (
        reference_tokens
    )


def _processes_in(folder: Path) -> list[int]:
    """The processes whose working directory is ``folder`` (orphaned jobs)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_snakemake_killed_mid_experiment_resumes_with_the_same_command(smoke_run, tmp_path):
    """SIGKILL of snakemake itself once the first training checkpoint exists (its jobs
    live on as orphans, its lock and incomplete markers stay): the same command, run
    again unchanged, removes the dead run's lock, reruns the incomplete jobs (a restarted
    training job waits for its orphan) and ends with the uninterrupted results."""
    work = tmp_path / "work"
    work.mkdir()
    args = ("--cores", "2", "--configfile", str(SMOKE))  # smoke_run's command
    cmd = ["snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work), *args]
    first = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runs = work / "results" / "smoke" / "runs"
    deadline = time.monotonic() + 600
    while not list(runs.glob("*/seed*/checkpoints/step_*")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert list((work / ".snakemake" / "locks").glob("*.lock"))  # the dead run's lock
    assert list((work / ".snakemake" / "incomplete").iterdir())  # its unfinished jobs

    again = snakemake(*args, cwd=work)  # the same command, unchanged
    assert "lock file(s) of a Snakemake that is no longer running" in again.stderr
    deadline = time.monotonic() + 300
    while _processes_in(work):  # orphans (an evaluation) may outlive the second run
        assert time.monotonic() < deadline, _processes_in(work)
        time.sleep(0.2)
    assert "Nothing to be done" in snakemake("-n", *args, cwd=work).stdout

    ref, got = smoke_run / "results" / "smoke", work / "results" / "smoke"
    for run in ("grpo", "grpo_dapo"):
        for seed in (0, 1):
            a, b = ref / "runs" / run / f"seed{seed}", got / "runs" / run / f"seed{seed}"
            wa, wb = (load_file(d / "model" / "model.safetensors") for d in (a, b))
            assert wa.keys() == wb.keys()
            for k in wa:
                assert torch.equal(wa[k], wb[k]), (run, seed, k)
            rows = [
                [json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()]
                for d in (a, b)
            ]
            assert [r["step"] for r in rows[1]] == [0, 1, 2]
            for ra, rb in zip(*rows, strict=True):
                for key in ("reward", "loss", "generated_tokens", "eval/test/accuracy"):
                    assert ra.get(key) == rb.get(key), (run, seed, key)
            for suite in ("chains_test", "chains_test_long"):
                ea, eb = (json.loads((d / "eval" / f"{suite}.json").read_text()) for d in (a, b))
                assert (eb["n"], eb["accuracy"]) == (ea["n"], ea["accuracy"]), (run, seed)
                sa, sb = ((d / "eval" / f"{suite}.samples.jsonl").read_text() for d in (a, b))
                assert [json.loads(x)["response"] for x in sa.splitlines()] == [
                    json.loads(x)["response"] for x in sb.splitlines()
                ]
    assert (got / "tables" / "main.csv").read_text() == (ref / "tables" / "main.csv").read_text()


def test_an_evaluation_waits_while_another_process_holds_its_results_lock(smoke_run, tmp_path):
    """An evaluation restarted while an orphaned one still writes the same result waits
    for it (the lock beside the result), then writes the same result."""
    r = smoke_run / "results" / "smoke"
    run = r / "runs" / "grpo" / "seed0"
    out = tmp_path / "eval"
    out.mkdir()
    cmd = ["creditbench", "evaluate", "-c", str(r / "config.json"), "--data", str(r / "data")]
    cmd += ["--model", str(run / "model"), "--suite", "chains_test", "--out-dir", str(out)]
    with (out / ".chains_test.json.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the orphan
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(20)  # long enough to start and evaluate, were it not waiting
        assert proc.poll() is None and not (out / "chains_test.json").exists()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "waiting for another process holding" in stderr
    got, ref = (json.loads((d / "chains_test.json").read_text()) for d in (out, run / "eval"))
    assert (got["n"], got["accuracy"]) == (ref["n"], ref["accuracy"])


def test_grouped_suites_are_one_job_per_run_and_seed_with_the_per_suite_results(
    smoke_run, tmp_path
):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["eval"]["group_suites"] = True
    path = tmp_path / "grouped.yaml"
    path.write_text(yaml.safe_dump(cfg))
    plan = snakemake("-n", "--cores", "2", "--configfile", str(path), cwd=tmp_path)
    out = plan.stdout + plan.stderr
    assert re.search(r"^evaluate\s+4$", out, re.M), out  # 2 runs x 2 seeds, both suites each
    assert re.search(r"^evaluate_base\s+1$", out, re.M), out
    assert "logs/eval/grpo/seed0/all.log" in out

    # what such a job runs, on a smoke model: every suite's files, equal to the per-suite
    # jobs' (greedy evaluation, the same seed)
    r = smoke_run / "results" / "smoke"
    run = r / "runs" / "grpo" / "seed0"
    cmd = ["creditbench", "evaluate", "-c", str(r / "config.json"), "--data", str(r / "data")]
    cmd += ["--model", str(run / "model"), "--suite", "chains_test", "--suite", "chains_test_long"]
    subprocess.run([*cmd, "--out-dir", str(tmp_path / "eval")], check=True, capture_output=True)
    for suite in ("chains_test", "chains_test_long"):
        grouped = json.loads((tmp_path / "eval" / f"{suite}.json").read_text())
        alone = json.loads((run / "eval" / f"{suite}.json").read_text())
        assert (grouped["suite"], grouped["n"]) == (suite, alone["n"])
        assert grouped["accuracy"] == alone["accuracy"]
        responses = [
            [json.loads(line)["response"] for line in (d / f"{suite}.samples.jsonl").open()]
            for d in (tmp_path / "eval", run / "eval")
        ]
        assert responses[0] == responses[1]


def test_grouped_seeds_are_one_job_per_run_with_each_seeds_results(smoke_run, tmp_path):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["eval"].update(group_suites=True, group_seeds=True)
    path = tmp_path / "grouped.yaml"
    path.write_text(yaml.safe_dump(cfg))
    plan = snakemake("-n", "-p", "--cores", "2", "--configfile", str(path), cwd=tmp_path)
    out = plan.stdout + plan.stderr
    assert re.search(r"^evaluate\s+2$", out, re.M), out  # 2 runs, both seeds and suites each
    assert "logs/eval/grpo/seeds/all.log" in out
    r = "results/smoke/runs/grpo"
    assert f"--model {r}/seed0/model --out-dir {r}/seed0/eval --model {r}/seed1/model" in out

    # what such a job runs: each seed's files, equal to those of the one-seed jobs
    r = smoke_run / "results" / "smoke"
    runs = [r / "runs" / "grpo" / f"seed{k}" for k in (0, 1)]
    cmd = ["creditbench", "evaluate", "-c", str(r / "config.json"), "--data", str(r / "data")]
    for k, run in enumerate(runs):
        cmd += ["--model", str(run / "model"), "--out-dir", str(tmp_path / f"eval{k}")]
    subprocess.run([*cmd, "--suite", "chains_test"], check=True, capture_output=True)
    for k, run in enumerate(runs):
        grouped = json.loads((tmp_path / f"eval{k}" / "chains_test.json").read_text())
        alone = json.loads((run / "eval" / "chains_test.json").read_text())
        assert (grouped["n"], grouped["accuracy"]) == (alone["n"], alone["accuracy"])
    # models and result folders must pair up
    base = ["creditbench", "evaluate", "-c", str(r / "config.json"), "--data", str(r / "data")]
    unpaired = ["--model", str(runs[0] / "model"), "--out-dir", str(tmp_path / "eval0")]
    unpaired += ["--model", str(runs[1] / "model"), "--suite", "chains_test"]
    bad = subprocess.run([*base, *unpaired], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "2 models (--model) need one --out-dir each, got 1" in bad.stderr


def test_grouped_training_seeds_are_one_job_per_run_writing_each_seeds_run(tmp_path):
    """launch.group_seeds: one training job per run, its seeds one after another in one
    process (what that process does is tested in test_train.py), with every seed's
    outputs, so evaluation and analysis read the same files as with a job per seed."""
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["launch"] = {"group_seeds": True}
    path = tmp_path / "grouped.yaml"
    path.write_text(yaml.safe_dump(cfg))
    plan = snakemake("-n", "-p", "--cores", "2", "--configfile", str(path), cwd=tmp_path)
    out = plan.stdout + plan.stderr
    assert re.search(r"^train\s+2$", out, re.M), out  # 2 runs, both seeds each
    assert "logs/train/grpo/seeds.log" in out
    r = "results/smoke/runs/grpo"
    assert f"--run grpo --seed 0 --out {r}/seed0 --seed 1 --out {r}/seed1 --init" in out
    assert re.search(r"runtime=240\b", out)  # the testbed's 120 minutes per seed, twice

    cfg["launch"]["num_processes"] = 2
    path.write_text(yaml.safe_dump(cfg))
    bad = snakemake("-n", "--cores", "2", "--configfile", str(path), cwd=tmp_path, check=False)
    assert bad.returncode != 0
    assert "launch.group_seeds" in bad.stdout + bad.stderr


def test_a_run_added_to_the_config_appears_in_the_dag(smoke_run, tmp_path):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["runs"]["grpo_noclip"] = {"method": "grpo", "loss": {"clip": False}}
    path = tmp_path / "more.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--cores", "2", "--configfile", str(path), cwd=smoke_run)
    out = proc.stdout + proc.stderr
    assert "runs/grpo_noclip/seed0/model/config.json" in out
    assert "runs/grpo_noclip/seed1/eval/chains_test_long.json" in out
    assert "runs/grpo/seed0/model/config.json" not in out  # finished runs are not redone
    assert "rule warmstart" not in out


def test_an_invalid_config_is_rejected_before_any_job_starts(tmp_path):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["train"]["group_size"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("--cores", "1", "--configfile", str(path), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "group_size" in proc.stdout + proc.stderr
    assert not (tmp_path / "results" / "smoke" / "data").exists()


def test_a_typo_in_the_config_is_rejected_naming_the_key(tmp_path):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["trian"] = cfg.pop("train")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--configfile", str(path), cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "trian" in proc.stdout + proc.stderr
    # one line for the problem, not Snakemake's dump of the whole schema after it
    out = (proc.stdout + proc.stderr).splitlines()
    assert len(out) <= 6, "\n".join(out)
    assert any("trian: unknown key; did you mean 'train'?" in line for line in out)


def test_an_unknown_evaluation_suite_fails_the_dry_run(tmp_path):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg.setdefault("eval", {})["suites"] = ["nonexistent_suite"]
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--configfile", str(path), cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "eval.suites: unknown suite 'nonexistent_suite'" in out and "cb_gsm8k" in out


@pytest.mark.parametrize("profile", ["local-cpu", "local-gpu"])
def test_each_local_profile_plans_the_default_experiment(tmp_path, profile):
    proc = snakemake(
        "-n", "--profile", str(ROOT / "experiments" / "profiles" / profile), cwd=tmp_path
    )
    out = proc.stdout + proc.stderr
    assert "train" in out and "evaluate" in out and "tables" in out


def test_the_workflow_passes_snakemake_lint_and_snakefmt(tmp_path):
    lint = snakemake("--lint", "--configfile", str(SMOKE), cwd=tmp_path, check=False)
    problems = [ln for ln in (lint.stdout + lint.stderr).splitlines() if ln.strip().startswith("*")]
    assert not problems, lint.stdout + lint.stderr
    if shutil.which("snakefmt"):
        fmt = subprocess.run(
            ["snakefmt", "--check", "Snakefile", "experiments/rules"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_creditbench_run_does_the_experiment_in_one_process(tmp_path):
    """`creditbench run`: data, warm start, training and every suite's evaluation, and a
    second call finds everything done."""
    cfg = smoke_config(tmp_path, seeds=[0])
    cmd = ["creditbench", "run", "-c", str(cfg), "--runs", "grpo", "--results", "out"]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "out" / "smoke" / "runs" / "grpo" / "seed0"
    assert json.loads((run / "ledger.json").read_text())["steps"] == 2
    for suite in ("chains_test", "chains_test_long"):
        result = json.loads((run / "eval" / f"{suite}.json").read_text())
        assert result["suite"] == suite and result["n"] == 10
        assert f"grpo                     0  {suite}" in first.stdout
    assert not (tmp_path / "out" / "smoke" / "runs" / "grpo_dapo").exists()  # not selected
    before = (run / "ledger.json").stat().st_mtime_ns
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and (run / "ledger.json").stat().st_mtime_ns == before


def test_the_critic_diagnostic_is_planned_for_each_run_that_owns_a_critic(tmp_path):
    """diagnostics_critic: one job per run whose method has a critic (PPO), none for the
    others (VinePPO's values are Monte Carlo), with the run's first seed as input."""
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["runs"] = {
        "grpo": {"method": "grpo"},
        "vineppo": {"method": "vineppo", "mc_rollouts": 2},
        "ppo": {"method": "ppo"},
    }
    path = tmp_path / "critic.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "-p", "--configfile", str(path), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert re.search(r"^diagnostics_critic\s+1$", out, re.M), out[-2000:]
    assert "diagnostics/critic/ppo.md" in out
    assert "diagnostics/critic/vineppo" not in out and "diagnostics/critic/grpo" not in out
    assert "--run ppo --run-dir results/smoke/runs/ppo/seed0" in out
    assert "--ranking-ks=1,2" in out  # the config's diagnostics sizes
