"""Search SVD training of your own model on your own data, with your own training loop and
metric, from Python: the search, the baselines, the report and an export."""

from pathlib import Path

from toy_task import macro_f1, make_data, small_cnn, train

import ranksearch

if __name__ == "__main__":  # workers import a script that defines the functions
    run = ranksearch.optimize(Path(__file__).with_name("space.yaml"), model=small_cnn,
                              data=make_data, train_loop=train, evaluate=macro_f1,
                              metric_name="macro-F1")
    report = ranksearch.report_run(run, "reports/custom-python")
    export = ranksearch.export_run(run, "exports/custom-python", max_flops="2x")
    print(f"report: {report / 'index.html'}\nexport: {export}")
