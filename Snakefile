# creditbench: data -> warm start -> train (run x seed) -> evaluate (run x seed x suite)
# -> tables -> figures, and credit diagnostics at the warm start. Configure with --configfile; the default is the embedded testbed.
from snakemake.utils import min_version

min_version("9.0")


configfile: workflow.source_path("experiments/default.yaml")


report: "experiments/report/workflow.rst"


include: "experiments/rules/common.smk"
include: "experiments/rules/pipeline.smk"
include: "experiments/rules/analysis.smk"
include: "experiments/rules/diagnostics.smk"


rule all:
    default_target: True
    input:
        rules.tables.output,
        rules.figures.output,
        DIAGNOSTICS_TARGETS,
