"""A vision-language checkpoint's processor and one question about a picture, for ``bnb --image``.

transformers' processors pair an image processor with a video processor, and the video processors
need torchvision, which has no CPU build for the pinned torch. When the processor does not load
whole, it is built from its image processor (loaded alone, the PIL backend) and the tokenizer,
with a stand-in that refuses videos in the video processor's place: pictures need nothing else.

The question is framed as llama.cpp's ``llama-mtmd-cli`` frames it, so that both paths see the
same conversation: one user turn, the picture first, then the question, through the checkpoint's
chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufkit.core.errors import InputError, UsageError
from ggufkit.core.log import get_logger

log = get_logger("bnb.vision")

# The image processor's attributes a processor reads from its video processor when it is built.
SHARED_ATTRIBUTES = ("slice_mode", "downsample_mode", "merge_size", "patch_size", "use_image_id")
# Tokens some families put around the image placeholder in the text (Qwen2-VL's).
VISION_WRAPPERS = (("<|vision_start|>", "<|vision_end|>"),)


@dataclass
class Processor:
    """What reading a picture needs: the processor, its tokenizer, and how it was built."""

    processor: Any
    tokenizer: Any
    image_processor: Any
    whole: bool  # False: built from the image processor, without videos

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write what the checkpoint needs to reload: the whole processor, or its parts."""
        if self.whole:
            self.processor.save_pretrained(str(out_dir))
            return
        self.image_processor.save_pretrained(str(out_dir))
        self.tokenizer.save_pretrained(str(out_dir))


def _images_only(image_processor: Any) -> Any:
    """A video processor stand-in that carries the image processor's shared settings."""
    from transformers.video_processing_utils import VideoProcessorMixin

    class NoVideos(VideoProcessorMixin):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise UsageError("this processor was loaded for pictures only (no torchvision)")

    stand_in = NoVideos()
    for name in SHARED_ATTRIBUTES:
        if hasattr(image_processor, name):
            setattr(stand_in, name, getattr(image_processor, name))
    return stand_in


def _processor_class(config: Any) -> Any:
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(config.model_type)
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is None:
        raise UsageError(
            f"transformers has no processor for {config.model_type!r}: it cannot read pictures",
            hint="--image needs a vision-language checkpoint (one with a preprocessor_config.json)",
        )

    class ImagesOnly(cls):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and getattr(argument, "_images_only", False):
                return type(argument)
            return super().check_argument_for_proper_class(argument_name, argument)

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = cls.__name__
    return ImagesOnly


def load_processor(model_dir: Path, *, trust_remote_code: bool = False) -> Processor:
    """The checkpoint's processor; for pictures only where its video part cannot load."""
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer

    if not (model_dir / "preprocessor_config.json").is_file():
        raise UsageError(
            f"{model_dir} has no image processor (preprocessor_config.json): it is not a "
            "vision-language checkpoint",
            hint="--image needs a model that reads pictures, such as MiniCPM-V or Qwen2-VL",
        )
    try:
        whole = AutoProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        if hasattr(whole, "image_processor") and hasattr(whole, "tokenizer"):
            return Processor(whole, whole.tokenizer, whole.image_processor, whole=True)
    except (ImportError, ValueError, TypeError, OSError) as exc:
        log.debug("the whole processor does not load (%s); pictures only", exc)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(
        model_dir, trust_remote_code=trust_remote_code
    )
    stand_in = _images_only(image_processor)
    stand_in._images_only = True
    cls = _processor_class(config)
    processor = cls(
        image_processor=image_processor,
        video_processor=stand_in,
        tokenizer=tokenizer,
        chat_template=getattr(tokenizer, "chat_template", None),
    )
    return Processor(processor, tokenizer, image_processor, whole=False)


def prompt_text(processor: Processor, question: str) -> str:
    """The conversation as text: one user turn, the picture's placeholder, then the question."""
    tokenizer = processor.tokenizer
    placeholder = getattr(processor.processor, "image_token", None)
    if not isinstance(placeholder, str):
        raise UsageError("the processor names no image token: it cannot place a picture")
    vocab = tokenizer.get_vocab()
    for start, end in VISION_WRAPPERS:
        if start in vocab and end in vocab:
            placeholder = f"{start}{placeholder}{end}"
    content = placeholder + question
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": content}]
        text: str = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return text
    return content


def image_inputs(processor: Processor, question: str, picture: Path, device: str) -> Any:
    """The model's inputs (token ids, pixel values, ...) for ``question`` about ``picture``."""
    from PIL import Image

    try:
        with Image.open(picture) as image:
            rgb = image.convert("RGB")
    except Image.DecompressionBombError as exc:  # an Exception, not an OSError
        raise InputError(
            f"the picture {picture} is too large to decode safely: {exc}",
            hint="scale it down first; models see a few hundred pixels a side",
            path=picture,
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError
        raise InputError(
            f"cannot read {picture} as a picture: {exc}",
            hint="give a PNG, JPEG, BMP or GIF file",
            path=picture,
        ) from exc
    text = prompt_text(processor, question)
    inputs = processor.processor(images=[rgb], text=[text], return_tensors="pt")
    return inputs.to(device)
