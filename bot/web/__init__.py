"""`kbot web`: a small read-only web app over the store (issue #13).

Server-rendered pages (Starlette routes, the project's jinja2 with autoescape on, inline SVG
charts, no JavaScript): the series list, a series' patch x test matrix, a bisection's tested
commits and posterior, a test's history across series, the job runner's status and each job's
artifacts. Nothing here writes to the store; log views are bounded tails with a download link,
and artifact URLs cannot leave a job's folder.
"""
