# Credit-assignment diagnostics at the warm start (results/<exp>/base): the ground truth
# once (probe set, Monte Carlo step values, VinePPO's ranking test), one probe job per run
# (its advantages on the probes, gradient variance, SRPO's step metrics at the base), then
# tables and figures. Rules are thin: each calls python -m analysis.diagnostics.
#
# Sizes come from the config's `diagnostics:` section (creditbench.config.DiagnosticsConfig;
# unset sizes take creditbench.diagnostics.DiagnosticsSettings' defaults).
# By default the stage is part of the experiment when its task has a step oracle (chains).
# `rule all` takes DIAGNOSTICS_TARGETS (empty when the stage is off).

from creditbench.methods import load_method

DIAG = {k: v for k, v in EXP.diagnostics.model_dump().items() if v is not None}
DIAG_DIR = f"{R}/diagnostics"
DIAG_TRUTH_FLAGS = {
    "probes": "--probes",
    "pool": "--pool",
    "failure_fraction": "--failure-fraction",
    "mc_rollouts": "--mc-rollouts",
    "ranking_ks": "--ranking-ks",
    "ranking_candidates": "--ranking-candidates",
    "ranking_truth_rollouts": "--ranking-truth-rollouts",
    "ranking_min_gap": "--ranking-min-gap",
    "ranking_min_z": "--ranking-min-z",
    "seed": "--seed",
}
DIAG_RUN_FLAGS = {"batches": "--batches", "repeats": "--repeats", "seed": "--seed"}
_diag_unknown = set(DIAG) - set(DIAG_TRUTH_FLAGS) - set(DIAG_RUN_FLAGS) - {"enabled"}
if _diag_unknown:
    raise WorkflowError(
        f"invalid config: diagnostics: unknown keys {sorted(_diag_unknown)}; allowed: "
        f"{sorted({*DIAG_TRUTH_FLAGS, *DIAG_RUN_FLAGS, 'enabled'})}"
    )
DIAG_ENABLED = bool(
    DIAG.get("enabled", callable(getattr(make_task(EXP.task), "first_error", None)))
)


# command-line options for the `diagnostics:` keys each command takes (lists: a,b,c)
DIAG_OPTS = {
    name: " ".join(
        f"{flag}={','.join(map(str, DIAG[key])) if isinstance(DIAG[key], (list, tuple)) else DIAG[key]}"
        for key, flag in flags.items()
        if key in DIAG
    )
    for name, flags in (("truth", DIAG_TRUTH_FLAGS), ("run", DIAG_RUN_FLAGS))
}

# SRPO-family runs: the report reads their training metrics (srpo/... per step)
SRPO_RUNS = [r for r in RUNS if EXP.runs[r]["method"] == "srpo"]
# runs whose method owns a critic (its Method has ``state_values``, e.g. PPO): the critic's
# value error and next-thought ranking over training, against the Monte Carlo truth of the
# policy at each checkpoint (VinePPO's value analysis), for the first seed's run
CRITIC_RUNS = [
    r
    for r in RUNS
    if hasattr(
        load_method(EXP.runs[r]["method"], EXP.methods_dir).Method, "state_values"
    )
]
# the jobs sample and back-propagate through the model: a GPU for a real model
DIAG_GPUS = int(REAL_MODEL)
DIAG_RUNTIME = RUNTIME["evaluate"]
DIAG_MEM_MB = MEM_MB["evaluate"]


rule diagnostics_truth:
    input:
        **FETCHED,
        base=rules.warmstart.output.model,
        test=rules.data.output.test,
    output:
        truth=f"{DIAG_DIR}/truth.json",
    log:
        f"{R}/logs/diagnostics/truth.log",
    benchmark:
        f"{R}/benchmarks/diagnostics/truth.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=DIAG_GPUS,
        runtime=DIAG_RUNTIME,
        mem_mb=DIAG_MEM_MB,
    params:
        cfg=CONFIG,
        base=input_dir("base"),
        data=input_dir("test"),
        opts=DIAG_OPTS["truth"],
        sampling=json.dumps(EXP.sampling, sort_keys=True),
    shell:
        f"{HUB_OFFLINE}"
        "creditbench-place --gpus {resources.gpu} -- python -m analysis.diagnostics truth"
        " -c {params.cfg} --base {params.base}"
        " --data {params.data} --out {output.truth} --threads {threads} {params.opts}"
        " > {log} 2>&1"


rule diagnostics_run:
    input:
        **FETCHED,
        truth=rules.diagnostics_truth.output.truth,
        base=rules.warmstart.output.model,
        train=rules.data.output.train,
    output:
        result=f"{DIAG_DIR}/runs/{{run}}.json",
    log:
        f"{R}/logs/diagnostics/runs/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/diagnostics/runs/{{run}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=DIAG_GPUS,
        runtime=DIAG_RUNTIME,
        mem_mb=DIAG_MEM_MB,
    params:
        cfg=CONFIG,
        base=input_dir("base"),
        data=input_dir("train"),
        opts=DIAG_OPTS["run"],
        run=run_params,
    shell:
        f"{HUB_OFFLINE}"
        "creditbench-place --gpus {resources.gpu} -- python -m analysis.diagnostics run"
        " -c {params.cfg} --run {wildcards.run}"
        " --base {params.base} --data {params.data} --truth {input.truth}"
        " --out {output.result} --threads {threads} {params.opts} > {log} 2>&1"


