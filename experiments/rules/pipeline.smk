# data -> warm start -> train (one job per run x seed) -> evaluate (run x seed x suite).
# Rules are thin: each calls the creditbench command line on the resolved config.


rule data:
    output:
        train=f"{R}/data/train.jsonl",
        test=f"{R}/data/test.jsonl",
        test_long=f"{R}/data/test_long.jsonl",
    params:
        task=EXP.task.model_dump_json(),
    log:
        f"{R}/logs/data.log",
    benchmark:
        f"{R}/benchmarks/data.tsv"
    threads: 1
    resources:
        gpu=0,
    shell:
        "creditbench data -c {CONFIG} --out {R}/data > {log} 2>&1"


rule warmstart:
    input:
        train=rules.data.output.train,
        test=rules.data.output.test,
    output:
        model=f"{R}/base/config.json",
        record=f"{R}/base/warmstart.json",
    params:
        settings=json.dumps(
            [EXP.task.model_dump(), EXP.model.model_dump(), EXP.warm_start.model_dump()]
        ),
    log:
        f"{R}/logs/warmstart.log",
    benchmark:
        f"{R}/benchmarks/warmstart.tsv"
    threads: workflow.cores
    resources:
        gpu=GPU,
    shell:
        "creditbench --threads {threads} warmstart -c {CONFIG} --data {R}/data --out {R}/base"
        " > {log} 2>&1"


rule train:
    input:
        base=rules.warmstart.output.model,
        train=rules.data.output.train,
    output:
        model=f"{R}/runs/{{run}}/seed{{seed}}/model/config.json",
        metrics=f"{R}/runs/{{run}}/seed{{seed}}/metrics.jsonl",
        ledger=f"{R}/runs/{{run}}/seed{{seed}}/ledger.json",
    params:
        run=run_params,
        out=lambda w: f"{R}/runs/{w.run}/seed{w.seed}",
    log:
        f"{R}/logs/train/{{run}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{run}}/seed{{seed}}.tsv"
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "creditbench --threads {threads} train -c {CONFIG} --run {wildcards.run}"
        " --seed {wildcards.seed} --init {R}/base --data {R}/data --out {params.out}"
        " > {log} 2>&1"


rule evaluate:
    input:
        model=rules.train.output.model,
    output:
        result=f"{R}/runs/{{run}}/seed{{seed}}/eval/{{suite}}.json",
    params:
        eval=EXP.eval.model_dump_json(),
    log:
        f"{R}/logs/eval/{{run}}/seed{{seed}}/{{suite}}.log",
    benchmark:
        f"{R}/benchmarks/eval/{{run}}/seed{{seed}}/{{suite}}.tsv"
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "creditbench --threads {threads} evaluate -c {CONFIG} --data {R}/data"
        " --model {R}/runs/{wildcards.run}/seed{wildcards.seed}/model --suite {wildcards.suite}"
        " --out {output.result} > {log} 2>&1"
