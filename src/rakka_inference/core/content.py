"""What a message holds: text, images, PDF documents, and the signed thinking of an
assistant turn. Part of :mod:`rakka_inference.core.messages`, which re-exports every name.

Inline images and documents are base64 ``data:`` URLs; one is checked for its media type,
the base64 alphabet and padding here, so every entry point refuses the same malformed ones
with a :class:`~rakka_inference.core.errors.BadRequest` naming the field.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Literal, TypeAlias

from rakka_inference.core.errors import BadRequest

__all__ = [
    "PDF",
    "ContentPart",
    "DocumentPart",
    "ImageDetail",
    "ImagePart",
    "ReasoningBlock",
    "TextPart",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class TextPart:
    """A piece of text inside a message's content."""

    text: str


ImageDetail: TypeAlias = Literal["auto", "low", "high"]

# RFC 2397: data:[<mediatype>][;param=value]*[;base64],<data>. We accept only base64 data
# with an explicit media type: every provider that takes inline images needs both.
_BASE64_BODY = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePart:
    """An image inside a user message: an ``https:`` URL or a base64 ``data:`` URL.

    ``detail`` is OpenAI's resolution hint; providers without one ignore it.
    """

    url: str
    detail: ImageDetail | None = None

    @classmethod
    def from_base64(
        cls, media_type: str, data: str, *, detail: ImageDetail | None = None
    ) -> ImagePart:
        """An image given inline, as ``data:{media_type};base64,{data}``."""
        return cls(url=f"data:{media_type};base64,{data}", detail=detail)

    @property
    def is_data_url(self) -> bool:
        """Whether the image is inline (a ``data:`` URL) rather than fetched by URL."""
        return self.url[:5].lower() == "data:"

    def parse_data_url(self, *, param: str = "messages") -> tuple[str, str]:
        """``(media_type, base64_data)`` of an inline image.

        Raises :class:`BadRequest` with ``param`` set when the URL is not a well-formed
        base64 data URL. Pass the field path as ``param`` when it is known, such as
        ``messages[2].content[1].image_url``. The data is checked for the base64
        alphabet and padding, not decoded.
        """
        return _parse_data_url(self.url, param)

    def decode_data(self, *, param: str = "messages") -> tuple[str, bytes]:
        """``(media_type, bytes)`` of an inline image, for runners that need the pixels."""
        media_type, data = self.parse_data_url(param=param)
        # parse_data_url checked the alphabet, the padding and the length, so this decodes.
        return media_type, base64.b64decode(data)


def _parse_data_url(url: str, param: str) -> tuple[str, str]:
    """``(media_type, base64_data)`` of a base64 ``data:`` URL (see ImagePart's)."""
    if url[:5].lower() != "data:":
        raise BadRequest("the URL is not a data: URL", param=param)
    header, comma, data = url[5:].partition(",")
    if not comma:
        raise BadRequest("malformed data URL: no ',' before the data", param=param)
    media_type, *attributes = header.split(";")
    if not attributes or attributes[-1].lower() != "base64":
        raise BadRequest("data URL must be base64-encoded (';base64,')", param=param)
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise BadRequest(f"data URL has no valid media type: {media_type!r}", param=param)
    if not data or len(data) % 4 or not _BASE64_BODY.fullmatch(data):
        raise BadRequest("data URL does not hold valid base64 data", param=param)
    return media_type.lower(), data


PDF = "application/pdf"


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentPart:
    """A PDF document inside a user message: a base64 ``data:application/pdf`` URL, or an
    ``https:`` URL the provider fetches; ``filename`` where the client named it.

    OpenAI's ``file`` parts (``file_data``), Anthropic's ``document`` blocks and the
    Responses API's ``input_file`` items all become one of these; each provider takes it
    in its own terms, or refuses it with a 400 naming the part.
    """

    url: str
    filename: str | None = None

    @classmethod
    def from_base64(cls, data: str, *, filename: str | None = None) -> DocumentPart:
        """A PDF given inline, as ``data:application/pdf;base64,{data}``."""
        return cls(url=f"data:{PDF};base64,{data}", filename=filename)

    @property
    def is_data_url(self) -> bool:
        return self.url[:5].lower() == "data:"

    def base64_data(self, *, param: str = "messages") -> str:
        """The base64 PDF of an inline document; a 400 naming ``param`` when the URL is
        not a well-formed base64 data URL of a PDF."""
        media_type, data = _parse_data_url(self.url, param)
        if media_type != PDF:
            raise BadRequest(f"documents must be PDFs ({PDF}), not {media_type!r}", param=param)
        return data


ContentPart: TypeAlias = TextPart | ImagePart | DocumentPart


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasoningBlock:
    """One block of a model's thinking, as the model's provider signed it.

    Anthropic's extended thinking answers with ``thinking`` blocks (the text and a
    ``signature`` over it) and ``redacted_thinking`` blocks (``redacted``: opaque data, no
    text). In a tool loop the assistant turn that called the tools must be sent back with
    its thinking blocks, unchanged, before its tool calls: the signature is how the provider
    knows they are its own. A block with no signature (a provider that signs nothing) is
    text only, and a provider that takes no prior thinking leaves it out of the prompt.
    """

    text: str = ""
    signature: str = ""
    redacted: str = ""
    """The opaque data of a redacted block; then ``text`` and ``signature`` are empty."""

    def __post_init__(self) -> None:
        if self.redacted and (self.text or self.signature):
            raise BadRequest("a redacted thinking block carries its data only", param="messages")

    @property
    def signed(self) -> bool:
        """Whether a provider can verify the block: it has a signature or is redacted."""
        return bool(self.signature or self.redacted)
