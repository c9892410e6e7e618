"""bitsandbytes in-process: nf4, nf4-dq, fp4, fp4-dq and LLM.int8() beside the unquantized model.

``run_bnb(model, BnbOptions(...))`` loads the Hugging Face checkpoint through transformers with a
``BitsAndBytesConfig`` per mode, runs the same prompts and corpus through each, and returns a
:class:`BnbReport` (JSON shape in :mod:`ggufkit.bnb.results`; :func:`markdown` renders the
guides' before/after table). The CPU defects of bitsandbytes 0.50 and their guards are described
in :mod:`ggufkit.bnb.guards`.

``run_image_bnb(checkpoint, ImageBnbOptions(image=...))`` is the same for a vision-language model
and one question about a picture (:mod:`ggufkit.bnb.image`): the seed's flow and its table.
"""

from ggufkit.bnb.image import ImageBnbOptions, run_image_bnb
from ggufkit.bnb.image_results import ImageReport, ImageRow
from ggufkit.bnb.modes import MODES, Mode, parse_modes
from ggufkit.bnb.results import SCHEMA, BnbReport, ModeResult, markdown
from ggufkit.bnb.runner import DEFAULT_PROMPTS, BnbOptions, run_bnb

__all__ = [
    "DEFAULT_PROMPTS",
    "MODES",
    "SCHEMA",
    "BnbOptions",
    "BnbReport",
    "ImageBnbOptions",
    "ImageReport",
    "ImageRow",
    "Mode",
    "ModeResult",
    "markdown",
    "parse_modes",
    "run_bnb",
    "run_image_bnb",
]
