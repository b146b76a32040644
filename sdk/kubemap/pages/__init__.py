"""Pages drawn from a task's records: the `kubemap timeline` picture (timeline.py) and the
dashboard (digest.py: the server-side summary of a task's timing records; views.py: what a
page shows; html.py: the pages; server.py: the aiohttp app). The operator serves the
dashboard and `kubemap dashboard` serves local tasks with the same code, so this room sits
below the runtime and above resources: both the operator and the CLI may import it.
"""
