"""Compressed Pixel Data: which pydicom plugin decodes each transfer syntax, and what to install when none can.

The default install carries (docs/design.md §12): pylibjpeg with pylibjpeg-openjpeg (JPEG 2000, MIT)
and pylibjpeg-rle (RLE, MIT), preferred for those syntaxes because they decode faster here than
GDCM (J2K lossless 512² int16: ~15 against ~12 files/s); python-gdcm (BSD) for JPEG lossless,
JPEG-LS and 8-bit JPEG baseline/extended, the only non-GPL route to JPEG lossless. 12-bit JPEG
Extended needs pylibjpeg-libjpeg, which is GPLv3 and therefore only an opt-in extra
(``pip install 'ich3d[libjpeg]'``). Other syntaxes keep pydicom's plugin order.
"""

from __future__ import annotations

from functools import lru_cache

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

_J2K = (JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K)
_JPEG_LS = (JPEGLSLossless, JPEGLSNearLossless)
#: The plugin to decode with when it is installed (pydicom's own order puts GDCM first).
_PREFERRED = dict.fromkeys(_J2K, "pylibjpeg") | {RLELossless: "pylibjpeg"}
#: What to install for a syntax without a decoder (the default install has them all but 12-bit JPEG).
_INSTALL = (dict.fromkeys(_J2K, "pip install pylibjpeg pylibjpeg-openjpeg")
            | dict.fromkeys((JPEGLossless, JPEGLosslessSV1, JPEGBaseline8Bit), "pip install python-gdcm")
            | dict.fromkeys(_JPEG_LS, "pip install python-gdcm (or pyjpegls)")
            | {RLELossless: "pip install pylibjpeg pylibjpeg-rle",
               JPEGExtended12Bit: "pip install python-gdcm; 12-bit data also need pylibjpeg-libjpeg (GPLv3): "
                                  "pip install 'ich3d[libjpeg]'"})


def decoder_problem(syntax: str, bits_stored: int | None) -> str | None:
    """Why Pixel Data of ``syntax`` cannot be decoded in this environment, naming what to install;
    None when an installed plugin decodes it.

    Args:
        syntax: the transfer syntax UID (not a native one).
        bits_stored: BitsStored of the image (12-bit JPEG Extended needs a plugin of its own).
    """
    name = f"{syntax} ({UID(syntax).name})" if UID(syntax).is_transfer_syntax else syntax
    try:
        decoder = get_decoder(UID(syntax))
    except NotImplementedError:
        return f"transfer syntax {name} has no pixel decoder in pydicom"
    if not decoder.is_available:
        hint = _INSTALL.get(syntax) or "pydicom needs: " + "; ".join(decoder.missing_dependencies)
        return f"no decoder installed for transfer syntax {name}; {hint}"
    if syntax == JPEGExtended12Bit and (bits_stored or 8) > 8 and "pylibjpeg" not in decoder.available_plugins:
        return (f"{bits_stored}-bit JPEG Extended ({syntax}) needs pylibjpeg-libjpeg, GPLv3 and not in the default "
                f"install: pip install 'ich3d[libjpeg]'")
    return None


@lru_cache(maxsize=64)
def plugin_for(syntax: str) -> str:
    """The pydicom decoding plugin to use for ``syntax``: the preferred one when installed, else ""
    (pydicom tries its available plugins in order)."""
    preferred = _PREFERRED.get(syntax, "")
    try:
        return preferred if preferred in get_decoder(UID(syntax)).available_plugins else ""
    except NotImplementedError:
        return ""
