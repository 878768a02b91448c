# data -> warm start -> train (one job per run x seed) -> evaluate (run x seed x suite).
# Rules are thin: each calls the creditbench command line on the resolved config; what a
# job asks for (gpu, runtime, mem_mb, threads) and how training starts come from
# common.smk, derived from the config (model, launch). Model jobs start under
# creditbench-place, which claims their GPUs and a port (common.smk, placement.py).
# An experiment that reads from the hub fetches it first (rule fetch, on the machine
# Snakemake runs on); the jobs after it take its manifest and run with the hub offline.


rule fetch:
    output:
        manifest=f"{R}/fetched.json",
    log:
        f"{R}/logs/fetch.log",
    benchmark:
        f"{R}/benchmarks/fetch.tsv"
    localrule: True  # SLURM: on the login node, which reaches the hub
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
    params:
        cfg=CONFIG,
        hub=fixed(json.dumps([dataclasses.asdict(item) for item in HUB_ITEMS])),
    shell:
        "creditbench fetch -c {params.cfg} --out {output.manifest} > {log} 2>&1"


rule data:
    input:
        **FETCHED,
    output:
        train=f"{R}/data/train.jsonl",
        test=f"{R}/data/test.jsonl",
        more=expand(f"{R}/data/{{split}}.jsonl", split=SPLITS[2:]),  # chains: test_long
    log:
        f"{R}/logs/data.log",
    benchmark:
        f"{R}/benchmarks/data.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=GPUS["data"],
        runtime=RUNTIME["data"],
        mem_mb=MEM_MB["data"],
    params:
        cfg=CONFIG,
        out=output_dir_of("train"),
        task=fixed(EXP.task.model_dump_json()),
    shell:
        f"{HUB_OFFLINE}"
        "creditbench data -c {params.cfg} --out {params.out} > {log} 2>&1"


rule warmstart:
    input:
        **FETCHED,
        train=rules.data.output.train,
        test=rules.data.output.test,
    output:
        model=f"{R}/base/config.json",
        record=f"{R}/base/warmstart.json",
    log:
        f"{R}/logs/warmstart.log",
    benchmark:
        f"{R}/benchmarks/warmstart.tsv"
    conda:
        ENV
    threads: THREADS["warmstart"]
    resources:
        gpu=GPUS["warmstart"],
        runtime=RUNTIME["warmstart"],
        mem_mb=MEM_MB["warmstart"],
    params:
        cfg=CONFIG,
        data=input_dir("train"),
        out=output_dir_of("model"),
        settings=fixed(
            json.dumps(
                [
                    EXP.task.model_dump(),
                    EXP.model.model_dump(),
                    EXP.warm_start.model_dump(),
                ]
            )
        ),
    shell:
        f"{HUB_OFFLINE}"
        "creditbench-place --gpus {resources.gpu} -- creditbench --threads {threads} warmstart -c {params.cfg}"
        " --data {params.data} --out {params.out} > {log} 2>&1"


rule train:
    input:
        **FETCHED,
        base=rules.warmstart.output.model,
        train=rules.data.output.train,
    output:
        model=run_train_output("model/config.json"),
        metrics=run_train_output("metrics.jsonl"),
        ledger=run_train_output("ledger.json"),
    log:
        f"{R}/logs/train/{{run}}/{TRAIN_JOB}.log",
    benchmark:
        f"{R}/benchmarks/train/{{run}}/{TRAIN_JOB}.tsv"
    # training before every other job that is ready (evaluations, diagnostics): the
    # short jobs then fill the cores while the last training jobs run, instead of one
    # long training job running alone at the end (the default on 2 cores: 3 minutes of
    # one idle core at the end of the experiment without it)
    priority: 1
    conda:
        ENV
    threads: THREADS["train"]
    resources:
        gpu=GPUS["train"],
        nodes=LAUNCH.num_machines,  # SLURM: --nodes (one unless launch.num_machines)
        runtime=RUNTIME["train"] * (len(SEEDS) if GROUP_TRAIN_SEEDS else 1),
        mem_mb=MEM_MB["train"],
    params:
        launcher=TRAIN_LAUNCHER,
        torch_threads=torch_threads,
        cfg=CONFIG,
        init=input_dir("base"),
        data=input_dir("train"),
        seeds=seed_args,
        run=run_params,
    shell:
        f"{HUB_OFFLINE}"
        "creditbench-place --gpus {resources.gpu} -- {params.launcher} --threads {params.torch_threads}"
        " train -c {params.cfg}"
        " --run {wildcards.run} {params.seeds} --init {params.init}"
        " --data {params.data} > {log} 2>&1"


rule evaluate:
    input:
        **FETCHED,
        model=run_eval_models(),
        test=rules.data.output.test,
    output:
        results=run_eval_results(),
    log:
        f"{R}/logs/eval/{{run}}/{EVAL_RUN_JOB}.log",
    benchmark:
        f"{R}/benchmarks/eval/{{run}}/{EVAL_RUN_JOB}.tsv"
    conda:
        ENV
    threads: THREADS["evaluate"]
    resources:
        gpu=GPUS["evaluate"],
        runtime=RUNTIME["evaluate"],
        mem_mb=MEM_MB["evaluate"],
    params:
        cfg=CONFIG,
        data=input_dir("test"),
        eval=fixed(EXP.eval.model_dump_json()),
        suites=suite_args,
        models=model_args,
    shell:
        f"{HUB_OFFLINE}"
        "creditbench-place --gpus {resources.gpu} -- creditbench --threads {threads} evaluate"
        " -c {params.cfg} --data {params.data}"
        " {params.models} {params.suites} > {log} 2>&1"


rule evaluate_base:
    input:
        **FETCHED,
        model=rules.warmstart.output.model,
        test=rules.data.output.test,
    output:
        results=eval_results(f"{R}/base/eval"),
    log:
        f"{R}/logs/eval/base/{EVAL_JOB}.log",
    benchmark:
        f"{R}/benchmarks/eval/base/{EVAL_JOB}.tsv"
    conda:
        ENV
    threads: THREADS["evaluate"]
    resources:
        gpu=GPUS["evaluate"],
        runtime=RUNTIME["evaluate"],
        mem_mb=MEM_MB["evaluate"],
    params:
        cfg=CONFIG,
        data=input_dir("test"),
        model=input_dir("model"),
        eval=fixed(EXP.eval.model_dump_json()),
        suites=suite_args,
        out=output_dir,
    shell:
        f"{HUB_OFFLINE}"
        "creditbench-place --gpus {resources.gpu} -- creditbench --threads {threads} evaluate"
        " -c {params.cfg} --data {params.data}"
        " --model {params.model} {params.suites} --out-dir {params.out} > {log} 2>&1"
