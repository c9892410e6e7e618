"""One module per architecture, each converter ``@register``-ed (``ggufkit.convert.base``).

The imports below are the one list of them: importing this package runs every ``@register``, and
``ggufkit.convert.registry`` imports it and nothing else, so a module elsewhere in ``convert/``
needs no registration. A new architecture is a module here and a name below.
"""

from __future__ import annotations

from ggufkit.convert.arch import bloom, llama

MODULES = (llama, bloom)
