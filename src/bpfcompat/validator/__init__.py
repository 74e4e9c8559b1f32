"""The in-guest validator: ``validator.py`` is copied alone into each guest and run there.

It imports only the standard library, so the host can import it too (for the helper-name
table and the version) without pulling anything else in.
"""

from bpfcompat.validator.validator import VALIDATOR_VERSION, helper_id_from_name

__all__ = ["VALIDATOR_VERSION", "helper_id_from_name"]
