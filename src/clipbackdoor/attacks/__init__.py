"""Backdoor attacks: the trigger registry and dataset poisoning. Importing registers every built-in trigger."""

from clipbackdoor.attacks import badclip, badnet, blended, sig, wanet  # noqa: F401  (register the triggers)
from clipbackdoor.attacks.base import TRIGGERS, Trigger, TriggerError, build_trigger, register, to_uint8

__all__ = ["TRIGGERS", "Trigger", "TriggerError", "build_trigger", "register", "to_uint8"]
