"""DIMSE status codes (PS3.7 Annex C) both sides use: what a C-STORE-RSP says."""

from __future__ import annotations

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
