"""Reports: result contexts -> plain-text mails threaded on the list -> outbox / SMTP, once.

The pipeline's side of it, in three calls:

    from bot.report.adapt import series_info
    from bot.report.context import RegressionReport, ...   # one frozen dataclass per kind
    from bot.report.deliver import Reporter

    ctx = RegressionReport(series=series_info(series, list_address="kvm@vger.kernel.org"), ...)
    row = Reporter(config, store).submit(ctx, job_id=job_id)   # stored once, then delivered
    Reporter(config, store).flush()   # the watcher calls this each round: retries, reconcile

Modules: context (the typed contexts and their JSON form, so saved results re-render),
render (jinja2 templates in templates/, StrictUndefined; prose 72 columns, commands 80),
repro (a context's Reproduce as the mail's steps and as repro.sh), commands (`kbot ...`
lines, checked against kbot's own parser), message (recipients, subject, threading headers,
header checks), outbox (maildir / mbox), smtp (one submission), deliver (decide / store /
deliver / reconcile: the exactly-once state machine), adapt (intake's Series into
SeriesInfo), cli (`kbot outbox`, `kbot report`).
"""
