# Analysis: comparison tables and figures over every run x seed (x suite).
# Rules are thin: each calls the analysis package (python -m analysis.<module>).

# The run every other run is compared to (differences, paired tests, compute ratios); a
# config without it gets tables without those columns.
BASELINE = "grpo"
# Fractions of the baseline's final gain over the warm start at which the sample-efficiency
# table measures steps and tokens to threshold (and the speed-up against the baseline).
FRACTIONS = "0.5,0.8"
RUN_DIR = f"{R}/runs/{{run}}/seed{{seed}}"


rule tables:
    input:
        evals=expand(
            f"{RUN_DIR}/eval/{{suite}}.json", run=RUNS, seed=SEEDS, suite=SUITES
        ),
        ledgers=expand(f"{RUN_DIR}/ledger.json", run=RUNS, seed=SEEDS),
        metrics=expand(f"{RUN_DIR}/metrics.jsonl", run=RUNS, seed=SEEDS),
        base=expand(f"{R}/base/eval/{{suite}}.json", suite=SUITES),
    output:
        main_md=f"{R}/tables/main.md",
        main_tex=f"{R}/tables/main.tex",
        main_csv=report(
            f"{R}/tables/main.csv",
            caption="../report/table_main.rst",
            category="Tables",
            subcategory="Accuracy",
            labels={"table": "held-out accuracy", "format": "CSV (data)"},
        ),
        main_html=report(
            f"{R}/tables/main.html",
            caption="../report/table_main.rst",
            category="Tables",
            subcategory="Accuracy",
            labels={"table": "held-out accuracy", "format": "HTML (view)"},
        ),
        efficiency_md=f"{R}/tables/efficiency.md",
        efficiency_tex=f"{R}/tables/efficiency.tex",
        efficiency_csv=report(
            f"{R}/tables/efficiency.csv",
            caption="../report/table_efficiency.rst",
            category="Tables",
            subcategory="Compute",
            labels={"table": "compute efficiency", "format": "CSV (data)"},
        ),
        efficiency_html=report(
            f"{R}/tables/efficiency.html",
            caption="../report/table_efficiency.rst",
            category="Tables",
            subcategory="Compute",
            labels={"table": "compute efficiency", "format": "HTML (view)"},
        ),
        sample_efficiency_md=f"{R}/tables/sample_efficiency.md",
        sample_efficiency_tex=f"{R}/tables/sample_efficiency.tex",
        sample_efficiency_csv=report(
            f"{R}/tables/sample_efficiency.csv",
            caption="../report/table_sample_efficiency.rst",
            category="Tables",
            subcategory="Sample efficiency",
            labels={"table": "sample efficiency", "format": "CSV (data)"},
        ),
        sample_efficiency_html=report(
            f"{R}/tables/sample_efficiency.html",
            caption="../report/table_sample_efficiency.rst",
            category="Tables",
            subcategory="Sample efficiency",
            labels={"table": "sample efficiency", "format": "HTML (view)"},
        ),
        sample_efficiency_seeds_csv=report(
            f"{R}/tables/sample_efficiency_seeds.csv",
            caption="../report/table_sample_efficiency_seeds.rst",
            category="Tables",
            subcategory="Sample efficiency",
            labels={"table": "per-seed sample efficiency", "format": "CSV (data)"},
        ),
        seeds_csv=report(
            f"{R}/tables/seeds.csv",
            caption="../report/table_seeds.rst",
            category="Tables",
            subcategory="Accuracy",
            labels={"table": "per-seed accuracy", "format": "CSV (data)"},
        ),
    log:
        f"{R}/logs/analysis/tables.log",
    benchmark:
        f"{R}/benchmarks/analysis/tables.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=GPUS["analysis"],
        runtime=RUNTIME["analysis"],
        mem_mb=MEM_MB["analysis"],
    params:
        experiment=experiment_dir,
        out=output_dir,
        runs=",".join(RUNS),
        seeds=",".join(map(str, SEEDS)),
        suites=",".join(SUITES),
        baseline=BASELINE,
        fractions=FRACTIONS,
    shell:
        "python -m analysis.tables {params.experiment} --runs {params.runs}"
        " --seeds {params.seeds} --suites {params.suites} --baseline {params.baseline}"
        " --fractions {params.fractions} --out {params.out} > {log} 2>&1"


rule figures:
    input:
        metrics=expand(f"{RUN_DIR}/metrics.jsonl", run=RUNS, seed=SEEDS),
        ledgers=expand(f"{RUN_DIR}/ledger.json", run=RUNS, seed=SEEDS),
    output:
        accuracy_vs_step=report(
            f"{R}/figures/accuracy_vs_step.png",
            caption="../report/fig_accuracy.rst",
            category="Figures",
            subcategory="Learning curves",
            labels={"figure": "accuracy vs training step"},
        ),
        accuracy_vs_tokens=report(
            f"{R}/figures/accuracy_vs_tokens.png",
            caption="../report/fig_accuracy.rst",
            category="Figures",
            subcategory="Learning curves",
            labels={"figure": "accuracy vs generated tokens"},
        ),
        accuracy_vs_seconds=report(
            f"{R}/figures/accuracy_vs_seconds.png",
            caption="../report/fig_accuracy.rst",
            category="Figures",
            subcategory="Learning curves",
            labels={"figure": "accuracy vs wall-clock seconds"},
        ),
        reward=report(
            f"{R}/figures/reward.png",
            caption="../report/fig_reward.rst",
            category="Figures",
            subcategory="Learning curves",
            labels={"figure": "training reward vs training step"},
        ),
        compute_by_purpose=report(
            f"{R}/figures/compute_by_purpose.png",
            caption="../report/fig_compute_by_purpose.rst",
            category="Figures",
            subcategory="Compute",
            labels={"figure": "tokens per step by purpose"},
        ),
        generation_speed=report(
            f"{R}/figures/generation_speed.png",
            caption="../report/fig_generation_speed.rst",
            category="Figures",
            subcategory="Compute",
            labels={"figure": "generation speed"},
        ),
        sample_efficiency=report(
            f"{R}/figures/sample_efficiency.png",
            caption="../report/fig_sample_efficiency.rst",
            category="Figures",
            subcategory="Sample efficiency",
            labels={"figure": "AUC and speed-up vs the baseline"},
        ),
        pdfs=expand(
            f"{R}/figures/{{name}}.pdf",
            name=[
                "accuracy_vs_step",
                "accuracy_vs_tokens",
                "accuracy_vs_seconds",
                "reward",
                "compute_by_purpose",
                "generation_speed",
                "sample_efficiency",
            ],
        ),
    log:
        f"{R}/logs/analysis/figures.log",
    benchmark:
        f"{R}/benchmarks/analysis/figures.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=GPUS["analysis"],
        runtime=RUNTIME["analysis"],
        mem_mb=MEM_MB["analysis"],
    params:
        experiment=experiment_dir,
        out=output_dir,
        runs=",".join(RUNS),
        seeds=",".join(map(str, SEEDS)),
        band="ci95",
        smooth=5,
        baseline=BASELINE,
        fractions=FRACTIONS,
    shell:
        "python -m analysis.figures {params.experiment} --runs {params.runs}"
        " --seeds {params.seeds} --band {params.band} --smooth {params.smooth}"
        " --baseline {params.baseline} --fractions {params.fractions}"
        " --out {params.out} > {log} 2>&1"
