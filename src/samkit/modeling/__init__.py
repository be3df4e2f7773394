"""Pure tensor -> tensor modules; parameter names equal the official checkpoint keys."""

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .decoder_cache import ImageSideCache
from .transformer import TwoWayTransformer

__all__ = ["ImageEncoderViT", "MaskDecoder", "PromptEncoder", "Sam", "ImageSideCache", "TwoWayTransformer"]
