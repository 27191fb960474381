"""Programs that drive the real widgets for the docs: `python -m app.tools.screenshots` and
`python -m app.tools.console_screenshots`."""
