"""CleanCLIP (Bansal et al. 2023): fine-tune on clean pairs with the CLIP loss plus the in-modal SSL loss.

``mmcl-only`` and ``ssl-only`` are the study's ablations: one of the two terms alone. Heavy weight decay is
CleanCLIP with ``train.weight_decay`` raised (configs/defenses/heavy-wd.yaml).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clipbackdoor.defenses.registry import Defense, register


@register("cleanclip")
class CleanCLIP(Defense):
    name: Literal["cleanclip"] = "cleanclip"


@register("mmcl-only")
class MMCLOnly(Defense):
    name: Literal["mmcl-only"] = "mmcl-only"
    ssl: float = Field(0.0, ge=0, le=0)


@register("ssl-only")
class SSLOnly(Defense):
    name: Literal["ssl-only"] = "ssl-only"
    mmcl: float = Field(0.0, ge=0, le=0)