rule diagnostics_critic:
    input:
        **FETCHED,
        base=rules.warmstart.output.model,
        test=rules.data.output.test,
        ledger=f"{R}/runs/{{run}}/seed{SEEDS[0]}/ledger.json",
    output:
        result=f"{DIAG_DIR}/critic/{{run}}.json",
        md=f"{DIAG_DIR}/critic/{{run}}.md",
    log:
        f"{R}/logs/diagnostics/critic/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/diagnostics/critic/{{run}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=DIAG_GPUS,
        runtime=DIAG_RUNTIME,
        mem_mb=DIAG_MEM_MB,
    params:
        cfg=CONFIG,
        base=input_dir("base"),
        data=input_dir("test"),
        run_dir=lambda wildcards, input: str(Path(input.ledger).parent),
        opts=DIAG_OPTS["truth"],
        run=run_params,
    shell:
        f"{HUB_OFFLINE}"
        "creditbench-place --gpus {resources.gpu} -- python -m analysis.diagnostics critic"
        " -c {params.cfg} --run {wildcards.run}"
        " --run-dir {params.run_dir} --base {params.base} --data {params.data}"
        " --out {output.result} --threads {threads} {params.opts} > {log} 2>&1"


rule diagnostics_report:
    input:
        truth=rules.diagnostics_truth.output.truth,
        runs=expand(f"{DIAG_DIR}/runs/{{run}}.json", run=RUNS),
        metrics=expand(
            f"{R}/runs/{{run}}/seed{{seed}}/metrics.jsonl", run=SRPO_RUNS, seed=SEEDS
        ),
    output:
        md=f"{R}/tables/diagnostics.md",
        tex=f"{R}/tables/diagnostics.tex",
        csv=report(
            f"{R}/tables/diagnostics.csv",
            caption="../report/diagnostics_table.rst",
            category="Diagnostics",
            subcategory="Credit assignment",
            labels={"table": "credit-assignment diagnostics", "format": "CSV (data)"},
        ),
        html=report(
            f"{R}/tables/diagnostics.html",
            caption="../report/diagnostics_table.rst",
            category="Diagnostics",
            subcategory="Credit assignment",
            labels={"table": "credit-assignment diagnostics", "format": "HTML (view)"},
        ),
        srpo_csv=f"{R}/tables/diagnostics_srpo.csv",
        vineppo_csv=f"{R}/tables/diagnostics_vineppo.csv",
        correlation=report(
            f"{R}/figures/diagnostics_correlation.png",
            caption="../report/diagnostics_correlation.rst",
            category="Diagnostics",
            subcategory="Credit assignment",
            labels={"figure": "advantage-truth correlation"},
        ),
        vine_ranking=report(
            f"{R}/figures/diagnostics_vine_ranking.png",
            caption="../report/diagnostics_vine_ranking.rst",
            category="Diagnostics",
            subcategory="VinePPO",
            labels={"figure": "ranking accuracy vs K"},
        ),
        srpo_localisation=report(
            f"{R}/figures/diagnostics_srpo_localisation.png",
            caption="../report/diagnostics_srpo_localisation.rst",
            category="Diagnostics",
            subcategory="SRPO",
            labels={"figure": "localisation accuracy over training"},
        ),
        pdfs=expand(
            f"{R}/figures/{{name}}.pdf",
            name=[
                "diagnostics_correlation",
                "diagnostics_vine_ranking",
                "diagnostics_srpo_localisation",
            ],
        ),
    log:
        f"{R}/logs/diagnostics/report.log",
    benchmark:
        f"{R}/benchmarks/diagnostics/report.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=GPUS["analysis"],
        runtime=RUNTIME["analysis"],
        mem_mb=MEM_MB["analysis"],
    params:
        experiment=lambda wildcards, input: str(Path(input.truth).parents[1]),
        tables=output_dir_of("md"),
        figures=output_dir_of("correlation"),
        runs=",".join(RUNS),
        seeds=",".join(map(str, SEEDS)),
        smooth=5,
    shell:
        "python -m analysis.diagnostics report {params.experiment} --runs {params.runs}"
        " --seeds {params.seeds} --tables {params.tables} --figures {params.figures}"
        " --smooth {params.smooth} > {log} 2>&1"


DIAGNOSTICS_TARGETS = (
    [
        *rules.diagnostics_report.output,
        *expand(f"{DIAG_DIR}/critic/{{run}}.md", run=CRITIC_RUNS),
    ]
    if DIAG_ENABLED
    else []
)
