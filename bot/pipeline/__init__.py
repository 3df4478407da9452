"""The pipeline stage: one series job from assembled series to sent report, and what runs jobs.

    source.py      the series of a job (stored raw mail, or a file / fetched thread)
    series_job.py  apply -> build each commit -> boot each kernel -> verdict, each step stored
    report.py      a job's results -> report contexts (the one place that reads every stage)
    artifacts.py   a job's folder (<state>/jobs/<id>/: repro.sh, .config, logs, results)
    bisect_report.py  a bisection -> its report, threaded under the culprit's patch mail
    runner.py      run the recorded jobs (claim, run, report, retry), the outcome table
    demo.py        `kbot demo`: the main job end to end on this machine
    cli.py         `kbot test-series`, `kbot run-jobs`, `kbot demo`
"""
