"""The web pages: the registry, training runs and their figures, one-halo prediction, painting and jobs,
in a browser (issue 17).  Server-rendered (Jinja2), a little progressive JavaScript, nothing fetched
from elsewhere; served by the API's own application under ``/`` (``GALAXYPAINT_WEB_UI=false`` turns
them off).  ``routes`` (the pages), ``session`` (login cookie and CSRF), ``render`` (templates,
headers, errors), ``views`` (what the pages show), ``templates/`` and ``static/`` (package data).
"""
