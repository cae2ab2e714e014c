"""The web console: browser pages at /ui over the /v1 API (models, scoring, sampling, jobs,
data sets).

Pages are server-rendered Jinja2 templates (layout, forms, limits); small plain-JavaScript ES
modules (``static/*.js``, loaded by the browser as they are: no build step) fill them by calling
the /v1 API with the API key the user enters once, kept in the tab's ``sessionStorage`` and sent
as ``Authorization: Bearer``: the console has no auth or logic of its own and never puts the key
in a URL.
"""

from service.console.routes import install_console

__all__ = ["install_console"]
