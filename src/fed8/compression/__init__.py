"""8-bit (and other) codecs for client updates and broadcasts, with real payload bytes.

See :mod:`fed8.compression.codec` for the wire format.
"""

from .codec import MAGIC, VERSION, Codec, TensorCodec, payload_size
from .feedback import ErrorFeedback, ResidualStore
from .floats import FloatCodec
from .registry import CODECS, decode, make_codec
from .scaled import ScaledCodec
from .topk import TopKCodec

__all__ = ["CODECS", "Codec", "ErrorFeedback", "FloatCodec", "MAGIC", "ResidualStore", "ScaledCodec",
           "TensorCodec", "TopKCodec", "VERSION", "decode", "make_codec", "payload_size"]
